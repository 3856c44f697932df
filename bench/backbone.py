"""Backbone runtime: dense OS8/OS16/OS32 against adaptive ``"8->32"`` ResNets, measured side by side in one run.

Every measurement times ``forward_features`` (stem .. layer4) of the same randomly initialised torchvision ResNet,
fp32, batch 1, channels-last input, under :func:`torch.inference_mode`. The adaptive rows build a fresh
:class:`~adatriton.LevelMap` inside every timed call, so the index bookkeeping is part of their time; the
``bookkeeping`` rows time that part alone (the level map and its per-stage layouts).

The level-0 regions come from a clustered synthetic keep mask (:func:`clustered_keep_mask`), so that the
adaptive networks see contiguous regions, as real content-adaptive masks are, rather than salt-and-pepper noise.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

import adatriton
from adatriton import LevelMap

__all__ = [
    "ADAPTIVE_STRIDE",
    "DENSE_STRIDES",
    "MODELS",
    "BenchConfig",
    "Row",
    "clustered_keep_mask",
    "run_backbone",
    "time_call",
    "write_rows",
]

#: Models the bench can build (random weights: runtime does not depend on the weight values).
MODELS = ("resnet50", "resnet101", "resnet152")
#: Dense output strides measured in every run; "8" is the reference of ``ratio_to_os8``.
DENSE_STRIDES = ("8", "16", "32")
#: The adaptive conversion measured, and its finest output stride.
ADAPTIVE_STRIDE = "8->32"
FINEST_STRIDE = 8
#: Keep-mask tile on the finest grid: ``LevelMap.from_keep_mask`` gives level 0 to every aligned 4x4 tile with
#: any kept pixel, so the synthetic mask is drawn on this tile grid to control the level-0 area exactly.
MASK_BLOCK = 4
#: Window of the box filter that turns white noise into clustered scores (in tiles).
SMOOTHING_WINDOW = 5
CSV_NAME = "backbone_runtime.csv"


@dataclass(frozen=True)
class BenchConfig:
    """What one bench run measures.

    Attributes:
        model: torchvision constructor name, one of :data:`MODELS`.
        height, width: input image size.
        fractions: requested level-0 area fractions of the adaptive rows.
        repeats: timed calls per measurement.
        warmup: untimed calls before them (allocator, oneDNN/cuDNN algorithm selection).
        seed: seeds the weights, the input and the keep-mask noise.
        device: ``"cuda"`` or ``"cpu"``; None picks cuda when available.
    """

    model: str = "resnet101"
    height: int = 512
    width: int = 1024
    fractions: tuple[float, ...] = (0.3,)
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    device: str | None = None


@dataclass
class Row:
    """One measurement: the columns of ``backbone_runtime.csv`` (declared once, here).

    Attributes:
        timestamp: start of the run (ISO 8601, UTC); the same for all rows of a run.
        device: GPU name, or CPU description with the intra-op thread count.
        torch_version, torchvision_version, triton_version, adatriton_version: software versions
            (``triton_version`` is empty when triton is not installed).
        model: torchvision model name.
        kind: ``dense``, ``adaptive`` or ``bookkeeping`` (level map + layouts only, no network).
        output_stride: ``"8"``, ``"16"``, ``"32"`` or ``"8->32"``.
        backend: conv backend of the adaptive part; empty for dense networks and bookkeeping.
        dtype, batch, height, width: input description.
        requested_fraction: level-0 area fraction asked for; None for dense rows.
        level0_fraction: actual level-0 area fraction of the level map (``lm.fractions()[0]``); None for dense.
        elements: feature vectors at the last stage: level-map elements for adaptive/bookkeeping rows, output
            pixels for dense rows.
        warmup, repeats: untimed and timed calls.
        median_s, min_s, max_s, iqr_s: statistics of the timed calls, seconds.
        ratio_to_os8: ``median_s`` over the dense OS8 row's ``median_s`` of the same run.
    """

    timestamp: str
    device: str
    torch_version: str
    torchvision_version: str
    triton_version: str
    adatriton_version: str
    model: str
    kind: str
    output_stride: str
    backend: str
    dtype: str
    batch: int
    height: int
    width: int
    requested_fraction: float | None
    level0_fraction: float | None
    elements: int
    warmup: int
    repeats: int
    median_s: float
    min_s: float
    max_s: float
    iqr_s: float
    ratio_to_os8: float = math.nan


COLUMNS = tuple(f.name for f in fields(Row))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> tuple[list[float], object]:
    """Wall-clock times of ``fn()``.

    Args:
        fn: the call to time.
        device: on CUDA the queue is drained before and after every call, so a time covers the kernels it
            launched and nothing queued before it.
        repeats: timed calls (at least 1).
        warmup: untimed calls first.

    Returns:
        The ``repeats`` times in seconds, and what the last call returned.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out = None
    for _ in range(warmup):
        out = fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        out = fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times, out


