"""CSV merging (a re-run replaces the rows with the same key), the markdown summary with each row's median time, its
spread and its time relative to dense OS8 / OS16 of the same run, and the plots (runtime with min–max error bars and
MAs against the level map; grouped bars for whole models)."""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd

from ._schema import COLUMNS, KEY, Row

__all__ = [
    "BACKEND_COLORS",
    "COMPASS",
    "CPU_MA_SLACK",
    "GROUP",
    "MIN_CALLS",
    "NOISY_SPREAD",
    "NOISY_VERDICT",
    "REALISED_MIN_SAVING",
    "closing_sections",
    "merge_csv",
    "noise",
    "plot",
    "plot_bars",
    "plot_lines",
    "ratios",
    "read_csv",
    "summary",
    "target",
    "verdict",
    "write_reports",
    "x_axis",
]

_TYPES = {f.name: f.type for f in fields(Row)}
_DTYPES = {name: {"str": str, "int": "int64", "float": "float64", "bool": bool}[t] for name, t in _TYPES.items()}
_FLOATS = [name for name, t in _TYPES.items() if t == "float"]

#: Rows compared with each other: the same model and configuration, measured in the same run.
GROUP = (
    "suite",
    "model",
    "scope",
    "dtype",
    "batch",
    "height",
    "width",
    "channels_last",
    "compiled",
    "device",
    "timestamp",
)
#: The issues' targets for the 8->32 model at level-0 fraction 0.3, time over dense OS8, on a GPU: (device kind,
#: dtype) -> at most this ratio.
COMPASS = {("cuda", "float16"): 0.55}
#: On the CPU (fp32) the convs run at the dense network's multiply-add rate at best, so MA/OS8 is the floor of t/OS8
#: and the target is relative to it: t/OS8 <= CPU_MA_SLACK x MA/OS8 (0.60 for the synthetic map at 0.3, MA/OS8 =
#: 0.459, at 256x512 as at 1024x2048). A fixed number below the floor (the old 0.40) could never be met.
CPU_MA_SLACK = 1.3
#: A timing is ``noisy`` (:func:`noise`) when max/min of its timed calls exceeds this (one call took more than 25%
#: longer than another: the machine was busy, and a ratio of two such timings can be off by as much) ...
NOISY_SPREAD = 1.25
#: ... or when fewer calls than this were timed.
MIN_CALLS = 5
#: What a target line says instead of a verdict when a timing it divides is noisy: no verdict from unusable timings.
NOISY_VERDICT = "noisy: rerun on an idle machine"
#: ``realised`` is shown only where the MAs save more than this fraction of the reference's.
REALISED_MIN_SAVING = 0.05


def read_csv(path: str | Path) -> pd.DataFrame:
    """A suite's CSV with the schema's dtypes (empty strings stay strings; an empty float cell is NaN)."""
    return pd.read_csv(
        path, dtype=_DTYPES, keep_default_na=False, na_values={name: ["", "nan", "NaN"] for name in _FLOATS}
    )


def _frame(rows: Sequence[Row]) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in rows], columns=list(COLUMNS)).astype(_DTYPES)


