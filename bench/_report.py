"""CSV merging (a re-run replaces the rows with the same key), the markdown summary with each row's time relative
to dense OS8 / OS16 of the same run, and the plots (runtime and MAs against the level-0 fraction)."""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd

from ._schema import COLUMNS, KEY, Row

__all__ = ["COMPASS", "GROUP", "merge_csv", "plot", "ratios", "read_csv", "summary"]

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
#: The issue's targets for the 8->32 model at level-0 fraction 0.3, time over dense OS8: (device kind, dtype) ->
#: at most this ratio.
COMPASS = {("cuda", "float16"): 0.55, ("cpu", "float32"): 0.6}


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


def ratios(table: pd.DataFrame, references: tuple[str, str] = ("8", "16")) -> pd.DataFrame:
    """Per row, against the dense rows of its :data:`GROUP` at the ``references`` output strides (the finest
    dense network first: OS8 and OS16 for the ResNet suites): ``t_os8`` = time / reference time (medians),
    ``t_os16`` against the second, ``t_bk_os8`` = (time + bookkeeping) / reference time, ``ma_os8`` = MAs /
    reference MAs (backbone MAs when the backbone is what is timed) and ``realised`` = ``(1 - t_os8) / (1 -
    ma_os8)``, the fraction of the MA savings realised in time (NaN where there is no saving)."""
    out = table.copy()
    macs = out["macs_backbone"].where(out["scope"] == "backbone", out["macs_total"]).astype("float64")
    out["macs_timed"] = macs
    for col in ("t_os8", "t_os16", "t_bk_os8", "ma_os8", "realised"):
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
            refs.append(dense.iloc[0]["time_median_ms"] if len(dense) else None)
        if refs[0] is not None:
            out.loc[idx, "t_os8"] = group["time_median_ms"] / refs[0]
        out.loc[idx, "t_bk_os8"] = out.loc[idx, "t_os8"] * (1 + group["bookkeeping_ms"] / group["time_median_ms"])
        if refs[1] is not None:
            out.loc[idx, "t_os16"] = group["time_median_ms"] / refs[1]
    saving = 1 - out["ma_os8"]
    out["realised"] = ((1 - out["t_os8"]) / saving).where(saving > 1e-9)
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


def _device_kind(device: str) -> str:
    return "cpu" if "threads)" in device else "cuda"


