"""The bench CLI: every suite's ``--quick`` run through ``bench.__main__.main`` at tiny sizes writes a well-formed
CSV (the schema's columns, no NaN, one row per key), a summary with the ratios, and plots; a re-run replaces rows.
Nothing here asserts a timing."""

import dataclasses
import math

import pandas as pd
import pytest
import torch

# `bench` is a top-level folder (installed as a package too): importable because tests/ is a package whose parent,
# the repository root, pytest puts on sys.path.
from bench import COLUMNS, KEY, Context, Options, Row, load_suite, suite_names
from bench.__main__ import build_parser, main, resolve
from bench._report import merge_csv, ratios, read_csv

TINY = ["--quick", "--no-progress", "--warmup", "0", "--iters", "1"]


def _check_table(path, expected_rows):
    table = read_csv(path)
    assert tuple(table.columns) == COLUMNS
    assert len(table) == expected_rows
    assert not table.isna().any().any(), table.columns[table.isna().any()].tolist()
    assert not table.duplicated(subset=list(KEY)).any()
    assert (table["time_min_ms"] <= table["time_median_ms"]).all()
    assert (table["time_median_ms"] <= table["time_max_ms"]).all()
    assert (table["time_min_ms"] > 0).all() and (table["peak_memory_mb"] > 0).all()
    assert (table["macs_total"] >= table["macs_backbone"]).all() and (table["macs_backbone"] > 0).all()
    assert table["timestamp"].nunique() == 1
    return table


@pytest.fixture(scope="module")
def table2(tmp_path_factory):
    out = tmp_path_factory.mktemp("table2")
    argv = ["table2", *TINY, "--size", "64", "128", "--fractions", "0.3", "--backbones", "resnet50"]
    argv += ["--backends", "auto", "torch", "--out", str(out)]
    return out, main(argv)["table2"]


def test_table2_quick(table2):
    out, report = table2
    # Dense OS16 and OS8, then 2 conversions x 2 mask sources x 1 fraction x 2 backends.
    table = _check_table(out / "table2.csv", 2 + 2 * 2 * 2)
    assert report["csv"] == out / "table2.csv"
    assert set(table["output_stride"]) == {"16", "8", "8->32", "8->16"}
    assert set(table["mask_source"]) == {"none", "synthetic", "edges"}
    assert set(table["backend"]) == {"onednn", "auto", "torch"}
    assert (table["model"] == "deeplabv3_resnet50").all() and (table["scope"] == "backbone").all()
    dense = table[table["mask_source"] == "none"].set_index("output_stride")
    assert dense.loc["8", "speedup_vs_os8"] == 1.0 and dense.loc["8", "fraction_level0"] == 1.0
    assert dense.loc["16", "macs_backbone"] < dense.loc["8", "macs_backbone"]
    adaptive = table[table["mask_source"] != "none"]
    assert ((adaptive["fraction_level0"] - 0.3).abs() <= 0.1).all()
    assert (adaptive["bookkeeping_ms"] > 0).all()
    # Adaptive MAs lie between the dense OS16/OS32 counts and OS8's.
    assert (adaptive["macs_backbone"] < dense.loc["8", "macs_backbone"]).all()
    forced = adaptive[adaptive["backend"] == "torch"]
    assert (forced["dispatch"].str.fullmatch(r"torch:\d+")).all()
    summary = report["summary"].read_text()
    assert "t/OS8" in summary and "realised" in summary
    assert "## Targets" in summary  # the 8->32 row at fraction 0.3 through the dispatcher is checked
    assert report["plots"] == []  # one fraction: nothing to plot against


def test_ratios_in_the_summary_use_the_same_run(table2):
    out, _ = table2
    table = ratios(read_csv(out / "table2.csv"))
    os8 = table[(table["output_stride"] == "8") & (table["mask_source"] == "none")].iloc[0]
    assert table["t_os8"].to_numpy() == pytest.approx(table["time_median_ms"].to_numpy() / os8["time_median_ms"])
    assert table["t_os8"].to_numpy() == pytest.approx(1 / table["speedup_vs_os8"].to_numpy())
    adaptive = table[table["mask_source"] != "none"]
    expected = (1 - adaptive["t_os8"]) / (1 - adaptive["ma_os8"])
    assert adaptive["realised"].to_numpy() == pytest.approx(expected.to_numpy())


def test_models_quick(tmp_path):
    argv = ["models", *TINY, "--size", "64", "64", "--backbones", "resnet50", "--heads", "fcn", "deeplabv3plus"]
    report = main([*argv, "--out", str(tmp_path)])["models"]
    table = _check_table(tmp_path / "models.csv", 2 * 3)
    assert set(table["model"]) == {"fcn_resnet50", "deeplabv3plus_resnet50"}
    assert (table["scope"] == "model").all() and (table["macs_total"] > table["macs_backbone"]).all()
    assert set(table["output_stride"]) == {"16", "8", "8->32"} and set(table["backend"]) == {"onednn", "auto"}
    assert report["summary"].is_file()


