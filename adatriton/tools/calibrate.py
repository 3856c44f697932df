"""Per-device calibration of the ``auto`` dispatcher's crossover densities (:mod:`adatriton.ops.dispatch`).

For every distinct k x k conv signature (Cin, Cout, k, tap spacing, groups, dtype) of a converted model, time the
sparse path (``triton`` on CUDA, the ``torch`` gather-GEMM on the CPU) against ``dense`` (densify, cuDNN / oneDNN
on the finest grid, sample) at several densities of synthetic level maps of the model's finest-grid size, and
store the density where dense starts to win in ``dispatch-<device>.json`` next to the autotune cache::

    python -m adatriton.calibrate --model resnet101 --size 1024 2048 --device cuda --dtype fp16

or from Python with :func:`calibrate`. 1x1 convs are not timed: the dispatcher never densifies them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import nn

from .. import ops
from ..core.levelmap import LevelMap
from ..core.multires import MultiResMap
from ..masks.density import synthetic_grid
from ..models.convert import convert
from ..ops import dispatch
from ..runtime import calibration
from ..runtime.extras import require
from ..runtime.files import device_name
from ..runtime.timing import time_calls
from .autotune import random_level_map
from .cli import DTYPES, add_dtype_argument, add_model_arguments, add_repeats_argument, fraction
from .cli import device as device_type

__all__ = ["DEFAULT_DENSITIES", "calibrate", "crossover", "main", "table"]

#: Target densities of the synthetic level maps (the achieved ones are stored: block granularity rounds them).
DEFAULT_DENSITIES = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)


def _synthetic_levelmap(batch: int, height: int, width: int, num_levels: int, density: float, seed: int) -> LevelMap:
    """A level map whose stage-K layout has about ``density`` elements per finest-grid pixel: a random subset of
    the aligned 4x4 (or 2^K) blocks at level 0, the rest at level K."""
    k = max(1, num_levels)
    # density = f + (1 - f) / 4^K for a level-0 area fraction f
    floor = 1.0 / (1 << (2 * k))
    f = min(1.0, max(0.0, (density - floor) / (1.0 - floor)))
    return synthetic_grid(batch, height, width, k, f, kind="blocks", seed=seed)


def _time_ms(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` after one warm-up call."""
    return statistics.median(time_calls(fn, device, warmup=1, iters=max(1, repeats)))


def crossover(densities: Sequence[float], sparse_ms: Sequence[float], dense_ms: Sequence[float]) -> float | None:
    """The density from which on dense wins, linearly interpolated between the measured densities.

    Dense must win at that density and every higher one, so one noisy point below the real crossover does not
    send the sparse-friendly densities to the dense path.

    Returns:
        0.0 when dense wins at every density, None when the sparse path wins at the highest one, else the
        interpolated zero of ``sparse_ms - dense_ms`` between the last density the sparse path wins and the next.
    """
    pts = sorted(zip(densities, (s - d for s, d in zip(sparse_ms, dense_ms))))
    if not pts or pts[-1][1] < 0:
        return None
    i = len(pts) - 1
    while i > 0 and pts[i - 1][1] >= 0:
        i -= 1
    if i == 0:
        return 0.0
    (d0, g0), (d1, g1) = pts[i - 1], pts[i]
    return d0 + (d1 - d0) * (-g0) / (g1 - g0)


def _signatures(model: nn.Module, x: torch.Tensor, levels: Any) -> tuple[list[dispatch.Signature], LevelMap]:
    """The distinct k x k signatures of the model's adaptive convs, and the level map one forward pass used."""
    sigs: dict[str, dispatch.Signature] = {}
    lm = None
    with torch.inference_mode(), dispatch.recording() as records:
        model(x, levels)
    for rec in records:
        lm = rec["levelmap"]
        if rec["signature"].k > 1:
            sigs.setdefault(rec["signature"].key, rec["signature"])
    if lm is None:
        raise ValueError("calibrate: the model ran no adaptive conv (is it converted with an adaptive output stride?)")
    return list(sigs.values()), lm