def summary(
    table: pd.DataFrame,
    suite: str,
    csv_path: Path,
    notes: Sequence[str] = (),
    references: tuple[str, str] = ("8", "16"),
) -> str:
    """The markdown summary of a suite's CSV: per model and configuration one table with each row's time
    relative to dense OS8 / OS16 of the same run and the realised fraction of the MA savings, then the targets
    (:data:`COMPASS`) and the notes of the last run."""
    t = ratios(table, references)
    a, b = (f"OS{r}" for r in references)
    out = [
        f"# `{suite}` benchmark summary",
        "",
        f"From `{csv_path.name}` ({len(t)} rows). Times are medians; "
        f"`t/{a}`, `t/{b}`: time over the dense {a} / {b} network (layers: the dense conv) of the same run; "
        f"`(t+bk)/{a}` adds the bookkeeping (level map and index tables, timed apart); `MA/{a}`: multiply-adds "
        f"over {a}'s; `realised`: `(1 - t/{a}) / (1 - MA/{a})`, the fraction of the MA savings realised in time.",
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
                "backend": group["backend"],
                "dispatch": group["dispatch"],
                "median ms": group["time_median_ms"],
                "min ms": group["time_min_ms"],
                "max ms": group["time_max_ms"],
                f"t/{a}": group["t_os8"],
                f"t/{b}": group["t_os16"],
                f"(t+bk)/{a}": group["t_bk_os8"],
                "MAs": group["macs_timed"],
                f"MA/{a}": group["ma_os8"],
                "realised": group["realised"],
                "bk ms": group["bookkeeping_ms"],
                "peak MB": group["peak_memory_mb"],
            }
        )
        out += [_markdown(shown), ""]
    compass = _compass(t)
    if compass:
        out += ["## Targets", "", *compass, ""]
    if notes:
        out += ["## Notes (last run)", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(out)


def _compass(t: pd.DataFrame) -> list[str]:
    lines = []
    hits = t[
        (t["output_stride"] == "8->32")
        & ((t["fraction_target"] - 0.3).abs() < 1e-9)
        & (t["backend"] == "auto")
        & t["scope"].isin(["backbone", "model"])
    ]
    for _, r in hits.iterrows():
        target = COMPASS.get((_device_kind(r["device"]), r["dtype"]))
        if target is None or math.isnan(r["t_os8"]):
            continue
        verdict = "met" if r["t_os8"] <= target else "not met"
        lines.append(
            f"- {r['model']} ({r['scope']}), 8->32 at level-0 fraction 0.3 ({r['mask_source']} mask, dispatcher), "
            f"{r['height']}x{r['width']} {r['dtype']} on {r['device']}: t/OS8 = {r['t_os8']:.3f} "
            f"(target <= {target}): {verdict}"
        )
    return lines


_COLORS = {"auto": "C0", "torch": "C1", "dense": "C2", "triton": "C3"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:40]


def plot(table: pd.DataFrame, suite: str, out_dir: Path, references: tuple[str, str] = ("8", "16")) -> list[Path]:
    """Runtime and MAs against the level-0 fraction, per model, configuration and mask source: one line per
    output stride and backend, the dense OS8 / OS16 rows as horizontal references. Groups with fewer than two
    level maps (``mask_param`` and fraction target) are not plotted.

    Returns:
        The PNG files written (``<suite>_<model>_<mask>_<N>x<H>x<W>_<dtype>_<device>.png``).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    t = ratios(table, references)
    paths = []
    for key, group in t.groupby(list(GROUP), sort=False):
        info = dict(zip(GROUP, key))
        dense = group[group["mask_source"] == "none"]
        for mask, rows in group[group["mask_source"] != "none"].groupby("mask_source", sort=False):
            maps = ["mask_param", "fraction_target"]  # what names a level map (keypoints: the triplet)
            if len(rows[maps].drop_duplicates()) < 2:
                continue
            fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
            for (stride, backend), line in rows.groupby(["output_stride", "backend"], sort=False):
                line = line.sort_values("fraction_level0")
                style = "-" if stride == "8->32" else "--"  # colour: backend, line style: conversion
                ax_t.plot(
                    line["fraction_level0"],
                    line["time_median_ms"],
                    style,
                    color=_COLORS.get(backend, "C4"),
                    marker="o",
                    label=f"{stride} {backend}",
                )
            for stride, line in rows.groupby("output_stride", sort=False):
                line = line.drop_duplicates(maps).sort_values("fraction_level0")
                ax_m.plot(
                    line["fraction_level0"],
                    line["macs_timed"],
                    "-" if stride == "8->32" else "--",
                    marker="o",
                    label=stride,
                )
            for _, ref in dense.iterrows():
                color = "black" if ref["output_stride"] == references[0] else "grey"
                label = f"dense OS{ref['output_stride']}"
                ax_t.axhline(ref["time_median_ms"], color=color, linestyle=":", label=label)
                ax_m.axhline(ref["macs_timed"], color=color, linestyle=":", label=label)
            ax_t.set(xlabel="level-0 area fraction", ylabel="median time (ms)", ylim=(0, None))
            ax_m.set(xlabel="level-0 area fraction", ylabel=f"multiply-adds ({info['scope']})", ylim=(0, None))
            for ax in (ax_t, ax_m):
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            fig.suptitle(
                f"{suite}: {info['model']} ({info['scope']}), {mask} masks, {info['batch']}x3x{info['height']}x"
                f"{info['width']} {info['dtype']}, {info['device']}",
                fontsize=9,
            )
            fig.tight_layout()
            name = (
                f"{suite}_{_slug(info['model'])}_{mask}_{info['batch']}x{info['height']}x{info['width']}_"
                f"{info['dtype']}_{_slug(info['device'])}.png"
            )
            path = out_dir / name
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def write_reports(
    rows: Sequence[Row],
    suite: str,
    out_dir: Path,
    notes: Sequence[str] = (),
    references: tuple[str, str] = ("8", "16"),
) -> dict[str, object]:
    """Merge ``rows`` into ``<out>/<suite>.csv``, write ``<out>/<suite>_summary.md`` and the plots (ratios against
    the dense ``references`` output strides, see :func:`ratios`).

    Returns:
        ``{"csv": path, "summary": path, "plots": [paths], "table": merged table}``.
    """
    out_dir = Path(out_dir)
    csv_path = out_dir / f"{suite}.csv"
    table = merge_csv(rows, csv_path)
    text = summary(table, suite, csv_path, notes, references)
    summary_path = out_dir / f"{suite}_summary.md"
    summary_path.write_text(text)
    try:
        plots = plot(table, suite, out_dir, references)
    except ImportError as err:  # matplotlib missing: the CSV and summary still stand
        print(f"[{suite}] no plots: {err}", file=sys.stderr)
        plots = []
    return {"csv": csv_path, "summary": summary_path, "plots": plots, "table": table}
