"""``zoo``: CNNs other than ResNets, converted by the graph path (docs/semantics.md §8): torchvision's
MobileNetV2, MobileNetV3-Large, EfficientNet-B0, RegNetY-400MF, ResNeXt-50 (32x4d), VGG-16-BN and the segmentation
LRASPP-MobileNetV3-Large, whole models (``scope`` ``model``).

Per model: the dense network at the finest output stride (OS8, strides past it turned into dilation) and at the
coarsest (OS32; LRASPP, whose backbone stops at OS16: OS16), then the adaptive conversion between them (``8->32``;
LRASPP ``8->16``) on clustered synthetic masks (``masks.synthetic``, blobs) at each level-0 fraction (0.3 among
them), through the per-layer dispatcher (``auto``; others with ``--backends``), the rows of a model timed
interleaved (:class:`~bench._networks.InterleavedRows`). Columns as the other suites:
``backbone`` is the model, ``head`` ``classifier`` or ``lraspp``; ``macs_*`` from ``adatriton.count_macs``
(the backbone: everything but the ``classifier`` / ``fc`` children); ``bookkeeping_ms`` is the level map and
every index table its adaptive convs read (:meth:`AdaptiveGraphModule.build_tables`); the summary divides by
dense OS8 and OS32. ``Options.backbones`` (names of :data:`MODELS`; the CLI's ``--backbones`` offers the ResNets
only, so from the command line every zoo model runs) and ``--conversions`` narrow the runs; a conversion a model's
strides do not allow falls back to the model's own.

Full run: 512x1024, fractions 0.1/0.3/0.5, 10 + 10 calls. ``--quick``: 128x256, 0.1/0.3/0.5, 1 + 2 calls.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torchvision.models import segmentation as tvseg

import adatriton
from adatriton.masks.density import synthetic_grid
from adatriton.models.graph import AdaptiveGraphModule

from ._measure import measure
from ._networks import InterleavedRows, dense_columns, level_fractions
from ._schema import Row
from ._suite import Context, Suite

__all__ = ["MODELS", "SUITE", "run"]

#: name -> (builder, head, the conversions its strides allow, the first being the full range).
MODELS: dict[str, tuple[Callable[[], nn.Module], str, tuple[str, ...]]] = {
    "mobilenet_v2": (torchvision.models.mobilenet_v2, "classifier", ("8->32", "8->16")),
    "mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, "classifier", ("8->32", "8->16")),
    "efficientnet_b0": (torchvision.models.efficientnet_b0, "classifier", ("8->32", "8->16")),
    "regnet_y_400mf": (torchvision.models.regnet_y_400mf, "classifier", ("8->32", "8->16")),
    "resnext50_32x4d": (torchvision.models.resnext50_32x4d, "classifier", ("8->32", "8->16")),
    "vgg16_bn": (torchvision.models.vgg16_bn, "classifier", ("8->32", "8->16")),
    "lraspp_mobilenet_v3_large": (
        lambda: tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None),
        "lraspp",
        ("8->16",),
    ),
}


def _build(ctx: Context, name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model with random weights (seeded; runtime does not depend on their values) and a seeded noise input."""
    o = ctx.opts
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(o.seed)
        model = MODELS[name][0]().eval()
    memory = torch.channels_last if o.channels_last else torch.contiguous_format
    model = model.to(o.device, o.dtype).to(memory_format=memory)
    x = torch.randn(o.batch, 3, *o.size, generator=torch.Generator().manual_seed(o.seed))
    return model, x.to(o.device, o.dtype).contiguous(memory_format=memory)


def _conversions(ctx: Context, name: str) -> tuple[str, ...]:
    allowed = MODELS[name][2]
    chosen = tuple(c for c in ctx.opts.conversions if c in allowed)
    return chosen or allowed[:1]


