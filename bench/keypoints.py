"""``keypoints``: the D2-Net / VGG-16 trunk (conv1_1 .. conv4_3), dense OS1/2/4/8 against adaptive ``"1->8"`` at
the paper's ten keypoint dilation triplets (docs/semantics.md §6). Two entry points:

**The suite** (``python -m bench keypoints [--quick]``, :data:`SUITE`) writes ``<out>/keypoints.csv`` in the
shared schema (:class:`bench.Row`), ``keypoints_summary.md`` (times and MAs over dense OS1 and OS8, the suite's
``references``) and a plot. Per run: one row per dense output stride, then one per triplet and backend
(``--backends``, default ``auto``, the per-layer dispatcher). The input is image 1 .. ``batch`` of the synthetic
HPatches-layout sequence (:func:`adatriton.eval.hpatches.make_synthetic_sequence`, the astronaut photograph warped;
cycled past six), random VGG-16 weights (``--seed``). Columns:

- ``model`` ``d2net_vgg16``, ``backbone`` ``vgg16``, ``head`` ``d2net``, ``scope`` ``backbone``: the timed call is
  the trunk (``features_map`` dense, ``features_multires`` adaptive, without densifying); D2-Net's head (L2
  normalisation) has no MAs, so ``macs_total == macs_backbone`` (per batch, :func:`adatriton.count_macs`).
- ``output_stride`` ``"1"``, ``"2"``, ``"4"``, ``"8"`` (dense; ``backend`` ``onednn`` / ``cudnn``) or ``"1->8"``.
- ``mask_source`` ``keypoints`` (dense: ``none``), ``mask_param`` the triplet ``d1/d2/d4`` (``25/51/51``,
  ``inf/inf/inf``; dense: empty) -- it names the map and is part of the key.
- ``fraction_target``: a triplet asks for no fraction, so adaptive rows hold ``-1`` (no NaN in the key; the triplet
  in ``mask_param`` keeps the key unique); dense OS ``2^v`` holds the uniform map ``L == v`` it equals: 1 for OS1,
  0 otherwise. ``fraction_level0`` / ``level_fractions``: the timed batch's map (4 levels).
- ``elements``: conv4_3 output positions of the batch. ``bookkeeping_ms``: median time of the keypoint level map
  from the (given) SIFT keypoints plus its index tables (:meth:`D2Net.build_tables`); SIFT itself, which the
  dense pipeline needs as well (descriptors are taken at the keypoints), is not in it: its time is a note.
- ``speedup_vs_os8``: dense **OS1** median of the same run over this row's (the suite's finest dense network;
  the column name is the schema's).

``--fractions``, ``--conversions``, ``--masks``, ``--model``, ``--heads`` do not apply and are ignored.
Full run: 240x320, 10 warm-up + 10 timed calls; ``--quick``: 96x128, 1 + 5 (fewer timed calls mark verdicts noisy).

**Standalone** (``python -m bench.keypoints --out results [--quick] [--mma] [--weights d2_tf.pth]
[--sequence PATH] [--backends ...]``, :func:`run_keypoints`; options spelt as in ``python -m bench``, see
:mod:`bench._cli`) writes ``<out>/keypoints_hpatches.csv`` (:class:`KeypointRow`, its own columns):

- **multiply-adds** (docs/semantics.md §5, :func:`adatriton.count_macs`) per image, averaged over the six
  images of an HPatches-layout sequence (by default the synthetic mini-sequence, or a folder of the real dataset),
  and of the timed image;
- **runtime** of the trunk on image 1 (batch 1; ``--warmup`` untimed then ``--iters`` timed calls; CUDA events on
  a GPU, ``time.perf_counter`` on the CPU), with its ratio to dense OS1 measured in the same run. The adaptive
  rows run on a prebuilt level map with its index tables (:meth:`D2Net.build_tables`): that bookkeeping is timed
  apart, as ``sift_s`` (SIFT keypoints) and ``levelmap_s`` (level map + index tables);
- optionally (``mma=True``) the mean matching accuracy of the sequence's five pairs at 1..10 px
  (:func:`adatriton.eval.hpatches.evaluate`; with random weights it measures the pipeline, not D2-Net).

Random VGG-16 weights unless ``weights`` names a D2-Net checkpoint (``d2_tf.pth``, caffe preprocessing).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import importlib.metadata
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adatriton import masks
from adatriton.analysis import count_macs
from adatriton.eval import hpatches
from adatriton.models import d2net, load_d2net_state_dict
from adatriton.models.d2net import D2Net
from adatriton.runtime import timing
from adatriton.runtime.backend import resolve_backend

from ._cli import DTYPES, add_backends, add_device, add_dtype, add_iters, non_negative_int, positive_int
from ._measure import device_name, measure
from ._networks import dense_columns, level_fractions, timed_row
from ._schema import Row
from ._suite import Context, Suite

__all__ = [
    "COLUMNS",
    "CSV_NAME",
    "DILATIONS",
    "SUITE",
    "KeypointRow",
    "build_parser",
    "main",
    "run",
    "run_keypoints",
]

#: The standalone CLI's CSV (its own columns; the suite writes ``keypoints.csv`` in the shared schema).
CSV_NAME = "keypoints_hpatches.csv"
#: The paper's sweep of keypoint dilation triplets (docs/semantics.md §6), cheapest first.
DILATIONS = masks.PAPER_KEYPOINT_DILATIONS
#: Full-run and quick defaults; explicit arguments override either.
DEFAULTS = {"size": (240, 320), "warmup": 10, "repeats": 10, "mma": True}
QUICK = {"size": (96, 128), "warmup": 1, "repeats": 5, "mma": False}


@dataclass
class KeypointRow:
    """One row of the standalone ``keypoints_hpatches.csv``.

    Attributes:
        timestamp: start of the run (ISO 8601, UTC), the same for every row.
        device: GPU name, or the CPU with its intra-op thread count.
        torch_version, adatriton_version: software versions.
        weights: ``random`` or the checkpoint file name.
        sequence: the HPatches-layout sequence the images come from.
        kind: ``dense`` or ``adaptive``.
        output_stride: ``"1"``, ``"2"``, ``"4"``, ``"8"`` or ``"1->8"``.
        dilations: ``d1,d2,d4`` of the keypoint level map (``inf`` = everything); empty for dense rows.
        backend: conv backend of the adaptive trunk; empty for dense rows.
        dtype, height, width: the input.
        keypoints: SIFT keypoints of image 1 (at most 512).
        level0 .. level3: area fractions of the levels over the sequence's six level maps (adaptive rows).
        macs_per_image: multiply-adds per image, mean over the sequence; macs_ratio_to_os1: over dense OS1's.
        macs_timed: multiply-adds of the timed call (image 1).
        warmup, repeats: untimed and timed calls.
        median_s, min_s, max_s: trunk runtime on image 1, seconds.
        ratio_to_os1: ``median_s`` over dense OS1's ``median_s`` in the same run.
        sift_s: median SIFT time for image 1; levelmap_s: median time of the level map and its index tables.
        mma_1 .. mma_10: mean matching accuracy at 1..10 px over the sequence's pairs (NaN unless measured).
    """

    timestamp: str
    device: str
    torch_version: str
    adatriton_version: str
    weights: str
    sequence: str
    kind: str
    output_stride: str
    dilations: str
    backend: str
    dtype: str
    height: int
    width: int
    keypoints: int
    level0: float
    level1: float
    level2: float
    level3: float
    macs_per_image: float
    macs_ratio_to_os1: float
    macs_timed: int
    warmup: int
    repeats: int
    median_s: float
    min_s: float
    max_s: float
    ratio_to_os1: float
    sift_s: float
    levelmap_s: float
    mma_1: float = math.nan
    mma_2: float = math.nan
    mma_3: float = math.nan
    mma_4: float = math.nan
    mma_5: float = math.nan
    mma_6: float = math.nan
    mma_7: float = math.nan
    mma_8: float = math.nan
    mma_9: float = math.nan
    mma_10: float = math.nan


COLUMNS = tuple(f.name for f in fields(KeypointRow))


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _macs(net: D2Net, h: int, w: int, levels=None) -> int:
    """MAs of the trunk on ``h x w`` images (one, or one per sample of ``levels``), counted over the graph its forwards
    run (:func:`adatriton.count_macs`, docs/semantics.md §5); nothing is computed."""
    batch = 1 if levels is None else levels.batch
    return count_macs(net, torch.empty(batch, net.in_channels, h, w, device="meta"), levels).total


def _dilation_label(dilations: Sequence[float]) -> str:
    return ",".join("inf" if d == math.inf else str(int(d)) for d in dilations)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (:func:`adatriton.runtime.timing.time_calls`
    in seconds)."""
    return [ms / 1e3 for ms in timing.time_calls(fn, device, warmup=warmup, iters=repeats)]


