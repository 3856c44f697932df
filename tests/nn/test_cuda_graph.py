"""adatriton.cuda_graph on the CPU: the forward it would capture (a reused, prebuilt level map) issues no sync and no
host read, reads the same tables and writes the same outputs at every call, and a new map fails instead of replaying
the captured one's tables. The capture itself needs CUDA (bench/_gpu_steps.py's ``cuda_graphs`` step runs it)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import adatriton
from adatriton import LevelMap, StaleGraphError, masks
from bench.host import OpCounter, stubbed_launches

H, W = 64, 128


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet50().eval()


def _levels(seed: int = 0) -> LevelMap:
    return LevelMap(masks.synthetic(1, H, W, "8->32", 0.3, kind="blobs", seed=seed).levels, "8->32")


def _table_ptrs(lm: LevelMap) -> dict:
    """data_ptr of every tensor the map's layouts hold (id maps, element coordinates, tap tables, sources)."""
    ptrs = {}
    for stage in range(lm.num_levels + 1):
        for name, value in vars(lm.layout(stage)).items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for key, tensor in items:
                if isinstance(tensor, torch.Tensor):
                    ptrs[(stage, name, key)] = tensor.data_ptr()
    return ptrs


def test_eager_fallback_replays_like_a_graph(model):
    net = adatriton.convert(model, "8->32", backend="torch").eval()
    lm = _levels()
    x1, x2 = torch.randn(2, 1, 3, H, W)
    graphed = adatriton.cuda_graph(net, x1, lm)
    assert graphed.graph is None  # no CUDA tensor: eager, same contract
    tables = _table_ptrs(lm)
    assert any(name == "_taps" for _, name, _ in tables)  # the 3x3 tap tables exist after the first forward
    with torch.inference_mode():
        expected1, expected2 = net(x1, lm), net(x2, lm)
    out1 = graphed(x1, lm)
    ptr = out1.data_ptr()
    torch.testing.assert_close(out1, expected1, rtol=0, atol=0)
    out2 = graphed(x2, lm)
    # Static addresses: the same output tensor, and the same tables (nothing rebuilt), at every call.
    assert out2 is out1 and out2.data_ptr() == ptr
    assert _table_ptrs(lm) == tables
    torch.testing.assert_close(out2, expected2, rtol=0, atol=0)


def test_a_new_map_fails_instead_of_replaying_stale_tables(model):
    net = adatriton.convert(model, "8->32", backend="torch").eval()
    lm = _levels()
    x = torch.randn(1, 3, H, W)
    graphed = adatriton.cuda_graph(net, x, lm)
    same_levels = LevelMap(lm.levels, "8->32")  # equal values, but another map with its own tables
    with pytest.raises(StaleGraphError, match="new level map"):
        graphed(x, same_levels)
    with pytest.raises(StaleGraphError, match="tensor"):
        graphed(torch.randn(1, 3, H, W + 32), lm)
    with pytest.raises(TypeError, match="LevelMap"):
        adatriton.cuda_graph(net, x, lm.levels)


def test_the_captured_region_has_no_syncs_and_no_host_reads(model, monkeypatch):
    """The triton forward with the reused map, with Triton's launcher run up to the driver's launch (a no-op):
    what a capture records. 0 syncs (item, nonzero, boolean indexing, ...) and 0 host reads (tolist, numpy, cpu);
    one launch per adaptive conv plus the densify."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets the triton backend take CPU tensors; launches are no-ops
    net = adatriton.convert(model, "8->32", backend="triton").eval()
    lm = _levels()
    x = torch.randn(1, 3, H, W)
    counter = OpCounter()  # counts into counter.counts only while active: the replayed call
    with stubbed_launches(counter, launcher=True) as calls:
        graphed = adatriton.cuda_graph(net, x, lm)
        with adatriton.ops.dispatch.recording() as records, counter.watch():
            counter.active = True
            out = graphed(x, lm)
            counter.active = False
    assert calls["conv"] > 0 and out.shape == (1, 1000)
    convs = sum(r["backend"] == "triton" for r in records)
    assert convs > 0 and counter.counts.launches["conv"] == convs
    assert counter.counts.total_syncs == 0, counter.counts.syncs
