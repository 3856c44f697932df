"""``torch.export``: ``LevelMap`` is a pytree node, so ``torch.export.export(net, (x, levels))`` takes it; what
exports (dense output strides, with or without a level-map argument; classifiers and segmentation models) runs
and equals eager, also after ``torch.export.save`` / ``load``; what does not (the adaptive part, whose index tables
have data-dependent sizes) raises ``LevelMapExportError`` saying which part and why.

ONNX: not tested, ``onnxscript`` is not installed here (``torch.onnx.export(..., dynamo=True)`` needs it)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.utils._pytree as pytree
from torchvision.models.resnet import Bottleneck, ResNet

import adatriton
from adatriton import LevelMap, LevelMapError, LevelMapExportError
from tests.models.test_learned import tiny_deeplab


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_resnet() -> ResNet:
    torch.manual_seed(0)
    return ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16, num_classes=10).eval()


def _roundtrip(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    return torch.export.load(buffer)


def test_export_levelmap_is_a_pytree_node():
    lm = LevelMap.random(2, 8, 12, "8->32", generator=torch.Generator().manual_seed(0))
    leaves, spec = pytree.tree_flatten((torch.zeros(1), lm))
    assert len(leaves) == 2 and leaves[1] is lm.levels
    back = pytree.tree_unflatten(leaves, spec)[1]
    assert isinstance(back, LevelMap) and back.num_levels == 2 and torch.equal(back.levels, lm.levels)
    bad = lm.levels.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(LevelMapError, match="outside 0..2"):  # real tensors are validated when unflattened
        pytree.tree_unflatten([leaves[0], bad], spec)
    assert pytree.treespec_loads(pytree.treespec_dumps(spec)) == spec  # serialisable, for torch.export.save


@pytest.mark.parametrize("output_stride", ["8", "16", "32"])
def test_export_dense_resnet_equals_eager(output_stride):
    net = adatriton.convert(tiny_resnet(), output_stride).eval()
    x = torch.randn(2, 3, 64, 96)
    ep = torch.export.export(net, (x,))
    with torch.no_grad():
        ref = net(x)
        other = torch.randn(2, 3, 64, 96)
        assert torch.equal(ep.module()(x), ref)
        torch.testing.assert_close(_roundtrip(ep).module()(other), net(other), rtol=0, atol=0)


def test_export_dense_segmentation_with_a_levelmap_argument_equals_eager():
    """A dense output stride takes an all-zero LevelMap of its output grid: it travels through export as a pytree."""
    net = adatriton.convert(tiny_deeplab(aux=True).eval(), "16").eval()
    x = torch.randn(1, 3, 64, 64)
    zeros = LevelMap.uniform(1, 4, 4, 0, 0)
    ep = torch.export.export(net, (x, zeros))
    with torch.no_grad():
        out, ref = ep.module()(x, zeros), net(x, zeros)
        loaded = _roundtrip(ep).module()(x, zeros)
    assert list(out) == ["out", "aux"]
    for key in ref:
        assert torch.equal(out[key], ref[key]) and torch.equal(loaded[key], ref[key])


@pytest.mark.parametrize("conversion,grid", [("8->32", (8, 8)), ("16->32", (4, 4))])
def test_export_adaptive_says_which_part_and_why(conversion, grid):
    net = adatriton.convert(tiny_resnet(), conversion).eval()
    x = torch.randn(1, 3, 64, 64)
    lm = LevelMap.random(1, *grid, conversion, generator=torch.Generator().manual_seed(1))
    with pytest.raises(LevelMapExportError, match=r"LevelMap\.layout \(stage 0\).*adatriton\.Layout.*data-dependent"):
        torch.export.export(net, (x, lm))
    # A plain tensor map would be validated inside the traced forward: the error says to pass a LevelMap.
    with pytest.raises(LevelMapExportError, match=r"LevelMap\._validate.*give torch.export a LevelMap"):
        torch.export.export(net, (x, lm.levels))
    # Eager is untouched by the failed traces.
    with torch.no_grad():
        assert net(x, lm).shape == (1, 10)


def test_export_levelmap_pickles_as_levels_and_k(tmp_path):
    """torch.export.save stores the example inputs: a LevelMap pickles as (levels, K), without its cached
    layouts, and torch.load(weights_only=True) rebuilds it (validated)."""
    lm = LevelMap.random(1, 8, 8, "8->32", generator=torch.Generator().manual_seed(2))
    lm.layout(2)
    back = pickle.loads(pickle.dumps(lm))
    assert back.num_levels == 2 and torch.equal(back.levels, lm.levels) and not back._layouts
    torch.save({"levels": lm}, tmp_path / "lm.pt")
    assert torch.equal(torch.load(tmp_path / "lm.pt", weights_only=True)["levels"].levels, lm.levels)
    assert torch.equal(copy.deepcopy(lm).levels, lm.levels)