def _resize_sequence(seq: hpatches.HPatchesSequence, size: tuple[int, int]) -> hpatches.HPatchesSequence:
    """Every image resized to ``size``; homographies conjugated by the pixel-centre scalings so they stay exact."""
    import cv2

    h, w = size

    def scaling(img: np.ndarray) -> np.ndarray:
        sy, sx = h / img.shape[0], w / img.shape[1]
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])

    if all(img.shape[:2] == (h, w) for img in seq.images):
        return seq
    s1 = scaling(seq.images[0])
    homs = [scaling(img) @ hom @ np.linalg.inv(s1) for img, hom in zip(seq.images[1:], seq.homographies)]
    images = [cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in seq.images]
    return hpatches.HPatchesSequence(seq.name, images, homs, seq.path)


def _sequence(sequence: str | Path | None, size: tuple[int, int], seed: int) -> hpatches.HPatchesSequence:
    if sequence is not None:
        return _resize_sequence(hpatches.load_sequence(sequence), size)
    with tempfile.TemporaryDirectory() as tmp:
        # Written and read back through the official layout, as a real sequence would be.
        return hpatches.load_sequence(hpatches.make_synthetic_sequence(tmp, "astronaut", "v", size, seed))


def run_keypoints(
    out_dir: str | Path | None = None,
    *,
    quick: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    size: tuple[int, int] | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
    progress: bool = True,
    mma: bool | None = None,
    timing: bool = True,
    backend: str | Sequence[str] | None = None,
    weights: str | Path | None = None,
    sequence: str | Path | None = None,
    dilations: Sequence[Sequence[float]] = DILATIONS,
    trunk_config: Sequence[int | str] = d2net.VGG16_CONFIG,
    seed: int = 0,
) -> list[KeypointRow]:
    """Measure the standalone keypoints benchmark and write ``<out_dir>/keypoints_hpatches.csv``.

    Args:
        out_dir: folder for the CSV (created); None writes nothing.
        quick: smoke-test defaults (:data:`QUICK`) instead of the full ones (:data:`DEFAULTS`).
        device: ``"cuda"`` / ``"cpu"``; None picks cuda when available.
        dtype: trunk and input dtype.
        size: ``(H, W)`` of the images (the synthetic sequence is written at this size, a real one resized).
        warmup, repeats: untimed and timed calls per row.
        progress: one line per row on stderr.
        mma: also evaluate the matching accuracy on the sequence (six forwards per row).
        timing: time the trunk and the bookkeeping; False counts MAs (and MMA) only, times are NaN, so that MAs
            of large images cost no forward pass.
        backend: conv backend of the adaptive trunk (None: the default resolution), or several: one adaptive row
            per triplet and backend.
        weights: a D2-Net checkpoint (``{"model": ...}``) to load; None for random weights.
        sequence: a folder in the HPatches layout; None builds the synthetic mini-sequence.
        dilations: the triplets of the adaptive rows.
        trunk_config: VGG widths (default VGG-16; smaller ones for tests).
        seed: seeds the random weights and the synthetic sequence.

    Returns:
        The rows: dense OS1, OS2, OS4, OS8, then one adaptive row per triplet (per backend).
    """
    defaults = QUICK if quick else DEFAULTS
    size = tuple(int(s) for s in (size or defaults["size"]))
    warmup = defaults["warmup"] if warmup is None else int(warmup)
    repeats = defaults["repeats"] if repeats is None else int(repeats)
    mma = defaults["mma"] if mma is None else bool(mma)
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    timestamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    torch.manual_seed(seed)
    base = D2Net(d2net.vgg_features(trunk_config), "1")  # dense rows; each adaptive one picks its backend below
    if weights is not None:
        load_d2net_state_dict(base, weights)
    base = base.to(device=dev, dtype=dtype).eval()
    preprocessing = "caffe" if weights is not None else "torch"
    seq = _sequence(sequence, size, seed)
    h, w = seq.images[0].shape[:2]
    rgb = torch.from_numpy(np.stack([img.transpose(2, 0, 1) for img in seq.images]))
    x_all = d2net.preprocess(rgb, preprocessing, dtype).to(dev)
    x1 = x_all[:1]

    sift_times = []
    for _ in range(max(1, repeats) if timing else 1):
        t0 = time.perf_counter()
        kps = masks.sift_keypoints(rgb)
        sift_times.append(time.perf_counter() - t0)
    sift_s = statistics.median(sift_times) / len(seq.images)  # per image

    common = {
        "timestamp": timestamp,
        "device": device_name(dev),
        "torch_version": torch.__version__,
        "adatriton_version": _version("adatriton"),
        "weights": "random" if weights is None else Path(weights).name,
        "sequence": seq.name,
        "dtype": str(dtype).replace("torch.", ""),
        "height": h,
        "width": w,
        "keypoints": len(kps[0]),
        "warmup": warmup,
        "repeats": repeats,
        "sift_s": sift_s,
    }
    rows: list[KeypointRow] = []

    def log(row: KeypointRow) -> None:
        if progress:
            label = f"OS{row.output_stride}" + (f" ({row.dilations})" if row.dilations else "")
            print(f"keypoints: {label:<24} {row.macs_per_image:.3e} MAs/image  {row.median_s:.4f} s", file=sys.stderr)

    def accuracy(net: D2Net, levels) -> dict[str, float]:
        if not mma:
            return {}
        with torch.inference_mode():
            desc = [d.float().cpu().numpy() for d in net.describe(x_all, kps, levels)]
        table = dict(zip((id(img) for img in seq.images), zip(kps, desc)))
        result = hpatches.evaluate([seq], lambda img: table[id(img)])
        return {f"mma_{t}": v for t, v in result.mma.items()}

    for os_ in d2net.DENSE_STRIDES:
        net = base.with_output_stride(os_)
        times = [math.nan]
        if timing:
            with torch.inference_mode():
                times = time_calls(lambda net=net: net.features_map(x1), dev, warmup, repeats)
        row = KeypointRow(
            **common,
            kind="dense",
            output_stride=os_,
            dilations="",
            backend="",
            level0=math.nan,
            level1=math.nan,
            level2=math.nan,
            level3=math.nan,
            macs_per_image=_macs(net, h, w),
            macs_ratio_to_os1=math.nan,
            macs_timed=_macs(net, h, w),
            median_s=statistics.median(times),
            min_s=min(times),
            max_s=max(times),
            ratio_to_os1=math.nan,
            levelmap_s=math.nan,
            **accuracy(net, None),
        )
        rows.append(row)
        log(row)

    chosen = [backend] if backend is None or isinstance(backend, str) else list(backend)
    for name in chosen:
        net = D2Net(base.features, d2net.ADAPTIVE_STRIDE, base.use_relu, name)
        backend_name = name or _resolved_backend(dev)
        for dil in dilations:
            row = _adaptive_row(net, backend_name, dil, rgb, kps, x1, dev, warmup, repeats, timing, common)
            if mma:
                _with_accuracy(row, accuracy(net, _levels(rgb, dil, kps, dev)))
            rows.append(row)
            log(row)

    os1 = rows[0]
    for row in rows:
        row.ratio_to_os1 = row.median_s / os1.median_s
        row.macs_ratio_to_os1 = row.macs_per_image / os1.macs_per_image
    if out_dir is not None:
        write_rows(rows, Path(out_dir) / CSV_NAME)
    return rows


