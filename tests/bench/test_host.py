"""The ``host`` suite: what its dispatch mode counts as a device op and as a sync on small known programs, the
launch stubs (shapes, patched everywhere, restored), and one tiny run through the CLI. Nothing here asserts a timing
or today's op counts (the host-path rewrite changes those); only what must hold before and after."""

import math
import statistics
import sys
import types

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models._utils import IntermediateLayerGetter

import adatriton
from adatriton import LevelMap
from bench.__main__ import main
from bench._measure import median_interval
from bench._report import read_csv
from bench.host import (
    SCENARIOS,
    OpCounter,
    graph_adaptive_part,
    host_time_verdict,
    patch_references,
    restore_references,
    stubbed_launches,
)


def _count(fn):
    counter = OpCounter()
    counter.active = True
    with torch.inference_mode(), counter.watch():
        fn()
    return counter.counts


X = torch.arange(24.0).reshape(4, 6)


@pytest.mark.parametrize(
    ("name", "fn", "ops", "syncs"),
    [
        ("views", lambda: X.view(6, 4).permute(1, 0)[1:, 2].unsqueeze(0).expand(3, 3).t().detach(), 0, {}),
        ("contiguous of a contiguous tensor", lambda: X.contiguous().reshape(24), 0, {}),
        ("contiguous copy", lambda: X.t().contiguous(), 1, {}),
        ("reshape that copies", lambda: X.t().reshape(24), 1, {}),
        ("allocation", lambda: torch.empty(3, 4), 0, {}),
        ("arithmetic", lambda: (X * 2 + 1).relu_(), 3, {}),
        ("factory", lambda: torch.zeros(3), 1, {}),
        ("int of a tensor", lambda: int(X.sum()), 1, {"any": 1}),
        ("bool of a tensor", lambda: bool((X > 3).any()), 2, {"any": 1}),
        ("tolist", lambda: X[0].tolist(), 0, {"tolist": 1}),
        ("cpu", lambda: X.cpu(), 0, {"cpu": 1}),
        ("nonzero", lambda: X.nonzero(), 1, {"nonzero": 1}),
        ("boolean mask", lambda: X[X > 3], 2, {"index(bool mask)": 1}),
        ("integer index", lambda: X[torch.tensor([0, 2])], 1, {}),
        ("masked fill", lambda: X.clone().masked_fill_(X > 3, 0), 3, {}),
        ("repeat_interleave", lambda: torch.repeat_interleave(torch.tensor([1, 2])), 1, {"any": 1}),
        ("unique", lambda: torch.unique(torch.tensor([1, 1, 2])), 1, {"any": 1}),
    ],
)
def test_device_ops_and_syncs(name, fn, ops, syncs):
    counts = _count(fn)
    assert sum(counts.device_ops.values()) == ops, (name, counts.device_ops)
    if syncs.get("any"):
        assert counts.total_syncs == syncs["any"], (name, counts.syncs)
    else:
        assert dict(counts.syncs) == syncs, (name, counts.syncs)


def test_nothing_is_counted_outside_the_window():
    counter = OpCounter()
    with torch.inference_mode(), counter.watch():
        int((X + 1).sum())
        counter.active = True
        X * 2
        counter.active = False
    assert counter.counts.total_ops == 1 and counter.counts.total_syncs == 0
    assert counter.outside.total_ops == 2 and counter.outside.total_syncs == 1


def test_patch_references_patches_every_holder_and_restores():
    def original():
        return "original"

    holders = [types.ModuleType(f"_bench_test_holder_{i}") for i in range(2)]
    for i, module in enumerate(holders):
        setattr(module, f"alias{i}", original)
        sys.modules[module.__name__] = module
    try:
        patched = patch_references({original: lambda: "stub"})
        assert {(m.__name__, attr) for m, attr, _ in patched} >= {
            (holders[0].__name__, "alias0"),
            (holders[1].__name__, "alias1"),
        }
        assert holders[0].alias0() == "stub" and holders[1].alias1() == "stub"
        restore_references(patched)
        assert holders[0].alias0 is original and holders[1].alias1 is original
    finally:
        for module in holders:
            del sys.modules[module.__name__]


def test_stubs_return_the_launchers_shapes_and_are_removed_after():
    from adatriton.kernels import conv, densify

    launcher, densifier = conv.conv_elements, densify.densify_elements
    values = torch.randn(10, 8)
    packed = torch.randn(2, 9 * 4, 6)  # 2 groups, 9 taps x 4 channels, 6 outputs per group
    index = torch.zeros(7, 9, dtype=torch.int64)
    with stubbed_launches() as calls:
        assert conv.conv_elements is not launcher
        out = conv.conv_elements(values, index, packed, taps=9, groups=2, act=1)
        assert out.shape == (7, 12) and out.dtype == values.dtype
        assert conv.conv_elements(values.half(), None, packed.half(), taps=1, out_dtype=torch.float32).shape == (10, 12)
        dense = densify.densify_elements(values, torch.zeros(2, 3, 5, dtype=torch.int64))
        assert dense.shape == (2, 8, 3, 5) and dense.is_contiguous(memory_format=torch.channels_last)
        # Every module that imported the launcher by name sees the stub too.
        ops_conv = sys.modules.get("adatriton.ops.conv")
        if ops_conv is not None and hasattr(ops_conv, "conv_elements"):
            assert ops_conv.conv_elements is conv.conv_elements
    assert calls == {"conv": 2, "densify": 1}
    assert conv.conv_elements is launcher and densify.densify_elements is densifier