def merge_csv(rows: Sequence[Row], path: str | Path) -> pd.DataFrame:
    """Merge ``rows`` into the CSV at ``path`` (created with its folder if missing): a row whose :data:`KEY`
    matches an existing one replaces it. A file with other columns (an older schema) is moved aside to
    ``<name>.old.csv`` with a warning. The file is replaced atomically.

    Returns:
        The table written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = _frame(rows)
    if path.exists():
        try:
            old = read_csv(path)
        except (ValueError, KeyError) as err:  # wrong columns or unparsable cells
            old, reason = None, str(err)
        else:
            reason = "" if tuple(old.columns) == COLUMNS else f"columns {list(old.columns)}"
        if reason:
            aside = path.with_suffix(".old.csv")
            warnings.warn(f"{path} has another schema ({reason[:200]}); moved to {aside}", UserWarning, stacklevel=2)
            os.replace(path, aside)
        elif len(old):
            table = pd.concat([old, table], ignore_index=True)
    table = table.drop_duplicates(subset=list(KEY), keep="last").reset_index(drop=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return table


def _noise_reasons(time_min: float, time_max: float, calls: int) -> list[str]:
    reasons = []
    if calls < MIN_CALLS:
        reasons.append(f"{calls} timed calls < {MIN_CALLS}")
    if time_min > 0 and time_max / time_min > NOISY_SPREAD:
        reasons.append(f"max/min {time_max / time_min:.2f} > {NOISY_SPREAD}")
    return reasons


def noise(time_min: float, time_max: float, calls: int) -> str:
    """Why a timing is too noisy to judge, or ``""``: max/min of the timed calls above :data:`NOISY_SPREAD`, or
    fewer than :data:`MIN_CALLS` timed calls.

    Returns:
        e.g. ``"noisy: max/min 1.31 > 1.25"``, ``"noisy: 3 timed calls < 5"``, or ``""``.
    """
    reasons = _noise_reasons(time_min, time_max, calls)
    return "noisy: " + ", ".join(reasons) if reasons else ""


def verdict(ratio: float, target: float, *timings: tuple[float, float, int]) -> str:
    """``"met"`` / ``"not met"`` for ``ratio <= target``; when any of the ``timings`` (``(min, max, calls)`` of the
    rows the ratio divides) is noisy (:func:`noise`) no verdict but :data:`NOISY_VERDICT` with the reasons, e.g.
    ``"noisy: rerun on an idle machine (max/min 1.40 > 1.25)"``."""
    reasons = list(dict.fromkeys(r for t in timings for r in _noise_reasons(*t)))
    if reasons:
        return f"{NOISY_VERDICT} ({', '.join(reasons)})"
    return "met" if ratio <= target else "not met"


def target(device_kind: str, dtype: str, ma_os8: float) -> tuple[float, str] | None:
    """The target on t/OS8 of the 8->32 row at level-0 fraction 0.3, and how it is written, or None (no target for
    this device and dtype): :data:`COMPASS` on a GPU; on the CPU in fp32 :data:`CPU_MA_SLACK` x MA/OS8, the
    multiply-add ratio being the floor there.

    Args:
        device_kind: ``"cpu"`` or ``"cuda"``.
        dtype: the row's dtype (``"float32"``, ``"float16"``, ...).
        ma_os8: the row's MA/OS8.
    """
    if (device_kind, dtype) == ("cpu", "float32"):
        if math.isnan(ma_os8):
            return None
        value = CPU_MA_SLACK * ma_os8
        return value, f"target <= {CPU_MA_SLACK} x MA/OS8 = {value:.3f}; floor MA/OS8 = {ma_os8:.3f}"
    value = COMPASS.get((device_kind, dtype))
    if value is None:
        return None
    return value, f"target <= {value}, MA/OS8 = {ma_os8:.3f}"


def ratios(table: pd.DataFrame, references: tuple[str, str] = ("8", "16")) -> pd.DataFrame:
    """Per row, against the dense rows of its :data:`GROUP` at the ``references`` output strides (the finest
    dense network first: OS8 and OS16 for the ResNet suites): ``t_os8`` = time / reference time (medians),
    ``t_os16`` against the second, ``t_bk_os8`` = (time + bookkeeping) / reference time, ``ma_os8`` = MAs /
    reference MAs (backbone MAs when the backbone is what is timed), ``realised`` =
    ``(1 - t_os8) / (1 - ma_os8)``, the fraction of the MA savings realised in time (NaN unless the MAs save more than
    :data:`REALISED_MIN_SAVING`: below that the quotient only amplifies noise), ``tflops`` = 2 x MAs / median time,
    and ``ref_min`` / ``ref_max`` / ``ref_iters`` of the first reference (for :func:`verdict`)."""
    out = table.copy()
    macs = out["macs_backbone"].where(out["scope"] == "backbone", out["macs_total"]).astype("float64")
    out["macs_timed"] = macs
    for col in ("t_os8", "t_os16", "t_bk_os8", "ma_os8", "realised", "ref_min", "ref_max", "ref_iters"):
        out[col] = math.nan
    config = [c for c in GROUP if c != "timestamp"]
    # MAs do not depend on the run: the OS8 count of the same configuration from any run.
    for _, idx in out.groupby(config, sort=False).groups.items():
        group = out.loc[idx]
        dense = group[(group["output_stride"] == references[0]) & (group["mask_source"] == "none")]
        if len(dense):
            out.loc[idx, "ma_os8"] = group["macs_timed"] / dense.iloc[0]["macs_timed"]
    # Times only against the references of the same run; a row whose run's references were replaced by a later
    # run keeps its own speedup column (measured in its run) for t/OS8.
    out["t_os8"] = 1 / out["speedup_vs_os8"]
    for _, idx in out.groupby(list(GROUP), sort=False).groups.items():
        group = out.loc[idx]
        refs = []
        for stride in references:
            dense = group[(group["output_stride"] == stride) & (group["mask_source"] == "none")]
            refs.append(dense.iloc[0] if len(dense) else None)
        if refs[0] is not None:
            out.loc[idx, "t_os8"] = group["time_median_ms"] / refs[0]["time_median_ms"]
            out.loc[idx, "ref_min"] = refs[0]["time_min_ms"]
            out.loc[idx, "ref_max"] = refs[0]["time_max_ms"]
            out.loc[idx, "ref_iters"] = refs[0]["iters"]
        out.loc[idx, "t_bk_os8"] = out.loc[idx, "t_os8"] * (1 + group["bookkeeping_ms"] / group["time_median_ms"])
        if refs[1] is not None:
            out.loc[idx, "t_os16"] = group["time_median_ms"] / refs[1]["time_median_ms"]
    saving = 1 - out["ma_os8"]
    out["realised"] = ((1 - out["t_os8"]) / saving).where(saving > REALISED_MIN_SAVING)
    out["tflops"] = 2 * out["macs_timed"] / (out["time_median_ms"] * 1e-3) / 1e12
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' ``to_markdown`` needs the optional ``tabulate``)."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)


def _with_spread(group: pd.DataFrame) -> pd.Series:
    """``"12.3 (11.9–13.0)"``: median and min–max of the timed calls, ``noisy`` appended where :func:`noise`."""
    cells = []
    for r in group.itertuples(index=False):
        text = f"{_fmt(float(r.time_median_ms))} ({_fmt(float(r.time_min_ms))}–{_fmt(float(r.time_max_ms))})"
        cells.append(text + (" noisy" if noise(r.time_min_ms, r.time_max_ms, int(r.iters)) else ""))
    return pd.Series(cells, index=group.index)


def _device_kind(device: str) -> str:
    return "cpu" if "threads)" in device else "cuda"


def _scenario(group: pd.DataFrame) -> pd.Series:
    return group["scenario"].fillna("").astype(str) if "scenario" in group else pd.Series("", index=group.index)


def summary(
    table: pd.DataFrame,
    suite: str,
    csv_path: Path,
    notes: Sequence[str] = (),
    references: tuple[str, str] = ("8", "16"),
) -> str:
    """The markdown summary of a suite's CSV: per model and configuration one table with each row's median time
    and its min–max, the time relative to dense OS8 / OS16 of the same run and the realised fraction of the MA
    savings, then the targets (:func:`target`; :func:`verdict`: none from noisy timings) and the notes of the last
    run."""
    t = ratios(table, references)
    a, b = (f"OS{r}" for r in references)
    out = [
        f"# `{suite}` benchmark summary",
        "",
        f"From `{csv_path.name}` ({len(t)} rows). `median ms (min–max)`: median and range of the timed calls, "
        f"`noisy` where max/min > {NOISY_SPREAD} or fewer than {MIN_CALLS} calls were timed; "
        f"`t/{a}`, `t/{b}`: median time over the dense {a} / {b} network (layers: the dense conv) of the same run; "
        f"`(t+bk)/{a}` adds the bookkeeping (level map and index tables, timed apart); `MA/{a}`: multiply-adds "
        f"over {a}'s; `realised`: `(1 - t/{a}) / (1 - MA/{a})`, the fraction of the MA savings realised in time, "
        f"shown only where the MAs save more than {REALISED_MIN_SAVING:.0%}; `TFLOP/s`: 2 x MAs / median time.",
        "",
    ]
    for key, group in t.groupby(list(GROUP), sort=False):
        info = dict(zip(GROUP, key))
        out.append(
            f"## {info['model']} ({info['scope']}), {info['batch']}x3x{info['height']}x{info['width']} "
            f"{info['dtype']}{', channels-last' if info['channels_last'] else ''}"
            f"{', compiled' if info['compiled'] else ''}"
        )
        first = group.iloc[0]
        out += [
            "",
            f"{info['device']}; torch {first['torch_version']}, triton {first['triton_version'] or '-'}, adatriton "
            f"{first['adatriton_version']}; {int(first['warmup'])} warm-up + {int(first['iters'])} timed calls; run "
            f"{info['timestamp']}.",
            "",
        ]
        # A source whose rows differ in mask_param (the keypoints suite's dilation triplets) names it as well.
        varies = group.groupby("mask_source")["mask_param"].transform("nunique") > 1
        shown = pd.DataFrame(
            {
                "OS": group["output_stride"],
                "mask": group["mask_source"].where(~varies, group["mask_source"] + " " + group["mask_param"]),
                "f0 target": group["fraction_target"],
                "f0": group["fraction_level0"],
                # a scenario (e.g. the layers suite's channels_last_weights row) tells rows of one backend apart
                "backend": group["backend"].where(_scenario(group) == "", group["backend"] + " " + _scenario(group)),
                "dispatch": group["dispatch"],
                "median ms (min–max)": _with_spread(group),
                f"t/{a}": group["t_os8"],
                f"t/{b}": group["t_os16"],
                f"(t+bk)/{a}": group["t_bk_os8"],
                "MAs": group["macs_timed"],
                f"MA/{a}": group["ma_os8"],
                "realised": group["realised"],
                "TFLOP/s": group["tflops"],
                "bk ms": group["bookkeeping_ms"],
                "peak MB": group["peak_memory_mb"],
            }
        )
        out += [_markdown(shown), ""]
    out += closing_sections(_compass(t), notes)
    return "\n".join(out)


def closing_sections(targets: Sequence[str], notes: Sequence[str]) -> list[str]:
    """The markdown lines that end every suite's summary: "Targets" (lines given whole) and "Notes (last run)"
    (one bullet per note), each left out when empty."""
    out = []
    if targets:
        out += ["## Targets", "", *targets, ""]
    if notes:
        out += ["## Notes (last run)", "", *[f"- {n}" for n in notes], ""]
    return out


def _compass(t: pd.DataFrame) -> list[str]:
    lines = []
    hits = t[
        (t["output_stride"] == "8->32")
        & ((t["fraction_target"] - 0.3).abs() < 1e-9)
        & (t["backend"] == "auto")
        & t["scope"].isin(["backbone", "model"])
    ]
    for _, r in hits.iterrows():
        goal = target(_device_kind(r["device"]), r["dtype"], r["ma_os8"])
        if goal is None or math.isnan(r["t_os8"]):
            continue
        timings = [(r["time_min_ms"], r["time_max_ms"], int(r["iters"]))]
        if not math.isnan(r["ref_iters"]):
            timings.append((r["ref_min"], r["ref_max"], int(r["ref_iters"])))
        lines.append(
            f"- {r['model']} ({r['scope']}), 8->32 at level-0 fraction 0.3 ({r['mask_source']} mask, dispatcher), "
            f"{r['height']}x{r['width']} {r['dtype']} on {r['device']}: t/OS8 = {r['t_os8']:.3f} "
            f"({goal[1]}): {verdict(r['t_os8'], goal[0], *timings)}"
        )
    return lines


# ---------------------------------------------------------------------------------------------------- plots
#: One colour per backend in every plot (dense networks: the references' greys, never these).
BACKEND_COLORS = {"auto": "C0", "torch": "C1", "dense": "C2", "triton": "C3"}
_EXTRA_COLORS = ("C4", "C5", "C6", "C8", "C9")
#: One line style (and marker) per conversion, in the order of first appearance.
_CONVERSION_STYLES = (("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"))
#: Dense references, finest first: colour and line style each.
_REFERENCE_STYLES = (
    ("black", (0, (6, 2))),
    ("0.35", (0, (2, 2))),
    ("0.55", (0, (6, 2, 1, 2))),
    ("0.7", (0, (1, 1))),
)

#: Bars of the dense references, finest first (light enough for the black error bars).
_BAR_GREYS = ("0.5", "0.7", "0.85", "0.93")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:40]


def _backend_color(backend: str, seen: dict[str, str]) -> str:
    if backend in BACKEND_COLORS:
        return BACKEND_COLORS[backend]
    return seen.setdefault(backend, _EXTRA_COLORS[len(seen) % len(_EXTRA_COLORS)])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _stride_order(stride: str) -> tuple[int, str]:
    return (int(stride), stride) if stride.isdigit() else (10**9, stride)


def _title(suite: str, info: dict, what: str) -> str:
    return (
        f"{suite}: {what}, {info['batch']}x3x{info['height']}x{info['width']} {info['dtype']}"
        f"{', compiled' if info['compiled'] else ''}, {info['device']}"
    )


def x_axis(rows: pd.DataFrame) -> tuple[pd.Series, list[str] | None]:
    """The x of each adaptive row in :func:`plot_lines`: the realised level-0 fraction, or, where the maps ask for
    no fraction (every ``fraction_target < 0``: the keypoint dilation triplets), the position of the row's
    ``mask_param`` among the maps ordered by MAs (then by name).

    Returns:
        ``(x per row, tick labels)``; the labels are None for the numeric axis. ``rows`` needs ``macs_timed``
        (:func:`ratios`).
    """
    if not (rows["fraction_target"] < 0).all():
        return rows["fraction_level0"], None
    order = rows.drop_duplicates("mask_param").sort_values(["macs_timed", "mask_param"], kind="stable")
    labels = list(order["mask_param"])
    return rows["mask_param"].map({p: i for i, p in enumerate(labels)}), labels


def plot_lines(table: pd.DataFrame, suite: str, out_dir: Path, references: tuple[str, str] = ("8", "16")) -> list[Path]:
    """Median time (min–max error bars) and multiply-adds against the level map, per model, configuration and
    mask source: one colour per backend and one line style per conversion in both panels, the dense networks as
    horizontal references (each its own grey and dash pattern, the time's min–max as a band), one legend outside
    the axes. The x axis is the realised level-0 fraction, or, where the maps ask for no fraction
    (``fraction_target < 0``: the keypoint dilation triplets), one labelled category per ``mask_param``, ordered by
    MAs. Groups with fewer than two level maps are not plotted.

    Returns:
        The PNG files written (``<suite>_<model>_<mask>_<N>x<H>x<W>_<dtype>_<device>.png``).
    """
    from matplotlib.lines import Line2D

    plt = _pyplot()
    t = ratios(table, references)
    paths = []
    for key, group in t.groupby(list(GROUP), sort=False):
        info = dict(zip(GROUP, key))
        dense = group[group["mask_source"] == "none"]
        dense = dense.iloc[sorted(range(len(dense)), key=lambda i: _stride_order(dense.iloc[i]["output_stride"]))]
        for mask, rows in group[group["mask_source"] != "none"].groupby("mask_source", sort=False):
            maps = ["mask_param", "fraction_target"]  # what names a level map (keypoints: the triplet)
            if len(rows[maps].drop_duplicates()) < 2:
                continue
            x, labels = x_axis(rows)
            rows = rows.assign(x=x)
            categorical = labels is not None
            conversions = list(dict.fromkeys(rows["output_stride"]))
            style = {c: _CONVERSION_STYLES[i % len(_CONVERSION_STYLES)] for i, c in enumerate(conversions)}
            extra: dict[str, str] = {}
            fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.6))
            backends = []
            for (stride, backend), line in rows.groupby(["output_stride", "backend"], sort=False):
                line = line.sort_values("x")
                color = _backend_color(backend, extra)
                backends.append((backend, color))
                ls, marker = style[stride]
                yerr = [line["time_median_ms"] - line["time_min_ms"], line["time_max_ms"] - line["time_median_ms"]]
                ax_t.errorbar(
                    line["x"], line["time_median_ms"], yerr=yerr, color=color, linestyle=ls, marker=marker,
                    markersize=4, capsize=3, linewidth=1.4,
                )  # fmt: skip
            for stride, line in rows.groupby("output_stride", sort=False):
                line = line.drop_duplicates(maps).sort_values("x")
                ls, marker = style[stride]
                ax_m.plot(line["x"], line["macs_timed"], color="0.2", linestyle=ls, marker=marker, markersize=4)
            ref_handles = []
            for i, (_, ref) in enumerate(dense.iterrows()):
                color, dashes = _REFERENCE_STYLES[min(i, len(_REFERENCE_STYLES) - 1)]
                ax_t.axhline(ref["time_median_ms"], color=color, linestyle=dashes, linewidth=1.3)
                ax_t.axhspan(ref["time_min_ms"], ref["time_max_ms"], color=color, alpha=0.12, linewidth=0)
                ax_m.axhline(ref["macs_timed"], color=color, linestyle=dashes, linewidth=1.3)
                label = f"dense OS{ref['output_stride']} ({ref['backend']}; band: min–max)"
                ref_handles.append(Line2D([], [], color=color, linestyle=dashes, linewidth=1.3, label=label))
            xlabel = "keypoint dilation triplet d1/d2/d4 (ordered by MAs)" if categorical else "level-0 area fraction"
            ax_t.set(xlabel=xlabel, ylabel="median time (ms), bars: min–max", ylim=(0, None))
            ax_m.set(xlabel=xlabel, ylabel=f"multiply-adds ({info['scope']})", ylim=(0, None))
            for ax in (ax_t, ax_m):
                ax.grid(alpha=0.3)
                if categorical:
                    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
            handles = [Line2D([], [], color=c, linewidth=2.5, label=f"backend {b}") for b, c in dict(backends).items()]
            handles += [
                Line2D([], [], color="0.2", linestyle=ls, marker=m, label=f"{c} (MAs: any backend)")
                for c, (ls, m) in style.items()
            ]
            fig.legend(handles=handles + ref_handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
            fig.suptitle(_title(suite, info, f"{info['model']} ({info['scope']}), {mask} masks"), fontsize=9)
            fig.tight_layout()
            name = (
                f"{suite}_{_slug(info['model'])}_{mask}_{info['batch']}x{info['height']}x{info['width']}_"
                f"{info['dtype']}_{_slug(info['device'])}.png"
            )
            path = out_dir / name
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            paths.append(path)
    return paths


def plot_bars(table: pd.DataFrame, suite: str, out_dir: Path, references: tuple[str, str] = ("8", "16")) -> list[Path]:
    """A grouped bar chart per configuration: one group of bars per model, one bar per network (dense references
    in their greys and hatches, adaptive rows in their backend's colour, hatched per conversion), the median
    time with min–max error bars, and t/OS8 written above each adaptive bar; the legend outside the axes.

    Returns:
        The PNG files written (``<suite>_<N>x<H>x<W>_<dtype>_<device>.png``).
    """
    import numpy as np

    plt = _pyplot()
    t = ratios(table, references)
    config = [c for c in GROUP if c not in ("model", "scope")]
    hatches = ("", "//", "..", "xx")
    paths = []
    for key, group in t.groupby(config, sort=False):
        info = dict(zip(config, key))
        models = list(dict.fromkeys(group["model"]))
        series_cols = ["output_stride", "backend", "mask_source", "fraction_target"]
        series = group[series_cols].drop_duplicates()
        dense = series[series["mask_source"] == "none"]
        dense = dense.iloc[sorted(range(len(dense)), key=lambda i: _stride_order(dense.iloc[i]["output_stride"]))]
        series = pd.concat([dense, series[series["mask_source"] != "none"]])
        conversions = list(dict.fromkeys(series.loc[series["mask_source"] != "none", "output_stride"]))
        width = 0.8 / max(1, len(series))
        fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(models) * max(1, len(series)) / 3), 4.6))
        extra: dict[str, str] = {}
        for j, (_, s) in enumerate(series.iterrows()):
            rows = group.merge(s.to_frame().T.astype(series.dtypes.to_dict()), on=series_cols)
            rows = rows.set_index("model").reindex(models)
            x = np.arange(len(models)) + (j - (len(series) - 1) / 2) * width
            if s["mask_source"] == "none":
                i = list(dense["output_stride"]).index(s["output_stride"])
                color = _BAR_GREYS[min(i, len(_BAR_GREYS) - 1)]
                hatch, label = "", f"dense OS{s['output_stride']} ({s['backend']})"
                edge = "black"
            else:
                color = _backend_color(s["backend"], extra)
                hatch = hatches[conversions.index(s["output_stride"]) % len(hatches)]
                label = f"{s['output_stride']} {s['backend']}, f0 {s['fraction_target']:g} ({s['mask_source']})"
                edge = "0.2"
            med = rows["time_median_ms"].to_numpy(dtype=float)
            yerr = [med - rows["time_min_ms"].to_numpy(dtype=float), rows["time_max_ms"].to_numpy(dtype=float) - med]
            ax.bar(
                x, med, width, yerr=yerr, capsize=3, color=color, hatch=hatch, edgecolor=edge, ecolor="black",
                label=label,
            )  # fmt: skip
            if s["mask_source"] != "none":
                top = rows["time_max_ms"].to_numpy(dtype=float)
                for xi, yi, r in zip(x, top, rows["t_os8"].to_numpy(dtype=float)):
                    if not math.isnan(r):
                        ax.annotate(f"{r:.2f}x", (xi, yi), ha="center", va="bottom", fontsize=7, xytext=(0, 3),
                                    textcoords="offset points")  # fmt: skip
        ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
        ax.set(ylabel="median time (ms), bars: min–max; labels: t/OS8", ylim=(0, None))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
        scope = "/".join(dict.fromkeys(group["scope"]))
        ax.set_title(_title(suite, info, f"{len(models)} models ({scope})"), fontsize=9)
        fig.tight_layout()
        name = f"{suite}_{info['batch']}x{info['height']}x{info['width']}_{info['dtype']}_{_slug(info['device'])}.png"
        path = out_dir / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


#: The default plot of a suite (see :class:`bench.Suite`).
plot = plot_lines


def write_reports(
    rows: Sequence[Row],
    suite: str,
    out_dir: Path,
    notes: Sequence[str] = (),
    references: tuple[str, str] = ("8", "16"),
    summarize: Callable[..., str] = summary,
    plotter: Callable[..., list[Path]] | None = plot_lines,
) -> dict[str, object]:
    """Merge ``rows`` into ``<out>/<suite>.csv``, write ``<out>/<suite>_summary.md`` and the plots (ratios against
    the dense ``references`` output strides, see :func:`ratios`).

    Args:
        rows: the run's rows.
        suite: the suite's name.
        out_dir: output folder.
        notes: lines for the summary's notes.
        references: the dense output strides the ratios divide by.
        summarize: ``summarize(table, suite, csv_path, notes, references) -> markdown``.
        plotter: ``plotter(table, suite, out_dir, references) -> [paths]``, or None for no plots.

    Returns:
        ``{"csv": path, "summary": path, "plots": [paths], "table": merged table}``.
    """
    out_dir = Path(out_dir)
    csv_path = out_dir / f"{suite}.csv"
    table = merge_csv(rows, csv_path)
    text = summarize(table, suite, csv_path, notes, references)
    summary_path = out_dir / f"{suite}_summary.md"
    summary_path.write_text(text)
    plots = []
    if plotter is not None:
        try:
            plots = plotter(table, suite, out_dir, references)
        except ImportError as err:  # matplotlib missing: the CSV and summary still stand
            print(f"[{suite}] no plots: {err}", file=sys.stderr)
    return {"csv": csv_path, "summary": summary_path, "plots": plots, "table": table}