def _levels(rgb: torch.Tensor, dil, kps, device: torch.device):
    return masks.keypoints(rgb, dil, keypoints_xy=kps).to(device)


def _with_accuracy(row: KeypointRow, mma: dict[str, float]) -> None:
    for name, value in mma.items():
        setattr(row, name, value)


def _adaptive_row(
    net: D2Net, backend_name: str, dil, rgb, kps, x1, dev, warmup: int, repeats: int, timing: bool, common: dict
) -> KeypointRow:
    """One adaptive row of :func:`run_keypoints`: the trunk on image 1 at one dilation triplet and backend."""
    rgb1 = rgb[:1]

    def build():
        return net.build_tables(masks.keypoints(rgb1, dil, keypoints_xy=kps[:1]).to(dev))

    lm_times, times = [math.nan], [math.nan]
    lm1 = masks.keypoints(rgb1, dil, keypoints_xy=kps[:1])
    if timing:
        lm_times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            lm1 = build()
            lm_times.append(time.perf_counter() - t0)
        with torch.inference_mode():
            times = time_calls(lambda: net.features_multires(x1, lm1), dev, warmup, repeats)
    lm_all = masks.keypoints(rgb, dil, keypoints_xy=kps)
    fr = lm_all.fractions().tolist()
    return KeypointRow(
        **common,
        kind="adaptive",
        output_stride=d2net.ADAPTIVE_STRIDE,
        dilations=_dilation_label(dil),
        backend=backend_name,
        level0=fr[0],
        level1=fr[1],
        level2=fr[2],
        level3=fr[3],
        macs_per_image=_macs(net, lm_all.height, lm_all.width, lm_all) / lm_all.batch,
        macs_ratio_to_os1=math.nan,
        macs_timed=_macs(net, lm1.height, lm1.width, lm1),
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        ratio_to_os1=math.nan,
        levelmap_s=statistics.median(lm_times),
    )


