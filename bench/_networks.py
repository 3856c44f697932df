"""Shared by the network suites (``table2``, ``models``): building the models, the input photograph, level maps
from the mask sources, the bookkeeping that is timed apart, and one row per measured network."""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import adatriton
from adatriton import LevelMap, masks
from adatriton.core.strides import num_levels_of
from adatriton.models import segmentation
from adatriton.runtime.timing import time_calls

from ._measure import Timing, measure, peak_memory_mb, reset_peak_memory
from ._schema import Row
from ._suite import Context

__all__ = [
    "HEADS",
    "InterleavedRows",
    "MASK_SOURCES",
    "Network",
    "build_model",
    "dense_backend_name",
    "dense_columns",
    "level_fractions",
    "network_rows",
    "photo",
    "prepare_levelmap",
    "run_networks",
    "timed_row",
]

#: Segmentation heads the suites build (adatriton.models.segmentation builders).
HEADS = ("fcn", "deeplabv3", "deeplabv3plus")
#: Level-map sources: clustered synthetic blobs, Sobel edges of the photograph.
MASK_SOURCES = ("synthetic", "edges")
#: ImageNet normalisation of the input photograph.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def dense_backend_name(device: torch.device) -> str:
    """What computes a dense torch conv there: ``cudnn`` on CUDA, ``onednn`` on the CPU."""
    return "cudnn" if device.type == "cuda" else "onednn"