def test_layers_quick_plots_and_rerun_replaces_rows(tmp_path):
    argv = ["layers", *TINY, "--size", "64", "128", "--fractions", "0.3", "1.0", "--backends", "torch", "dense"]
    argv += ["--out", str(tmp_path)]
    first = main(argv)["layers"]
    rows = 4 * (1 + 2 * 2)  # 4 shapes: the dense conv, then 2 fractions x 2 backends
    table = _check_table(tmp_path / "layers.csv", rows)
    assert (table["scope"] == "layer").all()
    full = table[table["fraction_target"] == 1.0]
    # At fraction 1 the adaptive layer computes every pixel: the dense conv's MAs.
    assert full.groupby("model")["macs_total"].nunique().eq(1).all()
    assert len(first["plots"]) == 4 and all(p.stat().st_size > 0 for p in first["plots"])
    main(argv)  # same keys: replaced, not duplicated
    again = _check_table(tmp_path / "layers.csv", rows)
    assert again["timestamp"].iloc[0] >= table["timestamp"].iloc[0]
    main([*argv[:-2], "--fractions", "0.5", "--backends", "torch", "--out", str(tmp_path)])  # new keys added
    assert len(read_csv(tmp_path / "layers.csv")) == rows + 4 * 1 + 0  # the dense conv rows are replaced


def _row(**changes) -> Row:
    values = {f.name: 1 for f in dataclasses.fields(Row) if f.type == "int"}
    values |= {f.name: 1.0 for f in dataclasses.fields(Row) if f.type == "float"}
    values |= {f.name: "x" for f in dataclasses.fields(Row) if f.type == "str"}
    values |= {f.name: True for f in dataclasses.fields(Row) if f.type == "bool"}
    values |= {"output_stride": "8", "mask_source": "none", "triton_version": ""}
    return Row(**(values | changes))


def test_merge_replaces_by_key_and_moves_other_schemas_aside(tmp_path):
    path = tmp_path / "s.csv"
    merge_csv([_row(), _row(output_stride="8->32", mask_source="synthetic", fraction_target=0.3)], path)
    table = merge_csv([_row(time_median_ms=5.0)], path)
    assert len(table) == 2 and table.loc[table["output_stride"] == "8", "time_median_ms"].item() == 5.0
    assert read_csv(path)["triton_version"].tolist() == ["", ""]  # empty strings stay strings
    pd.DataFrame({"other": [1]}).to_csv(path, index=False)
    with pytest.warns(UserWarning, match="another schema"):
        table = merge_csv([_row()], path)
    assert len(table) == 1 and (tmp_path / "s.old.csv").is_file()


def test_realised_fraction_of_the_ma_savings():
    os8 = _row(time_median_ms=10.0, macs_backbone=100, scope="backbone")
    os16 = _row(output_stride="16", time_median_ms=4.0, macs_backbone=30, scope="backbone")
    ada = _row(
        output_stride="8->32",
        mask_source="synthetic",
        time_median_ms=6.0,
        macs_backbone=40,
        scope="backbone",
        bookkeeping_ms=1.0,
    )
    t = ratios(pd.DataFrame([dataclasses.asdict(r) for r in (os8, os16, ada)]))
    r = t.iloc[2]
    assert (r["t_os8"], r["t_os16"], r["t_bk_os8"], r["ma_os8"]) == pytest.approx((0.6, 1.5, 0.7, 0.4))
    assert r["realised"] == pytest.approx((1 - 0.6) / (1 - 0.4))
    assert math.isnan(t.iloc[0]["realised"])  # OS8 saves nothing


def test_ratios_against_other_references():
    """A suite whose finest dense network is OS1 (``Suite.references = ("1", "8")``)."""
    rows = [
        _row(output_stride="1", time_median_ms=8.0, macs_backbone=80, scope="backbone"),
        _row(output_stride="8", time_median_ms=2.0, macs_backbone=10, scope="backbone"),
        _row(output_stride="1->8", mask_source="keypoints", time_median_ms=4.0, macs_backbone=40, scope="backbone"),
    ]
    t = ratios(pd.DataFrame([dataclasses.asdict(r) for r in rows]), ("1", "8"))
    assert (t.iloc[2]["t_os8"], t.iloc[2]["t_os16"], t.iloc[2]["ma_os8"]) == pytest.approx((0.5, 2.0, 0.5))


def test_options_quick_on_cpu_full_on_request():
    parser = build_parser()
    suite = load_suite("table2")
    quick = resolve(parser.parse_args(["--device", "cpu"]), suite)
    assert quick.quick and quick.size == (256, 512) and (quick.warmup, quick.iters) == (1, 3)
    assert quick.dtype == torch.float32 and quick.channels_last
    full = resolve(parser.parse_args(["--device", "cpu", "--full"]), suite)
    assert not full.quick and full.size == (1024, 2048) and (full.warmup, full.iters) == (10, 10)
    assert full.fractions == (0.1, 0.2, 0.3, 0.5, 0.7) and full.conversions == ("8->32", "8->16")
    given = resolve(
        parser.parse_args(
            ["--device", "cpu", "--size", "32", "64", "--dtype", "bf16", "--iters", "2", "--no-channels-last"]
        ),
        suite,
    )
    assert given.size == (32, 64) and given.dtype == torch.bfloat16 and given.iters == 2
    assert not given.channels_last and given.warmup == 1


def test_triton_is_dropped_from_the_default_backends_on_the_cpu(capsys):
    ctx = Context("table2", Options(backends=("auto", "triton"), progress=False))
    assert ctx.backends() == ("auto",) and ctx.backends() == ("auto",)
    assert len(ctx.notes) == 1 and "triton skipped" in ctx.notes[0]  # noted once per run
    asked = Context("table2", Options(backends=("triton",), backends_given=True, progress=False))
    assert asked.backends() == ("triton",)  # named on the command line: runs in the interpreter (tests set it)


def test_suite_registry():
    assert {"table2", "models", "layers"} <= set(suite_names())
    assert all(load_suite(name).name == name for name in ("table2", "models", "layers"))
    with pytest.raises(ValueError, match="unknown suite"):
        load_suite("nope")
    with pytest.raises(SystemExit):
        main(["nope"])
