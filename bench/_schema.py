"""The one CSV schema every suite writes: :class:`Row`, its column order and the key that identifies a row."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["COLUMNS", "HOST_COLUMNS", "KEY", "Row"]


@dataclass
class Row:
    """One measurement: a row of ``<suite>.csv`` (columns declared once, here; the README's table mirrors this).

    Attributes:
        suite: suite name (``table2``, ``models``, ``layers``, ``keypoints``, ``host``).
        model: what runs, e.g. ``deeplabv3_resnet101``, or a layer name for the ``layers`` suite.
        backbone: ``resnet50`` / ``resnet101`` / ``resnet152`` (or another trunk).
        head: ``fcn`` / ``deeplabv3`` / ``deeplabv3plus``, or ``none``.
        scope: what the timed call covers: ``backbone`` (stem .. layer4, densified), ``model`` (whole forward),
            ``layer`` (one conv) or ``adaptive`` (the ``host`` suite: the adaptive part of the backbone).
        output_stride: ``"8"``, ``"16"`` (dense networks) or ``"8->32"``, ``"8->16"`` (adaptive).
        mask_source: ``none`` (dense), ``synthetic`` (clustered blobs), ``edges`` (Sobel edges of a photograph).
        mask_param: the source's setting that names the map (``blobs``, ``sobel``); part of the key.
        fraction_target: level-0 area fraction asked for; a dense row holds the uniform map it equals on the OS8
            grid (1 for OS8, 0 for OS16).
        fraction_level0: level-0 area fraction of the level map used.
        level_fractions: area fraction per level ``0..K``, ``/``-separated (dense rows: their uniform map).
        backend: ``auto`` (the per-layer dispatcher), ``torch``, ``dense``, ``triton``; dense networks and the
            reference conv: ``cudnn`` (CUDA) or ``onednn`` (CPU).
        dispatch: what computed the adaptive convs: ``backend:count`` per backend chosen (one recorded pass).
        dtype, batch, height, width: the input (``height x width`` image; the layers suite: the image whose OS8
            grid the layer runs on).
        channels_last: inputs and weights in channels-last memory format.
        compiled: the timed callable went through ``torch.compile``.
        elements: output positions of the last stage (feature vectors), whole batch.
        macs_total: multiply-adds of the whole model (docs/semantics.md §5, :func:`adatriton.count_macs`).
        macs_backbone: multiply-adds of the backbone (layers suite: the layer's).
        warmup, iters: untimed and timed calls.
        time_mean_ms, time_median_ms, time_min_ms, time_max_ms: statistics of the timed calls (network only; the
            ``host`` suite: CPU time of the issuing thread in the adaptive part).
        bookkeeping_ms: median time to build the level map and every index table the network uses (0 for
            dense rows); not part of the ``time_*`` columns.
        peak_memory_mb: peak memory during the timed calls: ``torch.cuda.max_memory_allocated`` on CUDA, the
            process's peak resident set (VmHWM, reset before the calls) on the CPU.
        speedup_vs_os8: dense OS8 median (layers: the dense conv at the OS8 grid) of the same run over this
            row's median.
        device: GPU name, or CPU model and intra-op threads.
        torch_version, triton_version, adatriton_version: software versions (``triton_version`` empty if absent).
        timestamp: start of the run (ISO 8601, UTC); the same for every row of a run.
        scenario: what else names the measurement; the ``host`` suite: ``reused_map`` / ``new_map``; empty for
            the other suites. Part of the key.
        convs_per_forward: adaptive convs per forward (``host`` suite; 0 where not counted).
        launches_per_forward: device ops per forward: ATen ops that launch a kernel on a GPU plus Triton launches
            (``host`` suite: of the adaptive part; NaN where not counted).
        syncs_per_forward: host-device synchronisations per forward (``host`` suite; NaN where not counted).
        host_us_per_conv: host time (CPU time of the issuing thread) of the adaptive part per adaptive conv,
            microseconds, launches stubbed (``host`` suite; NaN where not measured).
        host_us_per_conv_low, host_us_per_conv_high: the 95% confidence interval of that median
            (:func:`bench._measure.median_interval`, per conv; ``host`` suite, NaN elsewhere or with fewer than 6
            timed forwards).
    """

    suite: str
    model: str
    backbone: str
    head: str
    scope: str
    output_stride: str
    mask_source: str
    mask_param: str
    fraction_target: float
    fraction_level0: float
    level_fractions: str
    backend: str
    dispatch: str
    dtype: str
    batch: int
    height: int
    width: int
    channels_last: bool
    compiled: bool
    elements: int
    macs_total: int
    macs_backbone: int
    warmup: int
    iters: int
    time_mean_ms: float
    time_median_ms: float
    time_min_ms: float
    time_max_ms: float
    bookkeeping_ms: float
    peak_memory_mb: float
    speedup_vs_os8: float
    device: str
    torch_version: str
    triton_version: str
    adatriton_version: str
    timestamp: str
    scenario: str = ""
    convs_per_forward: int = 0
    launches_per_forward: float = math.nan
    syncs_per_forward: float = math.nan
    host_us_per_conv: float = math.nan
    host_us_per_conv_low: float = math.nan
    host_us_per_conv_high: float = math.nan


#: Column order of every CSV.
COLUMNS = tuple(f.name for f in fields(Row))
#: The ``host`` suite's own columns: NaN in every other suite's rows.
HOST_COLUMNS = (
    "launches_per_forward",
    "syncs_per_forward",
    "host_us_per_conv",
    "host_us_per_conv_low",
    "host_us_per_conv_high",
)

#: The columns that identify a measurement: a re-run replaces the row with the same key.
KEY = (
    "suite",
    "model",
    "scope",
    "output_stride",
    "mask_source",
    "mask_param",
    "fraction_target",
    "backend",
    "dtype",
    "batch",
    "height",
    "width",
    "channels_last",
    "compiled",
    "device",
    "scenario",
)
