"""``deploy``: an adaptive ResNet-50 in ONNX Runtime next to eager. Dense OS8 and adaptive 8->32 (torch backend; the
Sobel edge map of the bundled photograph at level-0 fraction 0.3, ``--fractions``' first value), each exported once
with ``adatriton.ops.export_onnx`` (``torch.onnx.export(..., dynamo=True)``; the adaptive file takes the level map
as an input) and run by ONNX Runtime's CPU provider, and each run eagerly; the four callables' timed calls
interleave (call ``i`` of each before call ``i + 1`` of any).

Single-threaded (``torch.set_num_threads(1)``, ONNX Runtime ``intra_op_num_threads = inter_op_num_threads = 1``), so
every call runs on the calling thread and the ``time_*`` columns are its CPU time (``time.thread_time``): on a
shared machine the wall time mostly measures the waits for a core (the notes give the wall medians and the load
average; a note also checks that the process's CPU time equals the thread's, i.e. nothing ran on another thread).

Rows: ``scenario`` ``eager`` (backend ``onednn`` for the dense network, ``torch`` for the adaptive) or
``onnxruntime`` (backend ``onnxruntime``); ``speedup_vs_os8`` is over the dense OS8 row of the same runtime. The
summary gives t/OS8 per runtime beside MA/OS8 (multiply-adds, ``adatriton.count_macs``) and the issue's target:
ONNX Runtime's adaptive t/OS8 at most :data:`TARGET` x MA/OS8. ``--full`` and ``--quick`` are both 256x512 (the
issue's size), 1 warm-up + 5 timed calls (``--quick``) or 2 + 10; ``--device`` must be the CPU.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torchvision

import adatriton
from adatriton import masks

from ._networks import level_fractions, photo
from ._schema import Row
from ._suite import Context, Suite

__all__ = ["MODEL", "SUITE", "TARGET", "run", "summarize"]

MODEL = "resnet50"
CONVERSION = "8->32"
#: The issue's target: ONNX Runtime adaptive over ONNX Runtime dense OS8 (t/OS8) at most this times MA/OS8.
TARGET = 1.2
#: ImageNet normalisation of the photograph (as the network suites').
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_call(session, *inputs) -> functools.partial:
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return functools.partial(session.run, None, feeds)


def _input(ctx: Context) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The normalised photograph and the photograph itself (None and noise without scikit-image)."""
    h, w = ctx.opts.size
    try:
        images = photo(ctx.opts.batch, h, w)
    except ImportError as err:
        ctx.note(f"no photograph ({err}): noise input and a synthetic map")
        return torch.randn(ctx.opts.batch, 3, h, w, generator=torch.Generator().manual_seed(ctx.opts.seed)), None
    return (images - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None], images


Key = tuple[str, str]  # (output stride, runtime)


def _timed(calls: dict[Key, Callable], warmup: int, iters: int, bar) -> dict[Key, tuple[list, list]]:
    """Thread CPU times and wall times (ms) of every call, interleaved."""
    for call in calls.values():
        for _ in range(warmup):
            call()
        bar.update()
    cpu: dict[Key, list] = {name: [] for name in calls}
    wall: dict[Key, list] = {name: [] for name in calls}
    for _ in range(iters):
        for name, call in calls.items():
            w0, c0 = time.perf_counter(), time.thread_time()
            call()
            cpu[name].append((time.thread_time() - c0) * 1e3)
            wall[name].append((time.perf_counter() - w0) * 1e3)
            bar.update()
    return {name: (cpu[name], wall[name]) for name in calls}


