"""The ``zoo`` suite (bench/zoo.py) on two small models at a tiny size: rows, multiply-adds, the summary's OS8 /
OS32 ratios and a plot. Nothing here asserts a timing."""

import pytest
import torch

from bench import HOST_COLUMNS, Context, Options
from bench._report import read_csv, write_reports
from bench.zoo import SUITE, run

pytest.importorskip("pandas")


@pytest.fixture
def one_thread():
    """Two OpenMP threads on a shared 2-core machine mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_zoo_rows_summary_and_plot(tmp_path, one_thread):
    given = {
        "size": (64, 96),
        "backbones": ("mobilenet_v2", "lraspp_mobilenet_v3_large", "not_a_zoo_model"),
        "fractions": (0.1, 0.3),
        "warmup": 0,
        "iters": 1,
        "progress": False,
    }
    ctx = Context("zoo", Options(quick=True, out=tmp_path).merged(SUITE.quick, given))
    report = write_reports(run(ctx), "zoo", tmp_path, ctx.notes, SUITE.references)
    table = read_csv(report["csv"])
    host_only = list(HOST_COLUMNS)
    assert not table.drop(columns=host_only).isna().any().any() and table[host_only].isna().all().all()
    strides = {m: list(group["output_stride"]) for m, group in table.groupby("model", sort=False)}
    assert strides == {
        "mobilenet_v2": ["8", "32", "8->32", "8->32"],
        "lraspp_mobilenet_v3_large": ["8", "16", "8->16", "8->16"],
    }
    for _, group in table.groupby("model"):
        dense8, coarse, low, high = group["macs_total"].tolist()
        assert coarse < low < high < dense8  # more level-0 area, more multiply-adds; all between the dense networks
        adaptive = group[group["mask_source"] == "synthetic"]
        assert (adaptive["backend"] == "auto").all() and adaptive["dispatch"].str.contains("torch:").all()
        # the depthwise 3x3 convs go dense on the CPU (the grouped crossover is 0.02): every row has some
        assert adaptive["dispatch"].str.startswith("dense:").all()
        assert (adaptive["bookkeeping_ms"] > 0).all()
    assert (table.loc[table["model"] == "lraspp_mobilenet_v3_large", "head"] == "lraspp").all()
    summary = report["summary"].read_text()
    assert "t/OS32" in summary and "not zoo models, skipped: not_a_zoo_model" in summary
    assert len(report["plots"]) == 2
