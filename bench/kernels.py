"""Single-layer kernels: the sparse conv over the level-0 elements against the dense conv at the same shape.

For each layer shape (ResNet layer3 conv2: 3x3 256->256 on a 128x256 grid; conv1: 1x1 1024->256) and each
density ``rho`` (fraction of the grid's pixels that are level-0 output elements, clustered 4x4 blocks), it times
the dense ``conv2d`` over the whole grid (cuDNN / oneDNN, channels-last, ``cudnn.benchmark``) and the backend's
conv over the ``rho * H * W`` elements, side by side in one run. ``efficiency`` is the sparse TFLOP/s over the
dense TFLOP/s; at ``efficiency >= 0.7`` the sparse conv takes at most ``1.43 * rho`` of the dense time.

The sparse rows use the ``triton`` backend where it can run (CUDA), else the ``torch`` backend.
"""

from __future__ import annotations

import datetime as _dt
import statistics
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

import adatriton
import adatriton.functional as AF
from adatriton import LevelMap
from adatriton.backends import triton_runs_on

from .backbone import _device_name, _triton_version, clustered_keep_mask, time_call

#: (name, Cin, Cout, k, tap spacing, grid H, grid W): ResNet-101 layer3 shapes at OS8 of a 1024x2048 image.
SHAPES = (("3x3-256-256", 256, 256, 3, 2, 128, 256), ("1x1-1024-256", 1024, 256, 1, 1, 128, 256))
DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
CSV_NAME = "kernel_runtime.csv"


@dataclass
class KernelRow:
    """One measurement of ``kernel_runtime.csv`` (columns declared once, here).

    Attributes:
        timestamp, device, torch_version, triton_version, adatriton_version: run and software.
        layer: shape name; cin, cout, kernel, tap_spacing, height, width: the layer and its grid.
        dtype: compute dtype. backend: ``dense`` (the library conv over the whole grid) or the sparse backend.
        density: requested fraction of level-0 outputs; elements: outputs computed.
        repeats, median_ms, min_ms, max_ms: timing of the conv alone (index tables built before timing).
        tflops: ``2 * elements * k * k * Cin * Cout / median``.
        efficiency: ``tflops`` over the dense row's ``tflops`` at the same shape (1 for the dense row).
    """

    timestamp: str
    device: str
    torch_version: str
    triton_version: str
    adatriton_version: str
    layer: str
    cin: int
    cout: int
    kernel: int
    tap_spacing: int
    height: int
    width: int
    dtype: str
    backend: str
    density: float
    elements: int
    repeats: int
    median_ms: float
    min_ms: float
    max_ms: float
    tflops: float
    efficiency: float


def run_kernels(
    device: str | None = None,
    dtype: torch.dtype | None = None,
    repeats: int = 10,
    warmup: int = 3,
    densities: tuple[float, ...] = DENSITIES,
    shapes: tuple = SHAPES,
    progress: bool = True,
) -> list[KernelRow]:
    """Measure every (shape, density) pair; see the module docstring.

    Args:
        device: ``"cuda"`` or ``"cpu"``; default cuda when available.
        dtype: default fp16 on CUDA, fp32 on the CPU.
        repeats, warmup: timed and untimed calls per row.
        densities: level-0 fractions of the sparse rows.
        shapes: layer shapes, as :data:`SHAPES`.
        progress: tqdm bar on stderr.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    sparse_backend = "triton" if dev.type == "cuda" and triton_runs_on(dev) else "torch"
    torch.backends.cudnn.benchmark = True
    common = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(dev),
        "torch_version": torch.__version__,
        "triton_version": _triton_version(),
        "adatriton_version": adatriton.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "repeats": repeats,
    }
    gen = torch.Generator().manual_seed(0)
    jobs = [(shape, None) for shape in shapes] + [(shape, rho) for shape in shapes for rho in densities]
    rows, dense_tflops = [], {}
    with torch.inference_mode():
        for (name, cin, cout, k, spacing, h, w), rho in tqdm(
            jobs, desc="kernels", file=sys.stderr, disable=not progress
        ):
            weight = torch.randn(cout, cin, k, k, generator=gen).to(dev, dtype)
            macs_per_output = k * k * cin * cout
            if rho is None:
                x = (
                    torch.randn(1, cin, h, w, generator=gen)
                    .to(dev, dtype)
                    .contiguous(memory_format=torch.channels_last)
                )

                def call(x=x, weight=weight, k=k, spacing=spacing):
                    return F.conv2d(x, weight, padding=spacing * (k // 2), dilation=spacing)

                backend, elements = "dense", h * w
            else:
                # The image whose OS8 grid is h x w; level-0 tiles of the clustered mask are the computed outputs.
                keep = clustered_keep_mask(8 * h, 8 * w, rho, gen).to(dev)
                layout = LevelMap.from_keep_mask(keep, "8->32").layout(0)
                level0 = layout.levelmap.levels.flatten() == 0
                values = torch.randn(layout.num_elements, cin, generator=gen).to(dev, dtype)
                if k == 1:  # a 1x1 conv reads only its own element: a GEMM over the level-0 rows, no gather
                    values, index = values[level0].contiguous(), None
                else:  # only the level-0 outputs, as an adaptive layer has, reading taps anywhere in the grid
                    index = layout.tap_index(k, spacing)[level0]
                out_layout_rows = int(level0.sum())

                def call(values=values, weight=weight, index=index):
                    if sparse_backend == "triton":
                        return AF._launch_triton(values, index, weight, 1)
                    if index is None:
                        return values @ weight.reshape(weight.shape[0], -1).t()
                    return AF._gather_gemm(values, weight, None, index, 1)

                backend, elements = sparse_backend, out_layout_rows
            times, _ = time_call(call, dev, repeats, warmup)
            median = statistics.median(times)
            tflops = 2 * elements * macs_per_output / median / 1e12
            if rho is None:
                dense_tflops[name] = tflops
            rows.append(
                KernelRow(
                    **common,
                    layer=name,
                    cin=cin,
                    cout=cout,
                    kernel=k,
                    tap_spacing=spacing,
                    height=h,
                    width=w,
                    backend=backend,
                    density=1.0 if rho is None else rho,
                    elements=elements,
                    median_ms=median * 1e3,
                    min_ms=min(times) * 1e3,
                    max_ms=max(times) * 1e3,
                    tflops=tflops,
                    efficiency=tflops / dense_tflops[name],
                )
            )
    return rows


def write_kernel_rows(rows: list[KernelRow], out_dir: str | Path) -> tuple[Path, pd.DataFrame]:
    """Write ``<out_dir>/kernel_runtime.csv``; returns its path and the table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([asdict(r) for r in rows], columns=[f.name for f in fields(KernelRow)])
    path = out_dir / CSV_NAME
    table.to_csv(path, index=False)
    return path, table
