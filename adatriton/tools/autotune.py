"""Autotuning entry points: :func:`tune_model` for one model and input, and the CLI ``python -m adatriton.autotune``.

The per-launch choice and the cache live in :mod:`adatriton.runtime.autotune`; this module runs a model under
:func:`~adatriton.runtime.autotune.tuning` and reports what was stored.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from typing import Any

import torch
import torchvision

from ..core.strides import parse_output_stride
from ..kernels.conv import ConvConfig, interpreting
from ..masks.density import synthetic
from ..models.convert import convert
from ..runtime import autotune
from ..runtime.backend import use_backend
from ..runtime.extras import require
from ..runtime.files import device_name
from .cli import DTYPES, add_dtype_argument, add_model_arguments, fraction
from .cli import device as device_type

__all__ = ["add_model_arguments", "main", "random_level_map", "tune_model"]


def tune_model(model: torch.nn.Module, x: torch.Tensor, levels: Any, dtype: torch.dtype = torch.float16):
    """Tune every Triton conv of one forward pass of an adaptive model (see :func:`adatriton.convert`).

    Runs ``model.forward_features(x.to(dtype), levels)`` in eval mode under ``torch.inference_mode()``,
    ``adatriton.use_backend("triton")`` and :func:`tuning`. The model is used as is when it already has ``dtype``,
    ``x``'s device and eval mode; otherwise a cast copy runs, so the caller's weights keep their precision.
    Keys already in the cache are reported, not re-timed.

    Args:
        model: module with ``forward_features(x, levels)``, e.g. a converted ResNet whose backend is None or
            ``"triton"`` (an explicit other backend runs no Triton conv).
        x: image batch ``(N, 3, H, W)`` of the shape to tune for.
        levels: level map for ``forward_features`` (a :class:`~adatriton.LevelMap` or tensor, or None).
        dtype: the inference dtype (``float16``, ``bfloat16`` or ``float32``).

    Returns:
        A ``pandas.DataFrame`` with one row per conv key the pass used: ``key``, the config fields
        (``BLOCK_M`` ... ``num_warps``), ``time_ms`` (best candidate's time; NaN for an untuned default),
        ``candidates`` (configs timed), ``tuned`` (newly tuned in this call), ``source``
        (``"tuned"``, ``"cache"`` or ``"default"``) and ``calls`` (launches with that key).
    """
    pd = require("pandas")

    if model.training or any(p.dtype != dtype or p.device != x.device for p in model.parameters()):
        # .to() would cast the caller's model in place (and an fp16 round trip loses precision): cast a copy.
        model = copy.deepcopy(model).to(device=x.device, dtype=dtype).eval()
    if levels is not None and hasattr(levels, "to"):
        levels = levels.to(x.device)
    with autotune.recording_choices() as records:
        with torch.inference_mode(), use_backend("triton"), autotune.tuning(True):
            model.forward_features(x.to(dtype), levels)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
    if not records:
        warnings.warn(
            "tune_model: no Triton conv ran; does the model use the 'triton' backend (convert(..., backend=None))?",
            UserWarning,
            stacklevel=2,
        )
    rows = []
    for rec in records:
        rows.append(
            {
                "key": rec["key"],
                **rec["config"].as_dict(),
                "time_ms": rec["time_ms"],
                "candidates": rec["candidates"],
                "tuned": rec["source"] == "tuned",
                "source": rec["source"],
                "calls": rec["calls"],
            }
        )
    columns = ["key", *ConvConfig.fields, "time_ms", "candidates", "tuned", "source", "calls"]
    return pd.DataFrame(rows, columns=columns)


def random_level_map(
    height: int,
    width: int,
    fraction: float,
    output_stride: str = "8->32",
    seed: int = 0,
    device: torch.device | str | None = None,
    batch: int = 1,
):
    """A level map for ``batch`` images of ``height x width`` with about ``fraction`` of their area at level 0.

    Per sample, a seeded random subset of the aligned 4x4 blocks of the finest grid (``ceil(H / s) x ceil(W / s)``
    for the finest stride ``s`` of ``output_stride``) is kept at level 0, the rest goes to level K
    (:func:`adatriton.masks.synthetic` with ``kind="blocks"``). None for dense output strides.
    """
    name, _, k = parse_output_stride(output_stride)
    if k == 0:
        return None
    return synthetic(batch, height, width, name, fraction, kind="blocks", seed=seed).to(device or "cpu")


# ---------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m adatriton.autotune",
        description="Tune the Triton conv configs of an adaptive ResNet for this GPU and store them in the "
        "autotune cache (random weights: configs depend only on shapes).",
    )
    add_model_arguments(p)
    p.add_argument("--fraction", type=fraction, default=0.3, help="area fraction at level 0 (default: %(default)s)")
    add_dtype_argument(p, ("fp16", "bf16", "fp32"), default="fp16")
    p.add_argument("--device", type=device_type, default="cuda", help="device (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the level map and the input (default: %(default)s)")
    return p


def _resolve_device(requested: str) -> torch.device:
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise SystemExit(f"adatriton.autotune: invalid --device {requested!r}: {err}") from None
    if device.type == "cuda":
        if torch.cuda.is_available():
            return device
        if interpreting():
            print("adatriton.autotune: no CUDA device; running the Triton interpreter on the CPU", file=sys.stderr)
            return torch.device("cpu")
        raise SystemExit(
            "adatriton.autotune: no CUDA device is visible. Autotuning times the Triton kernels on a GPU; run it on "
            "the machine that will do inference (or set TRITON_INTERPRET=1 for a slow functional check on the CPU)."
        )
    if device.type == "cpu" and interpreting():
        return device
    raise SystemExit(
        f"adatriton.autotune: Triton kernels cannot run on {device} without TRITON_INTERPRET=1; use a CUDA device."
    )


def main(argv: list[str] | None = None) -> Any:
    """``python -m adatriton.autotune``: tune one model and input size, print the chosen configs and the cache
    file. Returns the table (a ``pandas.DataFrame``)."""
    pd = require("pandas")

    args = _parser().parse_args(argv)
    device = _resolve_device(args.device)
    output_stride = args.output_stride
    height, width = args.size
    dtype = DTYPES[args.dtype]

    torch.manual_seed(args.seed)
    backbone = getattr(torchvision.models, args.model)(weights=None)  # random weights: no download
    net = convert(backbone, output_stride).to(device=device, dtype=dtype).eval()
    levels = random_level_map(height, width, args.fraction, output_stride, args.seed, device, args.batch)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, height, width, generator=gen).to(device=device, dtype=dtype)

    start = time.perf_counter()
    table = tune_model(net, x, levels, dtype=dtype)
    elapsed = time.perf_counter() - start
    path = autotune.get_cache(device).path
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_rows", None):
        print(table.to_string(index=False) if len(table) else "(no Triton conv ran)")
    tuned = int(table["tuned"].sum()) if len(table) else 0
    print(
        f"\n{args.model} {output_stride} {height}x{width} {args.dtype} on {device_name(device, triton_timings=True)}: "
        f"{len(table)} keys, "
        f"{tuned} newly tuned in {elapsed:.1f} s"
    )
    print(f"cache file: {path}")
    return table


if __name__ == "__main__":
    main()