def build_model(backbone: str, head: str, seed: int) -> nn.Module:
    """A segmentation model with random weights (runtime does not depend on their values), in eval mode.

    Args:
        backbone: ``resnet50``, ``resnet101`` or ``resnet152``.
        head: one of :data:`HEADS`.
        seed: seeds the initialisation.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return getattr(segmentation, head)(backbone).eval()


@functools.lru_cache(maxsize=4)
def _astronaut() -> Tensor:
    from skimage import data  # bundled with scikit-image: no download

    return torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255  # (3, 512, 512) RGB in [0, 1]


def photo(batch: int, height: int, width: int) -> Tensor:
    """The bundled astronaut photograph (scikit-image) resized to ``height x width``, RGB in ``[0, 1]``; sample
    ``n`` is rolled by ``n * width // batch`` columns, so the samples (and their edge masks) differ.

    Returns:
        ``(batch, 3, height, width)`` float32 on the CPU.

    Raises:
        ImportError: scikit-image is not installed.
    """
    image = F.interpolate(_astronaut()[None], size=(height, width), mode="bilinear", antialias=True)
    image = image.clamp(0, 1)
    return torch.cat([image.roll(n * width // batch, dims=3) for n in range(batch)])


def level_fractions(fractions: Sequence[float]) -> str:
    """``"0.300/0.000/0.700"``: area fraction per level."""
    return "/".join(f"{float(f):.3f}" for f in fractions)


def dense_columns(
    common: dict, stride: str, level: int, num_levels: int, device: torch.device, elements: int, macs_total: int,
    macs_backbone: int,
) -> dict:  # fmt: skip
    """The columns of a dense reference row: no mask, the uniform map at ``level`` (of ``num_levels + 1``) that the
    dense network at ``stride`` equals, the dense backend of ``device``, no bookkeeping."""
    uniform = [float(v == level) for v in range(num_levels + 1)]
    return dict(
        common,
        output_stride=stride,
        mask_source="none",
        mask_param="",
        fraction_target=uniform[0],
        fraction_level0=uniform[0],
        level_fractions=level_fractions(uniform),
        backend=dense_backend_name(device),
        dispatch="dense network",
        elements=elements,
        macs_total=macs_total,
        macs_backbone=macs_backbone,
        bookkeeping_ms=0.0,
    )


def prepare_levelmap(levels: Tensor, num_levels: int, net: nn.Module) -> LevelMap:
    """The bookkeeping of an adaptive network: validate the level map and build every index table its convs
    read: the layouts of all stages, the downsampling sources, and the tap tables of the 3x3 convs (built lazily
    by the first forward otherwise, and then cached on the level map).

    Args:
        levels: ``(N, Hf, Wf)`` integer level values on the network's device.
        num_levels: ``K``.
        net: the converted model (its plan lists the convs on maps).

    Returns:
        The :class:`LevelMap` with its tables built; pass it to the network to time the network alone.
    """
    return net.build_tables(LevelMap(levels, num_levels))


@dataclass
class Network:
    """One model of a network suite and the inputs its rows share.

    Attributes:
        model: the segmentation model (converted per row; the conversions share its weights).
        backbone, head: its names.
        x: input batch on the device (normalised photograph, or seeded noise without scikit-image).
        images: the photograph ``(N, 3, H, W)`` in ``[0, 1]`` on the CPU for the edge masks; None without it.
    """

    model: nn.Module
    backbone: str
    head: str
    x: Tensor
    images: Tensor | None

    @classmethod
    def build(cls, ctx: Context, backbone: str, head: str) -> Network:
        o = ctx.opts
        h, w = o.size
        try:
            images = photo(o.batch, h, w)
            x = (images - torch.tensor(_MEAN)[:, None, None]) / torch.tensor(_STD)[:, None, None]
        except ImportError as err:
            ctx.note(f"no photograph ({err}): noise input, edge masks skipped")
            images, x = None, torch.randn(o.batch, 3, h, w, generator=torch.Generator().manual_seed(o.seed))
        memory = torch.channels_last if o.channels_last else torch.contiguous_format
        model = build_model(backbone, head, o.seed).to(o.device, o.dtype).to(memory_format=memory)
        x = x.to(o.device, o.dtype).contiguous(memory_format=memory)
        return cls(model, backbone, head, x, images)

    @property
    def name(self) -> str:
        return f"{self.head}_{self.backbone}"


def _level_map(ctx: Context, net: Network, conversion: str, source: str, fraction: float) -> LevelMap | None:
    """The CPU level map of one adaptive row, or None (with a note) when the source cannot give one."""
    o = ctx.opts
    h, w = o.size
    if source == "synthetic":
        return masks.synthetic(o.batch, h, w, conversion, fraction, kind="blobs", seed=o.seed)
    if source == "edges":
        if net.images is None:
            return None
        edges = functools.partial(masks.edges, net.images, conversion, method="sobel")
        return masks.match_fraction(edges, fraction, "threshold").levelmap
    raise ValueError(f"unknown mask source {source!r}; expected one of {MASK_SOURCES}")


_MASK_PARAM = {"synthetic": "blobs", "edges": "sobel"}


def _dispatch_summary(records: list[dict]) -> str:
    counts = collections.Counter(r["backend"] for r in records)
    return " ".join(f"{name}:{n}" for name, n in sorted(counts.items()))


def _compiled(ctx: Context, fn: Callable) -> Callable:
    return torch.compile(fn) if ctx.opts.compile else fn


def timed_row(
    ctx: Context,
    call: Callable[[], object],
    label: str,
    columns: dict,
    record: bool,
) -> Row | None:
    """Measure ``call`` and make its row; a failure (e.g. out of memory) becomes a note instead of a row."""
    o = ctx.opts
    try:
        warmup = o.warmup
        dispatch = columns.get("dispatch", "")
        if record:  # one warm-up call records which backend computed every adaptive conv
            with adatriton.ops.dispatch.recording() as records:
                call()
            dispatch, warmup = _dispatch_summary(records), max(0, warmup - 1)
        timing = measure(call, o.device, warmup, o.iters)
    except Exception as err:  # noqa: BLE001 -- one failed measurement must not lose the others
        _note_failure(ctx, label, err)
        return None
    return _timed(ctx, columns, dispatch, timing)


def _note_failure(ctx: Context, label: str, err: Exception) -> None:
    """A failed measurement (e.g. out of memory) becomes a note instead of a row."""
    ctx.note(f"{label}: failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if ctx.opts.device.type == "cuda":
        torch.cuda.empty_cache()


def _timed(ctx: Context, columns: dict, dispatch: str, timing: Timing) -> Row:
    """The row of one measurement: its ``columns`` (without ``dispatch``), the dispatch and the timing."""
    columns = {k: v for k, v in columns.items() if k != "dispatch"}
    return ctx.row(
        **columns,
        dispatch=dispatch,
        time_mean_ms=timing.mean,
        time_median_ms=timing.median,
        time_min_ms=timing.min,
        time_max_ms=timing.max,
        peak_memory_mb=timing.peak_memory_mb,
        speedup_vs_os8=math.nan,
    )


@dataclass
class _Job:
    label: str
    call: Callable[[], object]
    columns: dict
    record: bool
    dispatch: str = ""
    times: list = field(default_factory=list)
    peak_mb: float = 0.0
    failed: bool = False


class InterleavedRows:
    """Rows whose timed calls interleave: every measurement is warmed up first, then call ``i`` of each one runs
    before call ``i + 1`` of any. On a shared machine the speed drifts within a run (here the dense OS8 backbone took
    2.6 s and, half an hour later, 3.8 s), which timing one row after the other turns into errors of the ratios
    between rows; interleaved, the drift weighs on every row alike.

    Use ``add`` for each measurement (its call keeps what it needs alive, e.g. the level map), then ``run``. The
    progress bar advances once per warm-up and once per timed call: ``ticks`` per row.
    """

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.jobs: list[_Job] = []

    @staticmethod
    def ticks(ctx: Context) -> int:
        """Progress-bar steps per row."""
        return 1 + ctx.opts.iters

    def add(self, call: Callable[[], object], label: str, columns: dict, record: bool) -> None:
        """One row to time: ``columns`` as :func:`timed_row` takes them; ``record`` records the dispatch."""
        self.jobs.append(_Job(label, call, dict(columns), record, dispatch=columns.get("dispatch", "")))

    def _fail(self, job: _Job, err: Exception) -> None:
        _note_failure(self.ctx, job.label, err)  # one failed measurement must not lose the others
        job.failed = True

    def run(self, bar) -> list[Row]:
        """Warm up, time round-robin, and return the rows of the measurements that did not fail."""
        o = self.ctx.opts
        for job in self.jobs:
            try:
                warmup = o.warmup
                if job.record:  # the first warm-up call records which backend computed every adaptive conv
                    with adatriton.ops.dispatch.recording() as records:
                        job.call()
                    job.dispatch, warmup = _dispatch_summary(records), max(0, warmup - 1)
                for _ in range(warmup):
                    job.call()
            except Exception as err:  # noqa: BLE001
                self._fail(job, err)
            bar.update()
        for _ in range(o.iters):
            for job in self.jobs:
                if not job.failed:
                    try:
                        if o.device.type == "cuda":
                            torch.cuda.synchronize(o.device)
                        reset_peak_memory(o.device)
                        job.times += time_calls(job.call, o.device, warmup=0, iters=1)
                        job.peak_mb = max(job.peak_mb, peak_memory_mb(o.device))
                    except Exception as err:  # noqa: BLE001
                        self._fail(job, err)
                bar.update()
        return [
            _timed(self.ctx, job.columns, job.dispatch, Timing(tuple(job.times), job.peak_mb))
            for job in self.jobs
            if not job.failed
        ]


def network_rows(
    ctx: Context,
    net: Network,
    scope: str,
    dense_strides: Sequence[str],
    bar,
    weight_rows: bool = False,
) -> list[Row]:
    """Every row of one model: the dense networks, then per conversion, mask source and level-0 fraction the
    bookkeeping (timed apart) and each backend, timed interleaved (:class:`InterleavedRows`); ``speedup_vs_os8``
    filled from the dense OS8 row.

    Args:
        ctx: the suite's context (conversions, masks, fractions, backends come from ``ctx.opts``).
        net: the model and its input.
        scope: ``"backbone"`` times ``backbone.forward_features`` (stem .. layer4, densified), ``"model"`` the
            whole forward (heads and upsampling included).
        dense_strides: dense output strides to measure (must include ``"8"`` for the speedups).
        bar: tqdm bar, advanced :meth:`InterleavedRows.ticks` times per row.
        weight_rows: with the triton backend, one more row per adaptive configuration with the other weight
            memory format (``scenario`` ``nchw_weights``, as ``adatriton.convert`` leaves a torchvision model's,
            when the run is channels-last; ``channels_last_weights`` otherwise).
    """
    o = ctx.opts
    h, w = o.size
    x_meta = torch.empty(tuple(net.x.shape), device="meta")
    backends = ctx.backends()
    common = {"model": net.name, "backbone": net.backbone, "head": net.head, "scope": scope, "height": h, "width": w}

    def forward(model: nn.Module, source: nn.Module = net.model) -> Callable:
        if scope == "backbone":  # stem .. layer4 alone: the conversion of the model's backbone, sharing its weights
            backbone = adatriton.convert(source.backbone, model.output_stride, model.backend).eval()
            return _compiled(ctx, backbone.forward_features)
        return _compiled(ctx, model)

    jobs = InterleavedRows(ctx)
    with torch.inference_mode():
        for stride in dense_strides:
            model = adatriton.convert(net.model, stride).eval()
            fn = forward(model)
            count = adatriton.count_macs(model, x_meta)
            finest = int(stride)
            level = int(math.log2(finest // 8))  # the uniform map on the OS8 grid that this network equals
            elements = o.batch * -(-h // finest) * -(-w // finest)
            columns = dense_columns(common, stride, level, level, o.device, elements, count.total, count.backbone)
            jobs.add(functools.partial(fn, net.x), f"{net.name} OS{stride}", columns, record=False)
        for conversion in o.conversions:
            k = num_levels_of(conversion)
            # One converted model per backend (they share the weights): the backend is the model's own setting, so
            # a compiled forward specialises on it.
            models = {b: adatriton.convert(net.model, conversion, backend=b).eval() for b in backends}
            fns = {b: forward(m) for b, m in models.items()}
            runs = [(b, "") for b in models]
            if weight_rows and "triton" in models:
                # A copy of the weights in the other memory format, converted like the rest.
                other = torch.contiguous_format if o.channels_last else torch.channels_last
                scenario = "nchw_weights" if o.channels_last else "channels_last_weights"
                twin_model = copy.deepcopy(net.model).to(memory_format=other)
                twin = adatriton.convert(twin_model, conversion, "triton")
                fns[scenario] = forward(twin.eval(), twin_model)
                runs.append(("triton", scenario))
            for source in o.masks:
                for fraction in o.fractions:
                    label = f"{net.name} {conversion} {source} {fraction:g}"
                    lm_cpu = _level_map(ctx, net, conversion, source, fraction)
                    if lm_cpu is None:
                        bar.update(len(runs) * jobs.ticks(ctx))
                        continue
                    levels = lm_cpu.levels.to(o.device)
                    any_model = next(iter(models.values()))
                    build = functools.partial(prepare_levelmap, levels, k, any_model)
                    bookkeeping = measure(build, o.device, min(o.warmup, 1), o.iters).median
                    lm = build()
                    count = adatriton.count_macs(any_model, x_meta, lm_cpu)
                    fr = lm_cpu.fractions().tolist()
                    for backend, scenario in runs:
                        columns = dict(
                            common,
                            output_stride=conversion,
                            mask_source=source,
                            mask_param=_MASK_PARAM[source],
                            fraction_target=float(fraction),
                            fraction_level0=fr[0],
                            level_fractions=level_fractions(fr),
                            backend=backend,
                            elements=count.elements[-1],
                            macs_total=count.total,
                            macs_backbone=count.backbone,
                            bookkeeping_ms=bookkeeping,
                            scenario=scenario,
                        )
                        call = functools.partial(fns[scenario or backend], net.x, lm)
                        jobs.add(call, f"{label} {backend} {scenario}".rstrip(), columns, record=True)
        rows = jobs.run(bar)
    reference = next((r.time_median_ms for r in rows if r.output_stride == "8"), math.nan)
    for r in rows:
        r.speedup_vs_os8 = reference / r.time_median_ms
    with contextlib.suppress(Exception):
        if o.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def run_networks(
    ctx: Context, scope: str, dense_strides: Sequence[str] = ("16", "8"), weight_rows: bool = False
) -> list[Row]:
    """A suite over every (backbone, head) pair of the options: :func:`network_rows` of each, one progress bar.

    Args:
        ctx: the suite's context.
        scope: ``"backbone"`` (stem .. layer4, densified) or ``"model"`` (the whole forward).
        dense_strides: dense references of every model, the speedups' reference ``"8"`` among them.
        weight_rows: a triton row with the other weight memory format per configuration (:func:`network_rows`).
    """
    o = ctx.opts
    models = [(b, h) for b in o.backbones for h in o.heads]
    variants = len(ctx.backends()) + (weight_rows and "triton" in ctx.backends())
    per_model = len(dense_strides) + len(o.conversions) * len(o.masks) * len(o.fractions) * variants
    rows = []
    with ctx.progress(per_model * len(models) * InterleavedRows.ticks(ctx), unit="call") as bar:
        for backbone, head in models:
            rows += network_rows(ctx, Network.build(ctx, backbone, head), scope, dense_strides, bar, weight_rows)
    return rows
