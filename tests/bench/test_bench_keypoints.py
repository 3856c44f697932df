"""The keypoints benchmark at tiny sizes: the ``keypoints`` suite of ``python -m bench`` (shared schema, merged
``keypoints.csv``, summary) and the standalone ``python -m bench.keypoints`` (``keypoints_hpatches.csv``)."""

import math

import pandas as pd
import pytest

from adatriton import masks
from bench import COLUMNS as ROW_COLUMNS
from bench import HOST_COLUMNS, KEY, load_suite
from bench.__main__ import build_parser, resolve
from bench.__main__ import main as bench_main
from bench._report import read_csv
from bench.keypoints import COLUMNS, CSV_NAME, main, run_keypoints
from bench.keypoints import build_parser as standalone_parser

TINY = (4, 4, "M", 6, 6, "M", 8, 8, 8, "M", 10, 10, 10)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("keypoints")
    rows = run_keypoints(
        out, quick=True, device="cpu", size=(40, 56), warmup=0, repeats=1, progress=False, mma=True, trunk_config=TINY
    )
    assert len(rows) == 4 + len(masks.PAPER_KEYPOINT_DILATIONS)
    return pd.read_csv(out / CSV_NAME, keep_default_na=False, na_values=[""])


def test_columns_and_rows(table):
    assert tuple(table.columns) == COLUMNS
    assert list(table["kind"]) == ["dense"] * 4 + ["adaptive"] * 10
    assert list(table["output_stride"].astype(str)) == ["1", "2", "4", "8"] + ["1->8"] * 10
    assert list(table["dilations"].fillna(""))[4:] == [
        ",".join("inf" if d == math.inf else str(d) for d in dil) for dil in masks.PAPER_KEYPOINT_DILATIONS
    ]
    assert (table["height"] == 40).all() and (table["width"] == 56).all()


def test_macs(table):
    dense = table[table["kind"] == "dense"].set_index(table["output_stride"].astype(str)[:4])
    adaptive = table[table["kind"] == "adaptive"]
    assert adaptive["macs_per_image"].iloc[0] == dense.loc["8", "macs_per_image"]  # (0, 0, 0): all level 3
    assert adaptive["macs_per_image"].iloc[-1] == dense.loc["1", "macs_per_image"]  # (inf, inf, inf): level 0
    assert list(adaptive["macs_per_image"]) == sorted(adaptive["macs_per_image"])
    assert table["macs_ratio_to_os1"].iloc[0] == 1.0
    fractions = adaptive[["level0", "level1", "level2", "level3"]].sum(axis=1)
    assert fractions.to_numpy() == pytest.approx(1.0)


def test_times_and_accuracy(table):
    for col in ("median_s", "min_s", "max_s", "ratio_to_os1", "sift_s"):
        assert all(math.isfinite(v) and v > 0 for v in table[col]), col
    assert table["ratio_to_os1"].iloc[0] == 1.0
    assert table["levelmap_s"][:4].isna().all() and (table["levelmap_s"][4:] > 0).all()
    mma = table[[f"mma_{t}" for t in range(1, 11)]].to_numpy()
    assert ((mma >= 0) & (mma <= 1)).all()


def test_cli(tmp_path, capsys):
    path = main(["--out", str(tmp_path), "--quick", "--size", "16", "24", "--repeats", "1", "--warmup", "0",
                 "--no-progress", "--device", "cpu"])  # fmt: skip
    assert path == tmp_path / CSV_NAME and path.is_file()
    assert "macs_per_image" in capsys.readouterr().out
    table = pd.read_csv(path)
    assert table["median_s"].notna().all() and table["macs_per_image"].iloc[-1] == table["macs_per_image"].iloc[0]


def test_standalone_options_are_spelt_as_in_bench():
    args = standalone_parser().parse_args(["--dtype", "float16", "--repeats", "2", "--backend", "torch", "--seed", "3"])
    assert (args.dtype, args.iters, args.backends, args.seed) == ("fp16", 2, ["torch"], 3)
    args = standalone_parser().parse_args(["--dtype", "bf16", "--iters", "4", "--backends", "torch", "dense"])
    assert (args.dtype, args.iters, args.backends) == ("bf16", 4, ["torch", "dense"])
    with pytest.raises(SystemExit):
        standalone_parser().parse_args(["--dtype", "float64"])


def test_several_backends_give_one_adaptive_row_each(tmp_path):
    rows = run_keypoints(
        None,
        size=(32, 40),
        warmup=0,
        repeats=1,
        progress=False,
        mma=False,
        trunk_config=TINY,
        backend=["torch", "dense"],
    )
    adaptive = [r for r in rows if r.kind == "adaptive"]
    assert [r.backend for r in adaptive] == ["torch"] * 10 + ["dense"] * 10
    assert [r.macs_per_image for r in adaptive[:10]] == [r.macs_per_image for r in adaptive[10:]]