def _resolved_backend(device: torch.device) -> str:
    return resolve_backend(None, device)


def write_rows(rows: Sequence[KeypointRow], path: str | Path) -> Path:
    """Write rows as CSV (columns :data:`COLUMNS`), creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([asdict(r) for r in rows], columns=list(COLUMNS)).to_csv(path, index=False)
    return path


def build_parser() -> argparse.ArgumentParser:
    """The standalone command line (``python -m bench.keypoints --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.keypoints",
        description="D2-Net / VGG-16 keypoints benchmark (own CSV "
        "with MAs per image and MMA; the shared-schema suite is python -m bench keypoints)",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    parser.add_argument("--quick", action="store_true", help=f"smoke test defaults: {QUICK}")
    parser.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), help="image size")
    parser.add_argument("--warmup", type=non_negative_int, help="untimed calls per row")
    add_iters(parser, "timed calls per row")
    add_device(parser)
    add_dtype(parser, "fp32", "trunk and input dtype (default: fp32)")
    add_backends(parser, "adaptive conv backends, one row per triplet and backend (default: the default resolution)")
    parser.add_argument("--mma", action=argparse.BooleanOptionalAction, default=None, help="matching accuracy")
    parser.add_argument("--weights", type=Path, help="D2-Net checkpoint (d2_tf.pth); default random weights")
    parser.add_argument("--sequence", type=Path, help="an HPatches sequence folder; default: synthetic")
    parser.add_argument("--seed", type=int, default=0, help="random weights and the synthetic sequence (default 0)")
    parser.add_argument("--no-timing", action="store_true", help="count MAs (and MMA) only, no runtime")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m bench.keypoints``: run :func:`run_keypoints`, print the table, return the CSV's path."""
    args = build_parser().parse_args(argv)
    rows = run_keypoints(
        args.out,
        quick=args.quick,
        device=args.device,
        dtype=DTYPES[args.dtype],
        size=tuple(args.size) if args.size else None,
        warmup=args.warmup,
        repeats=args.iters,
        progress=not args.no_progress,
        mma=args.mma,
        backend=args.backends,
        weights=args.weights,
        sequence=args.sequence,
        timing=not args.no_timing,
        seed=args.seed,
    )
    table = pd.DataFrame([asdict(r) for r in rows])
    cols = [
        "kind",
        "output_stride",
        "dilations",
        "level0",
        "macs_per_image",
        "macs_ratio_to_os1",
        "median_s",
        "ratio_to_os1",
        "levelmap_s",
    ]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[cols].to_string(index=False))
    path = args.out / CSV_NAME
    print(path)
    return path


