"""``layers``: single conv layers of an adaptive ResNet-101 (8->32), every backend against the dense conv.

Shapes of ``layer3`` (stage 1: one downsampling done) and ``layer4`` (stage 2) at the OS8 grid of the input image
(128x256 for 1024x2048): the 3x3 conv2 with its tap spacing and the 1x1 conv1. The input is a multi-resolution map
on a clustered synthetic 8->32 level map at each level-0 fraction, so the layer computes what it computes inside the
network: every element of its stage (level-0 pixels plus the coarse blocks), ``adatriton.ops.conv2d`` with
``backend=`` ``auto`` / ``torch`` / ``dense`` / ``triton``. The reference (``output_stride`` ``8``, backend
``cudnn`` / ``onednn``) is ``torch.nn.functional.conv2d`` over the whole dense grid with the dilation of the dense
OS8 network, channels-last. Bookkeeping is the level map with the layout and tap table of the layer.

The adaptive rows take the weight as ``adatriton.convert`` leaves a torchvision model's (NCHW, whatever
``--channels-last`` says); the triton backend has a second row with the weight in channels-last memory format
(``scenario`` ``channels_last_weights``), so a cliff between the two shows side by side.

Full run: 1024x2048, fractions 0.01 .. 1.0, 10 + 10 calls. ``--quick``: 256x512 and a quarter of the channels,
fractions 0.1 / 0.3 / 1.0, 1 + 5 calls.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

import adatriton.ops as AF
from adatriton import LevelMap, MultiResMap, masks

from ._measure import measure
from ._networks import dense_backend_name, level_fractions, timed_row
from ._suite import Context, Suite

__all__ = ["SHAPES", "SUITE", "run"]

#: ``(name, Cin, Cout, k, tap spacing, stage)`` of ResNet-101 layers in the 8->32 network.
SHAPES = (
    ("layer3.conv2", 256, 256, 3, 2, 1),
    ("layer3.conv1", 1024, 256, 1, 1, 1),
    ("layer4.conv2", 512, 512, 3, 4, 2),
    ("layer4.conv1", 2048, 512, 1, 1, 2),
)
CONVERSION = "8->32"
#: Channel divisor of the quick run (a quarter of the channels: CPU-sized).
QUICK_CHANNEL_DIVISOR = 4


def _bookkeeping(levels: torch.Tensor, stage: int, k: int, spacing: int):
    lm = LevelMap(levels, CONVERSION)
    layout = lm.layout(stage)
    if k > 1:
        layout.tap_index(k, spacing)
    return layout


def run(ctx: Context) -> list:
    """Measure the dense reference and every (fraction, backend) of each layer shape."""
    o = ctx.opts
    h, w = o.size
    hf, wf = -(-h // 8), -(-w // 8)
    divisor = QUICK_CHANNEL_DIVISOR if o.quick else 1
    backends = ctx.backends()
    gen = torch.Generator().manual_seed(o.seed)
    memory = torch.channels_last if o.channels_last else torch.contiguous_format
    rows = []
    variants = len(backends) + ("triton" in backends)
    with ctx.progress(len(SHAPES) * (1 + len(o.fractions) * variants)) as bar, torch.inference_mode():
        for name, cin, cout, k, spacing, stage in SHAPES:
            cin, cout = cin // divisor, cout // divisor
            weight = (torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5).to(o.device, o.dtype)
            dense = torch.randn(o.batch, cin, hf, wf, generator=gen).to(o.device, o.dtype)
            dense = dense.contiguous(memory_format=memory)
            weight_dense = weight.contiguous(memory_format=memory)
            weight_cl = weight.contiguous(memory_format=torch.channels_last)
            per_output = cout * cin * k * k
            common = {
                "model": f"{name} {k}x{k} {cin}->{cout} o={spacing}",
                "backbone": "resnet101",
                "head": "none",
                "scope": "layer",
                "height": h,
                "width": w,
            }
            conv = functools.partial(F.conv2d, dense, weight_dense, padding=spacing * (k // 2), dilation=spacing)
            conv = torch.compile(conv) if o.compile else conv
            elements = o.batch * hf * wf
            shape_rows = []
            row = timed_row(
                ctx,
                conv,
                f"{name} dense",
                dict(
                    common,
                    output_stride="8",
                    mask_source="none",
                    mask_param="",
                    fraction_target=1.0,
                    fraction_level0=1.0,
                    level_fractions=level_fractions([1.0]),
                    backend=dense_backend_name(o.device),
                    dispatch="dense conv2d",
                    elements=elements,
                    macs_total=per_output * elements,
                    macs_backbone=per_output * elements,
                    bookkeeping_ms=0.0,
                ),
                record=False,
            )
            shape_rows += [row] if row is not None else []
            bar.update()
            for fraction in o.fractions:
                lm_cpu = masks.synthetic(o.batch, h, w, CONVERSION, fraction, kind="blobs", seed=o.seed)
                levels = lm_cpu.levels.to(o.device)
                build = functools.partial(_bookkeeping, levels, stage, k, spacing)
                bookkeeping = measure(build, o.device, min(o.warmup, 1), o.iters).median
                layout = build()
                # The layer's input: the dense map sampled at each element's top-left pixel.
                lv = layout.element_level
                values = dense.permute(0, 2, 3, 1)[layout.batch_index, layout.rows << lv, layout.cols << lv]
                x = MultiResMap(values.contiguous(), layout)
                fr = lm_cpu.fractions().tolist()
                runs = [(backend, "", weight) for backend in backends]
                runs += [("triton", "channels_last_weights", weight_cl)] if "triton" in backends else []
                for backend, scenario, w_run in runs:
                    fn = functools.partial(AF.conv2d, x, w_run, None, spacing, 1, False, backend)
                    fn = torch.compile(fn) if o.compile else fn
                    row = timed_row(
                        ctx,
                        fn,
                        f"{name} {fraction:g} {backend} {scenario}".rstrip(),
                        dict(
                            common,
                            output_stride=CONVERSION,
                            mask_source="synthetic",
                            mask_param="blobs",
                            fraction_target=float(fraction),
                            fraction_level0=fr[0],
                            level_fractions=level_fractions(fr),
                            backend=backend,
                            elements=layout.num_elements,
                            macs_total=per_output * layout.num_elements,
                            macs_backbone=per_output * layout.num_elements,
                            bookkeeping_ms=bookkeeping,
                            scenario=scenario,
                        ),
                        record=True,
                    )
                    shape_rows += [row] if row is not None else []
                    bar.update()
            reference = next((r.time_median_ms for r in shape_rows if r.output_stride == "8"), float("nan"))
            for r in shape_rows:
                r.speedup_vs_os8 = reference / r.time_median_ms
            rows += shape_rows
    return rows


SUITE = Suite(
    name="layers",
    description="single conv layers (ResNet-101 layer3/layer4 shapes) over level-0 fractions, every backend vs "
    "the dense conv (cuDNN / oneDNN)",
    run=run,
    full={
        "size": (1024, 2048),
        "warmup": 10,
        "iters": 10,
        "fractions": (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0),
        "backends": ("auto", "torch", "dense", "triton"),
    },
    quick={
        "size": (256, 512),
        "warmup": 1,
        "iters": 5,
        "fractions": (0.1, 0.3, 1.0),
        "backends": ("auto", "torch", "dense", "triton"),
    },
)