def test_macs_only(tmp_path):
    rows = run_keypoints(tmp_path, size=(64, 80), timing=False, mma=False, progress=False, trunk_config=TINY)
    assert all(math.isnan(r.median_s) and math.isnan(r.levelmap_s) for r in rows)
    assert rows[4].macs_per_image == rows[3].macs_per_image and rows[-1].macs_per_image == rows[0].macs_per_image


# ---------------------------------------------------------------------------------------------------- the suite
TRIPLETS = ["/".join("inf" if d == math.inf else str(d) for d in dil) for dil in masks.PAPER_KEYPOINT_DILATIONS]
SUITE_ARGS = ["--device", "cpu", "--size", "32", "48", "--warmup", "0", "--iters", "1", "--no-progress"]


def test_suite_options():
    suite = load_suite("keypoints")
    assert suite.references == ("1", "8")
    parser = build_parser()
    quick = resolve(parser.parse_args(["--device", "cpu"]), suite)
    assert quick.size == (96, 128) and (quick.warmup, quick.iters) == (1, 5) and quick.backends == ("auto",)
    full = resolve(parser.parse_args(["--device", "cpu", "--full"]), suite)
    assert full.size == (240, 320) and (full.warmup, full.iters) == (10, 10)


def test_suite_through_the_cli(tmp_path, capsys):
    out = tmp_path / "results"
    first = bench_main(["keypoints", "--out", str(out), *SUITE_ARGS])["keypoints"]
    assert first["csv"] == out / "keypoints.csv" and first["summary"] == out / "keypoints_summary.md"
    t = read_csv(first["csv"])
    assert tuple(t.columns) == ROW_COLUMNS
    assert len(t) == 4 + len(TRIPLETS) and not t.duplicated(subset=list(KEY)).any()
    host_only = list(HOST_COLUMNS)
    floats = [c for c in ROW_COLUMNS if t[c].dtype == "float64" and c not in host_only]
    assert not t[floats].isna().any().any(), t[floats].isna().sum()
    assert t[host_only].isna().all().all() and (t["scenario"] == "").all()
    assert (
        t[["model", "backbone", "head", "scope"]].drop_duplicates().values
        == [["d2net_vgg16", "vgg16", "d2net", "backbone"]]
    ).all()
    assert list(t["output_stride"]) == ["1", "2", "4", "8"] + ["1->8"] * len(TRIPLETS)
    assert list(t["mask_source"]) == ["none"] * 4 + ["keypoints"] * len(TRIPLETS)
    assert list(t["mask_param"]) == [""] * 4 + TRIPLETS
    assert list(t["fraction_target"]) == [1.0, 0.0, 0.0, 0.0] + [-1.0] * len(TRIPLETS)
    assert t["level_fractions"].iloc[3] == "0.000/0.000/0.000/1.000"
    assert (t["macs_total"] == t["macs_backbone"]).all() and (t["batch"] == 1).all()
    dense = t.iloc[:4].set_index("output_stride")
    adaptive = t.iloc[4:]
    assert adaptive["macs_total"].iloc[0] == dense.loc["8", "macs_total"]  # 0/0/0: all level 3
    assert adaptive["macs_total"].iloc[-1] == dense.loc["1", "macs_total"]  # inf/inf/inf: all level 0
    assert adaptive["fraction_level0"].iloc[-1] == 1.0 and adaptive["elements"].iloc[-1] == dense.loc["1", "elements"]
    assert dense.loc["8", "elements"] == 4 * 6
    assert t["speedup_vs_os8"].iloc[0] == 1.0  # relative to dense OS1, the suite's finest reference
    assert (dense["bookkeeping_ms"] == 0).all() and (adaptive["bookkeeping_ms"] > 0).all()
    assert (t["time_median_ms"] > 0).all() and (t["peak_memory_mb"] > 0).all()
    text = first["summary"].read_text()
    assert "t/OS1" in text and "keypoints 25/51/51" in text and "SIFT" in text

    # Rerun: rows with the same key are replaced (marked stale ones disappear), other rows stay.
    stale = t.assign(time_median_ms=-1.0)
    other = t.iloc[:1].assign(height=64)  # another configuration: kept by the merge
    pd.concat([stale, other]).to_csv(first["csv"], index=False)
    second = bench_main(["keypoints", "--out", str(out), *SUITE_ARGS])["keypoints"]
    t2 = read_csv(second["csv"])
    assert len(t2) == len(t) + 1 and not t2.duplicated(subset=list(KEY)).any()
    assert (t2["time_median_ms"] > 0).all() and (t2["height"] == 64).sum() == 1
    assert "keypoints: 14 rows" in capsys.readouterr().out