# ---------------------------------------------------------------------------------------------------- the suite
MODEL, BACKBONE, HEAD = "d2net_vgg16", "vgg16", "d2net"
#: ``fraction_target`` of the adaptive rows: a dilation triplet asks for no level-0 fraction.
NO_TARGET = -1.0


def _triplet(dilations: Sequence[float]) -> str:
    """``"25/51/51"``, ``"inf/inf/inf"``: the ``mask_param`` of a triplet."""
    return "/".join("inf" if d == math.inf else str(int(d)) for d in dilations)


def run(ctx: Context) -> list[Row]:
    """The suite's rows (see the module docstring): dense OS1/2/4/8, then per dilation triplet and backend."""
    o = ctx.opts
    h, w = o.size
    dev = o.device
    backends = ctx.backends()
    memory = torch.channels_last if o.channels_last else torch.contiguous_format
    seq = _sequence(None, (h, w), o.seed)
    index = [i % len(seq.images) for i in range(o.batch)]  # images 1 .. batch of the sequence, cycled
    rgb = torch.from_numpy(np.stack([seq.images[i].transpose(2, 0, 1) for i in index]))
    x = d2net.preprocess(rgb, "torch", o.dtype).to(dev).contiguous(memory_format=memory)
    sift = measure(functools.partial(masks.sift_keypoints, rgb), torch.device("cpu"), 0, max(1, min(o.iters, 3)))
    kps = masks.sift_keypoints(rgb)
    ctx.note(
        f"SIFT (not in bookkeeping_ms): {sift.median / len(index):.2f} ms per image, "
        f"{min(len(k) for k in kps)}..{max(len(k) for k in kps)} keypoints per image"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(o.seed)
        features = d2net.vgg_features().to(dev, o.dtype).to(memory_format=memory).eval()

    def compiled(fn):
        return torch.compile(fn) if o.compile else fn

    common = {"model": MODEL, "backbone": BACKBONE, "head": HEAD, "scope": "backbone", "height": h, "width": w}
    rows: list[Row] = []
    with ctx.progress(len(d2net.DENSE_STRIDES) + len(DILATIONS) * len(backends)) as bar, torch.inference_mode():
        for stride in d2net.DENSE_STRIDES:
            net = D2Net(features, stride)
            count = count_macs(net, torch.empty(o.batch, net.in_channels, h, w, device="meta"))
            level = int(math.log2(int(stride)))  # the uniform "1->8" map L == level equals this network
            elements = int(count.rows["elements"].iloc[-1])
            columns = dense_columns(common, stride, level, d2net.NUM_POOLS, dev, elements, count.total, count.total)
            call = functools.partial(compiled(net.features_map), x)
            row = timed_row(ctx, call, f"{MODEL} OS{stride}", columns, record=False)
            rows += [row] if row is not None else []
            bar.update()
        nets = {b: D2Net(features, d2net.ADAPTIVE_STRIDE, backend=b) for b in backends}
        fns = {b: compiled(net.features_multires) for b, net in nets.items()}
        any_net = next(iter(nets.values()), None)
        for dil in DILATIONS if any_net is not None else ():
            lm_cpu = masks.keypoints(rgb, dil, keypoints_xy=kps)
            build = functools.partial(_keypoint_tables, any_net, rgb, dil, kps, dev)
            bookkeeping = measure(build, dev, min(o.warmup, 1), o.iters).median
            lm = build()
            count = count_macs(any_net, torch.empty(lm_cpu.batch, any_net.in_channels, h, w, device="meta"), lm_cpu)
            fr = lm_cpu.fractions().tolist()
            for backend, fn in fns.items():
                columns = dict(
                    common,
                    output_stride=d2net.ADAPTIVE_STRIDE,
                    mask_source="keypoints",
                    mask_param=_triplet(dil),
                    fraction_target=NO_TARGET,
                    fraction_level0=fr[0],
                    level_fractions=level_fractions(fr),
                    backend=backend,
                    elements=int(count.rows["elements"].iloc[-1]),
                    macs_total=count.total,
                    macs_backbone=count.total,
                    bookkeeping_ms=bookkeeping,
                )
                label = f"{MODEL} 1->8 {_triplet(dil)} {backend}"
                row = timed_row(ctx, functools.partial(fn, x, lm), label, columns, record=True)
                rows += [row] if row is not None else []
                bar.update()
            del lm
    reference = next((r.time_median_ms for r in rows if r.output_stride == "1"), math.nan)
    if math.isnan(reference):
        ctx.note("no dense OS1 row: speedup_vs_os8 (here: over dense OS1) is NaN")
    for r in rows:
        r.speedup_vs_os8 = reference / r.time_median_ms
    return rows


def _keypoint_tables(net: D2Net, rgb: torch.Tensor, dil, kps, device: torch.device):
    """The bookkeeping of an adaptive row: the keypoint level map from given keypoints, on ``device``, with every
    index table the trunk reads."""
    return net.build_tables(masks.keypoints(rgb, dil, keypoints_xy=kps).to(device))


SUITE = Suite(
    name="keypoints",
    description="D2-Net / VGG-16 trunk: dense OS1/2/4/8 vs adaptive 1->8 at the paper's ten keypoint dilation "
    "triplets (SIFT keypoint level maps), dispatcher by default",
    run=run,
    full={"size": (240, 320), "warmup": 10, "iters": 10, "backends": ("auto",)},
    quick={"size": (96, 128), "warmup": 1, "iters": 5, "backends": ("auto",)},
    references=("1", "8"),
)


if __name__ == "__main__":
    main()