def _model_rows(ctx: Context, name: str, bar) -> list[Row]:
    o = ctx.opts
    h, w = o.size
    model, x = _build(ctx, name)
    x_meta = torch.empty(tuple(x.shape), device="meta")
    common = {"model": name, "backbone": name, "head": MODELS[name][1], "scope": "model", "height": h, "width": w}
    conversions = _conversions(ctx, name)
    coarsest = max(int(c.split("->")[1]) for c in conversions)
    jobs = InterleavedRows(ctx)
    with torch.inference_mode():
        first = adatriton.convert(model, conversions[0], example_input=x_meta, backend="auto", method="graph")
        for stride in ("8", str(coarsest)):
            net = first.finest_network() if stride == "8" else first.with_output_stride(stride)
            level = int(math.log2(int(stride) // 8))  # the uniform map on the OS8 grid that this network equals
            count = adatriton.count_macs(net, x_meta)
            elements = o.batch * -(-h // int(stride)) * -(-w // int(stride))
            columns = dense_columns(common, stride, level, level, o.device, elements, count.total, count.backbone)
            jobs.add(functools.partial(net, x), f"{name} OS{stride}", columns, record=False)
        for conversion in conversions:
            base = first if conversion == conversions[0] else first.with_output_stride(conversion)
            nets = {b: _with_backend(base, b) for b in ctx.backends()}
            n, hf, wf = base.finest_grid(x_meta)
            for fraction in o.fractions:
                lm_cpu = synthetic_grid(n, hf, wf, base.num_levels, fraction, kind="blobs", seed=o.seed)
                levels = lm_cpu.levels.to(o.device)
                build = functools.partial(base.build_tables, levels)
                bookkeeping = measure(build, o.device, min(o.warmup, 1), o.iters).median
                lm = build()
                count = adatriton.count_macs(base, x_meta, lm_cpu)
                fr = lm_cpu.fractions().tolist()
                for backend, net in nets.items():
                    columns = dict(
                        common,
                        output_stride=conversion,
                        mask_source="synthetic",
                        mask_param="blobs",
                        fraction_target=float(fraction),
                        fraction_level0=fr[0],
                        level_fractions=level_fractions(fr),
                        backend=backend,
                        elements=count.elements[-1],
                        macs_total=count.total,
                        macs_backbone=count.backbone,
                        bookkeeping_ms=bookkeeping,
                    )
                    label = f"{name} {conversion} {fraction:g} {backend}"
                    jobs.add(functools.partial(net, x, lm), label, columns, record=True)
        rows = jobs.run(bar)
    reference = next((r.time_median_ms for r in rows if r.output_stride == "8"), math.nan)
    for r in rows:
        r.speedup_vs_os8 = reference / r.time_median_ms
    return rows


def _with_backend(net: AdaptiveGraphModule, backend: str) -> AdaptiveGraphModule:
    """The converted model with another conv backend (a second module on the same layers)."""
    if net.backend == backend:
        return net
    other = net.with_output_stride(net.output_stride)
    other.backend = backend
    return other


def run(ctx: Context) -> list[Row]:
    """Every model of ``--backbones`` (default: all of :data:`MODELS`), see the module docstring; a model that
    fails to convert becomes a note."""
    o = ctx.opts
    names = [n for n in o.backbones if n in MODELS]
    unknown = [n for n in o.backbones if n not in MODELS]
    if unknown:
        ctx.note(f"not zoo models, skipped: {', '.join(unknown)} (zoo: {', '.join(MODELS)})")
    per_row = InterleavedRows.ticks(ctx)
    total = sum(2 + len(_conversions(ctx, n)) * len(o.fractions) * len(ctx.backends()) for n in names) * per_row
    rows: list[Row] = []
    with ctx.progress(total, unit="call") as bar:
        for name in names:
            try:
                rows += _model_rows(ctx, name, bar)
            except Exception as err:  # noqa: BLE001 -- one model that cannot be converted must not lose the others
                ctx.note(f"{name}: failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            if o.device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


_COMMON = {
    "fractions": (0.1, 0.3, 0.5),
    "backbones": tuple(MODELS),
    "heads": ("none",),
    "conversions": ("8->32",),
    "masks": ("synthetic",),
    "backends": ("auto",),
}

SUITE = Suite(
    name="zoo",
    description="MobileNetV2/V3, EfficientNet-B0, RegNetY-400MF, ResNeXt-50, VGG-16-BN, LRASPP via the graph path: "
    "dense OS8/OS32 vs adaptive 8->32",
    run=run,
    full={"size": (512, 1024), "warmup": 10, "iters": 10, **_COMMON},
    quick={"size": (128, 256), "warmup": 1, "iters": 2, **_COMMON},
    references=("8", "32"),
)