def calibrate(
    model: nn.Module,
    x: torch.Tensor,
    levels: Any = None,
    densities: Sequence[float] = DEFAULT_DENSITIES,
    repeats: int = 5,
    save: bool = True,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Time the sparse and dense paths for every k x k conv signature of ``model`` and store the crossovers.

    Args:
        model: a converted adaptive model (:func:`adatriton.convert`) on the target device and dtype.
        x: an image batch of the size to calibrate for (its device and dtype are the calibration's).
        levels: a level map for ``model(x, levels)``; default: 30 % of the area at level 0.
        densities: target densities of the synthetic level maps.
        repeats: timed calls per point (median).
        save: write the result into :func:`adatriton.runtime.calibration.calibration_path` (merged with what is there).
        seed: seed of the synthetic level maps and values.

    Returns:
        ``{Signature.key: {"crossover": float | None, "sparse": backend, "densities": [...], "sparse_ms": [...],
        "dense_ms": [...]}}``.
    """
    device = x.device
    if levels is None:
        levels = _levels_for(model, x)
    sigs, lm = _signatures(model, x, levels)
    sparse = "triton" if device.type == "cuda" else "torch"
    dtype = x.dtype
    gen = torch.Generator().manual_seed(seed)
    maps = {}
    for d in densities:
        m = _synthetic_levelmap(lm.batch, lm.height, lm.width, lm.num_levels, d, seed).to(device)
        maps[round(m.layout(m.num_levels).num_elements / (lm.batch * lm.height * lm.width), 6)] = m
    entries = {}
    with torch.inference_mode():
        for sig in sigs:
            w = torch.randn(sig.cout, sig.cin // sig.groups, sig.k, sig.k, generator=gen).to(device, dtype)
            w = w / (sig.cin // sig.groups * sig.k * sig.k) ** 0.5
            got_d, got_s, got_dense = [], [], []
            for d, m in sorted(maps.items()):
                lay = m.layout(m.num_levels)
                mr = MultiResMap(torch.randn(lay.num_elements, sig.cin, generator=gen).to(device, dtype), lay)
                times = []
                for name in (sparse, "dense"):

                    def run(name=name, mr=mr, w=w, sig=sig):
                        ops.conv_bn_act(mr, w, relu=True, tap_spacing=sig.spacing, groups=sig.groups, backend=name)

                    times.append(_time_ms(run, device, repeats))
                got_d.append(d)
                got_s.append(round(times[0], 6))
                got_dense.append(round(times[1], 6))
            c = crossover(got_d, got_s, got_dense)
            entries[sig.key] = {
                "crossover": None if c is None else round(c, 6),
                "sparse": sparse,
                "densities": got_d,
                "sparse_ms": got_s,
                "dense_ms": got_dense,
            }
    if save:
        calibration.save_calibration(device, entries)
    return entries


def _levels_for(model: nn.Module, x: torch.Tensor) -> LevelMap:
    os_name = getattr(model, "output_stride", None)
    if os_name is None:
        raise ValueError("calibrate: pass levels= for a model without an output_stride attribute")
    lm = random_level_map(x.shape[2], x.shape[3], 0.3, os_name, device=x.device, batch=x.shape[0])
    if lm is None:
        raise ValueError(f"calibrate: output stride {os_name!r} is dense; nothing to dispatch")
    return lm


def table(entries: dict[str, dict[str, Any]]):
    """The calibration as a ``pandas.DataFrame``: one row per signature and density."""
    pd = require("pandas")

    rows = []
    for key, e in entries.items():
        for d, s, dn in zip(e["densities"], e["sparse_ms"], e["dense_ms"]):
            rows.append(
                {
                    "signature": key,
                    "density": d,
                    f"{e['sparse']}_ms": s,
                    "dense_ms": dn,
                    "crossover": e["crossover"],
                }
            )
    return pd.DataFrame(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m adatriton.calibrate",
        description="Time sparse vs dense convs of an adaptive ResNet on this device and store the crossover "
        "densities the 'auto' backend uses (random weights: timings depend only on shapes).",
    )
    add_model_arguments(p)
    add_dtype_argument(p, ("fp16", "bf16", "fp32", "fp64"), help="default: fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--device", type=device_type, default="cuda", help="cuda or cpu (default: %(default)s)")
    add_repeats_argument(p, 5, "timed calls per point")
    p.add_argument(
        "--densities", type=_density, nargs="+", default=list(DEFAULT_DENSITIES), help="target densities in (0, 1]"
    )
    return p


def _density(text: str) -> float:
    value = fraction(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"expected a density in (0, 1], got {text!r}")
    return value


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``python -m adatriton.calibrate``: calibrate one model and input size, print the table and the file."""
    pd = require("pandas")

    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("adatriton.calibrate: no CUDA device is visible; use --device cpu to calibrate the CPU")
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(0)
    net = convert(getattr(torchvision.models, args.model)(weights=None), args.output_stride)
    net = net.to(device=device, dtype=dtype).eval()
    x = torch.randn(args.batch, 3, *args.size).to(device=device, dtype=dtype)
    start = time.perf_counter()
    entries = calibrate(net, x, densities=args.densities, repeats=args.repeats)
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_rows", None):
        print(table(entries).to_string(index=False))
    print(
        f"\n{args.model} {args.output_stride} {args.size[0]}x{args.size[1]} {dtype} on "
        f"{device_name(device)}: {len(entries)} signatures in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    print(f"calibration file: {calibration.calibration_path(device)}")
    return entries


if __name__ == "__main__":
    main()