def clustered_keep_mask(
    height: int, width: int, fraction: float, generator: torch.Generator, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """A clustered keep mask on the OS8 grid of a ``height x width`` image whose 4x4 tiles are kept by score.

    Scores are Gaussian noise on the tile grid smoothed by a ``5x5`` box filter, so kept tiles form blobs; the
    top ``round(fraction * tiles)`` tiles are kept, an exact count. Tiles clipped by the grid edge make the
    kept *area* differ slightly from ``fraction``; the bench records the actual area.

    Args:
        height, width: input image size; the mask is ``(1, ceil(H/8), ceil(W/8))``.
        fraction: share of tiles to keep, in ``[0, 1]``.
        generator: draws the noise when ``noise`` is None.
        noise: ``(tiles_y, tiles_x)`` noise to reuse, so that masks of several fractions are nested.

    Returns:
        Boolean tensor ``(1, ceil(H/8), ceil(W/8))`` on the CPU.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    hf, wf = _ceil_div(height, FINEST_STRIDE), _ceil_div(width, FINEST_STRIDE)
    hb, wb = _ceil_div(hf, MASK_BLOCK), _ceil_div(wf, MASK_BLOCK)
    if noise is None:
        noise = torch.randn(hb, wb, generator=generator)
    if noise.shape != (hb, wb):
        raise ValueError(f"noise must have shape {(hb, wb)}, got {tuple(noise.shape)}")
    # count_include_pad=False: border tiles average real neighbours only, so they are not biased towards 0.
    score = F.avg_pool2d(
        noise[None, None], SMOOTHING_WINDOW, stride=1, padding=SMOOTHING_WINDOW // 2, count_include_pad=False
    ).flatten()
    kept = torch.zeros(score.numel(), dtype=torch.bool)
    kept[score.topk(round(fraction * score.numel())).indices] = True
    tiles = kept.view(1, hb, wb)
    return tiles.repeat_interleave(MASK_BLOCK, 1).repeat_interleave(MASK_BLOCK, 2)[:, :hf, :wf].contiguous()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine() or "cpu"
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def _triton_version() -> str:
    # Read the installed metadata instead of importing triton: the import can fail or be slow without a GPU.
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _build_levelmap(keep: torch.Tensor) -> LevelMap:
    """Level map from the keep mask with every per-stage layout built (the bookkeeping shared by backends)."""
    lm = LevelMap.from_keep_mask(keep, ADAPTIVE_STRIDE)
    for stage in range(lm.num_levels + 1):
        lm.layout(stage)
    return lm


def _adaptive_forward(net: torch.nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # A fresh LevelMap per call: index tables are cached on a LevelMap, and their cost belongs to the forward.
    return net.forward_features(x, LevelMap.from_keep_mask(keep, ADAPTIVE_STRIDE))


@dataclass(frozen=True)
class _Measurement:
    """One row to measure: its identity and the call to time."""

    kind: str
    output_stride: str
    backend: str
    requested_fraction: float | None
    fn: Callable[[], object]
    levelmap: LevelMap | None = None

    @property
    def label(self) -> str:
        parts = [self.kind, f"OS{self.output_stride}", self.backend]
        if self.requested_fraction is not None:
            parts.append(f"f={self.requested_fraction:g}")
        return " ".join(p for p in parts if p)


def _plan(config: BenchConfig, model: torch.nn.Module, x: torch.Tensor) -> list[_Measurement]:
    """The measurements of a run, in order: dense networks first, then per fraction bookkeeping and backends."""
    plan = []
    for stride in DENSE_STRIDES:
        net = adatriton.convert(model, stride).eval()
        plan.append(_Measurement("dense", stride, "", None, functools.partial(net.forward_features, x)))
    # The triton backend joins on CUDA; on the CPU it would only run in the (slow) interpreter.
    backends = ("torch", "dense", "triton") if x.device.type == "cuda" else ("torch", "dense")
    nets = {backend: adatriton.convert(model, ADAPTIVE_STRIDE, backend=backend).eval() for backend in backends}
    generator = torch.Generator().manual_seed(config.seed)
    hf, wf = _ceil_div(config.height, FINEST_STRIDE), _ceil_div(config.width, FINEST_STRIDE)
    # One noise field for all fractions: their masks are nested, so rows differ only in the kept area.
    noise = torch.randn(_ceil_div(hf, MASK_BLOCK), _ceil_div(wf, MASK_BLOCK), generator=generator)
    for fraction in config.fractions:
        keep = clustered_keep_mask(config.height, config.width, fraction, generator, noise).to(x.device)
        stats_map = _build_levelmap(keep)  # for the recorded fraction and element count, outside the timing
        build = functools.partial(_build_levelmap, keep)
        plan.append(_Measurement("bookkeeping", ADAPTIVE_STRIDE, "", fraction, build, stats_map))
        for backend, net in nets.items():
            fn = functools.partial(_adaptive_forward, net, x, keep)
            plan.append(_Measurement("adaptive", ADAPTIVE_STRIDE, backend, fraction, fn, stats_map))
    return plan


def _elements(m: _Measurement, out: object) -> int:
    if m.levelmap is not None:
        return int(sum(m.levelmap.element_counts()))
    n, _, h, w = out.shape  # dense backbone output (N, C, H, W)
    return int(n * h * w)


def run_backbone(config: BenchConfig, progress: bool = True) -> list[Row]:
    """Measure every row of a run (see the module docstring).

    Args:
        config: what to measure.
        progress: show a tqdm bar over the measurements on stderr.

    Returns:
        One :class:`Row` per measurement, ``ratio_to_os8`` filled in.
    """
    if config.model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {config.model!r}")
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(config.seed)
    model = getattr(torchvision.models, config.model)(weights=None)
    model = model.eval().to(device).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, config.height, config.width, generator=torch.Generator().manual_seed(config.seed))
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    common = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(device),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "triton_version": _triton_version(),
        "adatriton_version": adatriton.__version__,
        "model": config.model,
        "dtype": str(x.dtype).removeprefix("torch."),
        "batch": x.shape[0],
        "height": config.height,
        "width": config.width,
        "warmup": config.warmup,
        "repeats": config.repeats,
    }
    rows = []
    with torch.inference_mode():
        plan = _plan(config, model, x)
        bar = tqdm(plan, desc="backbone", unit="row", file=sys.stderr, disable=not progress)
        for m in bar:
            bar.set_postfix_str(m.label)
            times, out = time_call(m.fn, device, config.repeats, config.warmup)
            q1, q3 = np.percentile(times, [25, 75])
            fraction = None if m.levelmap is None else float(m.levelmap.fractions()[0])
            rows.append(
                Row(
                    **common,
                    kind=m.kind,
                    output_stride=m.output_stride,
                    backend=m.backend,
                    requested_fraction=m.requested_fraction,
                    level0_fraction=fraction,
                    elements=_elements(m, out),
                    median_s=statistics.median(times),
                    min_s=min(times),
                    max_s=max(times),
                    iqr_s=float(q3 - q1),
                )
            )
            del out  # the OS8 output is large on the GPU; do not keep it alive into the next measurement
    reference = next(r.median_s for r in rows if r.kind == "dense" and r.output_stride == "8")
    for r in rows:
        r.ratio_to_os8 = r.median_s / reference
    return rows


def write_rows(rows: Sequence[Row], out_dir: str | Path) -> tuple[Path, pd.DataFrame]:
    """Write ``rows`` to ``<out_dir>/backbone_runtime.csv`` (the folder is created).

    Returns:
        The CSV path and the table written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([asdict(r) for r in rows], columns=list(COLUMNS))
    path = out_dir / CSV_NAME
    table.to_csv(path, index=False)
    return path, table