def test_host_suite_through_the_cli(tmp_path):
    argv = ["host", "--quick", "--no-progress", "--size", "64", "128", "--warmup", "1", "--iters", "2"]
    report = main([*argv, "--out", str(tmp_path)])["host"]
    t = read_csv(tmp_path / "host.csv")
    assert len(t) == 2 * len(SCENARIOS) and set(t["scenario"]) == set(SCENARIOS)
    assert set(t["output_stride"]) == {"8->32", "8->16"} and (t["scope"] == "adaptive").all()
    # ResNet-101: layer3 (23 blocks) and layer4 (3 blocks), 3 convs each, plus 2 shortcuts: all on triton.
    assert (t["convs_per_forward"] == 80).all() and (t["dispatch"] == "triton:80").all()
    # At least one launch per conv and the densify; a new map never needs fewer syncs than a reused one.
    assert (t["launches_per_forward"] >= t["convs_per_forward"] + 1).all()
    by = t.set_index(["output_stride", "scenario"])
    for conversion in ("8->32", "8->16"):
        assert (
            by.loc[(conversion, "new_map"), "syncs_per_forward"]
            >= by.loc[(conversion, "reused_map"), "syncs_per_forward"]
        )
        assert (
            by.loc[(conversion, "new_map"), "launches_per_forward"]
            >= by.loc[(conversion, "reused_map"), "launches_per_forward"]
        )
        # The graph path with a reused map: one fused launch per conv and the densify (issue 22), no sync.
        reused = by.loc[(conversion, "reused_map")]
        assert reused["launches_per_forward"] == 81 and reused["syncs_per_forward"] == 0
    assert (t["host_us_per_conv"] > 0).all() and t["host_us_per_conv"].notna().all()
    assert (t["host_us_per_conv"] * t["convs_per_forward"] / 1e3 - t["time_median_ms"]).abs().max() < 1e-6
    text = report["summary"].read_text()
    assert "## Targets" in text and "syncs" in text and "dense part" in text and report["plots"] == []
    assert text.count("device ops 81 <= ") == 2
    # 2 timed calls judge nothing: the timing target gives no verdict (the counts still do).
    timing = [line for line in text.splitlines() if "µs/conv <=" in line]
    # (the spread may be named too on a loaded machine: "(2 timed calls < 5, max/min 1.32 > 1.25)")
    assert timing and all(": noisy: rerun on an idle machine (2 timed calls < 5" in line for line in timing)
    assert adatriton.kernels.conv.conv_elements.__name__ == "conv_elements"  # the stubs are gone


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.1, 100.0, allow_nan=False), min_size=1, max_size=80))
def test_median_interval_holds_the_median_between_two_timed_calls(times):
    low, high = median_interval(times)
    if len(times) < 6:  # 1 - 2 / 2**5 < 0.95: no two order statistics reach 95%
        assert math.isnan(low) and math.isnan(high)
        return
    assert low in times and high in times and low <= statistics.median(times) <= high
    # symmetric order statistics: no more calls strictly below low than at or below high's mirror
    ordered = sorted(times)
    assert sum(t < low for t in times) == sum(t > high for t in times) or len(set(ordered)) < len(ordered)


def test_median_interval_order_statistics():
    calls = [float(i) for i in range(1, 41)]
    assert median_interval(calls) == (14.0, 27.0)  # 40 forwards: the 14th smallest and the 14th largest
    assert median_interval(calls[:6]) == (1.0, 6.0)  # 6 forwards: min and max cover the median with 96.9%


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [
        (17.0, 19.0, "met (95% interval of the median 17.0–19.0 µs)"),
        (26.0, 30.0, "not met (95% interval of the median 26.0–30.0 µs)"),
        (23.0, 27.0, "noisy: rerun on an idle machine (95% interval of the median 23.0–27.0 µs holds 25)"),
    ],
    ids=["below", "above", "straddles"],
)
def test_host_time_verdict_reads_the_median_interval(low, high, verdict):
    row = {"host_us_per_conv": (low + high) / 2, "host_us_per_conv_low": low, "host_us_per_conv_high": high}
    # a spread that max/min would call noisy: the interval decides, not the slowest forward
    row.update(time_min_ms=1.0, time_max_ms=2.5, iters=40)
    assert host_time_verdict(row) == verdict


def test_graph_adaptive_part_equals_the_module_and_computes_the_dense_part_once():
    """The graph path's split at its level map (the host suite's memoized dense part): the same output as the
    converted module, and the dense part's modules run once per input tensor."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    getter = IntermediateLayerGetter(model, {"layer4": "out"})
    net = adatriton.convert(getter, "8->32", method="graph", backend="torch").eval()
    run = graph_adaptive_part(net)
    x = torch.randn(1, 3, 64, 96)
    lm = LevelMap.random(1, 8, 12, "8->32", generator=torch.Generator().manual_seed(3))
    calls = []
    handle = model.conv1.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            expected = net(x, lm)["out"]
            assert len(calls) == 1
            for _ in range(2):
                torch.testing.assert_close(run(x, lm)["out"], expected, rtol=0, atol=0)
    finally:
        handle.remove()
    assert len(calls) == 2  # the module's forward, then once for the split's two calls