def run(ctx: Context) -> list[Row]:
    """The four rows (see the module docstring)."""
    from adatriton.ops import export_onnx  # the deploy extra is imported there, when the export runs

    o = ctx.opts
    if o.device.type != "cpu":
        raise SystemExit("the deploy suite runs ONNX Runtime's CPU provider: --device cpu")
    if o.dtype != torch.float32:
        raise SystemExit("the deploy suite runs float32")
    h, w = o.size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, images = _input(ctx)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(o.seed)
            model = torchvision.models.resnet50().eval()
        fraction = o.fractions[0]
        if images is None:
            source, param = "synthetic", "blobs"
            lm = masks.synthetic(o.batch, h, w, CONVERSION, fraction, kind="blobs", seed=o.seed)
        else:
            source, param = "edges", "sobel"
            edges = functools.partial(masks.edges, images, CONVERSION, method="sobel")
            lm = masks.match_fraction(edges, fraction, "threshold").levelmap
        dense = adatriton.convert(model, "8").eval()
        adaptive = adatriton.convert(model, CONVERSION, backend="torch").eval()
        x_meta = torch.empty(tuple(x.shape), device="meta")
        macs = {"8": adatriton.count_macs(dense, x_meta), CONVERSION: adatriton.count_macs(adaptive, x_meta, lm)}
        bar = ctx.progress(2 + 4 * (1 + o.iters), unit="step")
        with tempfile.TemporaryDirectory() as tmp:
            exported = {}
            for stride, net, args in (("8", dense, (x,)), (CONVERSION, adaptive, (x, lm))):
                path = Path(tmp) / f"{stride.replace('->', 'to')}.onnx"
                start = time.perf_counter()
                export_onnx(net, args, path)
                ctx.note(f"{MODEL} {stride}: exported in {time.perf_counter() - start:.1f} s")
                exported[stride] = (_session(path), args)
                bar.update()
            calls = {}
            with torch.inference_mode():
                calls[("8", "eager")] = functools.partial(dense, x)
                calls[(CONVERSION, "eager")] = functools.partial(adaptive, x, lm)
                for stride, (session, args) in exported.items():
                    inputs = [a.levels if isinstance(a, adatriton.LevelMap) else a for a in args]
                    calls[(stride, "onnxruntime")] = _ort_call(session, *inputs)
                process0 = time.process_time()
                thread0 = time.thread_time()
                times = _timed(calls, o.warmup, o.iters, bar)
                on_thread = (time.thread_time() - thread0) / max(1e-9, time.process_time() - process0)
        bar.close()
    finally:
        torch.set_num_threads(threads)
    ctx.note(
        f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())} after the timed calls; CPU time on the "
        f"calling thread / process CPU time: {on_thread:.3f} (1: every call ran on the calling thread)"
    )
    fr = lm.fractions().tolist()
    rows = []
    for (stride, scenario), (cpu, wall) in times.items():
        ctx.note(
            f"{MODEL} {stride} {scenario}: wall median {statistics.median(wall):.1f} ms, thread CPU median "
            f"{statistics.median(cpu):.1f} ms"
        )
        count = macs[stride]
        adaptive_row = stride == CONVERSION
        uniform = [1.0, 0.0, 0.0]
        rows.append(
            ctx.row(
                model=MODEL,
                backbone=MODEL,
                head="none",
                scope="model",
                output_stride=stride,
                mask_source=source if adaptive_row else "none",
                mask_param=param if adaptive_row else "",
                fraction_target=float(fraction) if adaptive_row else 1.0,
                fraction_level0=fr[0] if adaptive_row else 1.0,
                level_fractions=level_fractions(fr if adaptive_row else uniform),
                backend="onnxruntime" if scenario == "onnxruntime" else ("torch" if adaptive_row else "onednn"),
                dispatch="torch gather-GEMM" if adaptive_row else "dense network",
                height=h,
                width=w,
                elements=count.elements[-1] if adaptive_row else o.batch * -(-h // 8) * -(-w // 8),
                macs_total=count.total,
                macs_backbone=count.backbone,
                time_mean_ms=statistics.fmean(cpu),
                time_median_ms=statistics.median(cpu),
                time_min_ms=min(cpu),
                time_max_ms=max(cpu),
                bookkeeping_ms=0.0,
                peak_memory_mb=math.nan,
                speedup_vs_os8=math.nan,
                scenario=scenario,
            )
        )
    for r in rows:
        reference = next(q for q in rows if q.scenario == r.scenario and q.output_stride == "8")
        r.speedup_vs_os8 = reference.time_median_ms / r.time_median_ms
    return rows


def summarize(table: pd.DataFrame, suite: str, csv_path: Path, notes=(), references=()) -> str:
    """Per runtime: dense OS8 and adaptive times (thread CPU time, median and min–max), t/OS8 beside MA/OS8, and the
    target on ONNX Runtime's ratio (no verdict where a timing is noisy, :func:`bench._report.verdict`)."""
    from ._report import closing_sections, verdict

    out = [
        f"# `{suite}` benchmark summary",
        "",
        f"From `{csv_path.name}` ({len(table)} rows). {MODEL} classifier, 1 thread; times: CPU time of the calling "
        "thread per call (ms), median (min–max); t/OS8: adaptive median over the same runtime's dense OS8 median; "
        "MA/OS8: multiply-adds over dense OS8's.",
        "",
    ]
    config = ["height", "width", "dtype", "batch", "device", "timestamp"]
    targets = []
    for key, group in table.groupby(config, sort=False):
        info = dict(zip(config, key))
        first = group.iloc[0]
        out += [
            f"## {info['batch']}x3x{info['height']}x{info['width']} {info['dtype']}, {info['device']}",
            "",
            f"torch {first['torch_version']}, adatriton {first['adatriton_version']}; {int(first['warmup'])} warm-up "
            f"+ {int(first['iters'])} timed calls, interleaved; run {info['timestamp']}.",
            "",
            "| runtime | dense OS8 ms | adaptive 8->32 ms | level fractions | t/OS8 | MA/OS8 | (t/OS8) / (MA/OS8) |",
            "|---|---|---|---|---|---|---|",
        ]
        for scenario, rows in group.groupby("scenario", sort=False):
            by = rows.set_index("output_stride")
            if not {"8", CONVERSION} <= set(by.index):
                continue
            d, a = by.loc["8"], by.loc[CONVERSION]
            t_ratio = a["time_median_ms"] / d["time_median_ms"]
            ma_ratio = a["macs_total"] / d["macs_total"]
            out.append(
                f"| {scenario} | {d['time_median_ms']:.1f} ({d['time_min_ms']:.1f}–{d['time_max_ms']:.1f}) | "
                f"{a['time_median_ms']:.1f} ({a['time_min_ms']:.1f}–{a['time_max_ms']:.1f}) | {a['level_fractions']} "
                f"| {t_ratio:.3f} | {ma_ratio:.3f} | {t_ratio / ma_ratio:.2f} |"
            )
            if scenario == "onnxruntime":
                timings = [(r["time_min_ms"], r["time_max_ms"], int(r["iters"])) for r in (d, a)]
                targets.append(
                    f"- ONNX Runtime adaptive vs dense OS8, {info['height']}x{info['width']}: t/OS8 {t_ratio:.3f} <= "
                    f"{TARGET} x MA/OS8 = {TARGET * ma_ratio:.3f}: {verdict(t_ratio, TARGET * ma_ratio, *timings)}"
                )
        out.append("")
    out += closing_sections(targets, notes)
    return "\n".join(out)


SUITE = Suite(
    name="deploy",
    description="ResNet-50 dense OS8 vs adaptive 8->32 (edge map, level-0 fraction 0.3) in ONNX Runtime and eager, "
    "1 thread, interleaved: t/OS8 beside MA/OS8 (needs the deploy extra)",
    run=run,
    full={"size": (256, 512), "warmup": 2, "iters": 10, "fractions": (0.3,)},
    quick={"size": (256, 512), "warmup": 1, "iters": 5, "fractions": (0.3,)},
    summary=summarize,
    plot=None,
)
