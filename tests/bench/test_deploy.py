"""The ``deploy`` suite: its summary's ratios and target verdict on known rows, and one small run through the CLI
(slow: it exports ResNet-50 twice). Nothing here asserts a measured timing."""

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from bench._schema import Row
from bench.deploy import CONVERSION, TARGET, summarize


def _row(stride: str, scenario: str, median: float, macs: int, spread: float = 1.0) -> Row:
    values = {f.name: 1 for f in dataclasses.fields(Row) if f.type == "int"}
    values |= {f.name: 1.0 for f in dataclasses.fields(Row) if f.type == "float"}
    values |= {f.name: "x" for f in dataclasses.fields(Row) if f.type == "str"}
    values |= {f.name: True for f in dataclasses.fields(Row) if f.type == "bool"}
    return Row(**values | dict(
        suite="deploy", output_stride=stride, scenario=scenario, time_median_ms=median, time_min_ms=median,
        time_max_ms=median * spread, macs_total=macs, iters=5, level_fractions="0.300/0.000/0.700",
    ))  # fmt: skip


def _summary(*rows: Row) -> str:
    return summarize(pd.DataFrame([dataclasses.asdict(r) for r in rows]), "deploy", Path("deploy.csv"))


def test_summary_ratios_and_target():
    rows = [_row("8", "eager", 100.0, 1000), _row(CONVERSION, "eager", 50.0, 400)]
    met = _summary(*rows, _row("8", "onnxruntime", 80.0, 1000), _row(CONVERSION, "onnxruntime", 38.0, 400))
    assert "| eager | 100.0 (100.0–100.0) | 50.0 (50.0–50.0) | 0.300/0.000/0.700 | 0.500 | 0.400 | 1.25 |" in met
    # 38 / 80 = 0.475 <= 1.2 x 0.4 = 0.48
    assert f"t/OS8 0.475 <= {TARGET} x MA/OS8 = 0.480: met" in met
    missed = _summary(*rows, _row("8", "onnxruntime", 80.0, 1000), _row(CONVERSION, "onnxruntime", 39.0, 400))
    assert "t/OS8 0.487 <= 1.2 x MA/OS8 = 0.480: not met" in missed
    noisy = _summary(*rows, _row("8", "onnxruntime", 80.0, 1000, 1.5), _row(CONVERSION, "onnxruntime", 38.0, 400))
    assert "0.480: noisy" in noisy and ": met" not in noisy


@pytest.mark.slow
def test_deploy_suite_through_the_cli(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from bench.__main__ import main
    from bench._report import read_csv

    argv = ["deploy", "--no-progress", "--size", "64", "128", "--warmup", "0", "--iters", "1", "--out", str(tmp_path)]
    report = main(argv)["deploy"]
    t = read_csv(tmp_path / "deploy.csv")
    assert sorted(zip(t["output_stride"], t["scenario"])) == [
        ("8", "eager"), ("8", "onnxruntime"), (CONVERSION, "eager"), (CONVERSION, "onnxruntime"),
    ]  # fmt: skip
    assert (t["time_median_ms"] > 0).all()
    assert (t.loc[t["output_stride"] == "8", "speedup_vs_os8"] == 1.0).all()
    text = report["summary"].read_text()
    assert "| onnxruntime |" in text and "ONNX Runtime adaptive vs dense OS8" in text
