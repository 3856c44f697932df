"""``torch.export``: ``LevelMap`` is a pytree node, so ``torch.export.export(net, (x, levels))`` takes it; what
exports (dense output strides, with or without a level-map argument; classifiers and segmentation models) runs
and equals eager, also after ``torch.export.save`` / ``load``; what does not (the adaptive part, whose index tables
have data-dependent sizes) raises ``LevelMapExportError`` saying which part and why.

ONNX: tests/models/test_onnx.py. The triton backend under ``torch.compile``: its conv op traces with dynamic maps;
why it is not a ``triton_op`` (the interpreter's kernels are not traceable)."""

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
from adatriton.runtime.backend import triton_runs_on
from tests.models.test_learned import tiny_deeplab

pytestmark = pytest.mark.usefixtures("one_thread")


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
    assert len(leaves) == 2 and torch.equal(leaves[1], lm.levels)
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


ADAPTIVE = [("8->32", (8, 8)), ("16->32", (4, 4))]


@pytest.mark.parametrize("conversion,grid", ADAPTIVE)
def test_export_adaptive_says_which_part_and_why(conversion, grid):
    net = adatriton.convert(tiny_resnet(), conversion).eval()
    x = torch.randn(1, 3, 64, 64)
    lm = LevelMap.random(1, *grid, conversion, generator=torch.Generator().manual_seed(1))
    # Under no_grad the adaptive network exports (test_export_adaptive_equals_eager); with gradients enabled, or
    # given a plain tensor map, the error says which part cannot be traced and why.
    with pytest.raises(LevelMapExportError, match=r"needs torch\.no_grad\(\).*BatchNorms run as the native op"):
        torch.export.export(net, (x, lm))
    # A plain tensor map would be validated inside the traced forward: the error says to pass a LevelMap.
    with (
        torch.no_grad(),
        pytest.raises(LevelMapExportError, match=r"_validate_and_count.*give torch.export a LevelMap"),
    ):
        torch.export.export(net, (x, lm.levels))
    with torch.no_grad():  # eager is untouched by the failed traces
        assert net(x, lm).shape == (1, 10)


@pytest.mark.parametrize("backend", ["torch", "dense"])
@pytest.mark.parametrize("conversion,grid", ADAPTIVE)
def test_export_adaptive_equals_eager(conversion, grid, backend):
    """Exported once (under no_grad) for a map of one shape, the program computes every other map of that shape
    (other element counts, a level left empty) exactly as eager does."""
    net = adatriton.convert(tiny_resnet(), conversion, backend=backend).eval()
    x = torch.randn(1, 3, 64, 64)
    maps = [LevelMap.random(1, *grid, conversion, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    maps.append(LevelMap.uniform(1, *grid, 0, conversion))
    with torch.no_grad():
        ep = torch.export.export(net, (x, maps[0]))
        for lm in maps:
            assert torch.equal(ep.module()(x, lm), net(x, lm)), lm.element_counts()


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


# ---------------------------------------------------------------------------------------------------- triton backend
def test_compiled_triton_backend_traces_the_conv_op_with_new_maps():
    """``adatriton::triton_conv`` is a custom op with a fake implementation: ``torch.compile(fullgraph=True)`` traces a
    triton-backend model (interpreter) without a graph break, with the element counts as unbacked sizes (a fake
    implementation that took ``len()`` of its rows would specialise them and fail), and equals eager on new maps."""
    if not triton_runs_on(torch.device("cpu")):
        pytest.skip("the triton backend needs TRITON_INTERPRET=1 on the CPU")
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=8, num_classes=10).eval()
    net = adatriton.convert(model, "8->32", backend="triton").eval()
    x = torch.randn(1, 3, 32, 32)
    maps = [LevelMap.random(1, 4, 4, "8->32", generator=torch.Generator().manual_seed(s)) for s in range(2)]
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    torch._dynamo.reset()
    with torch.no_grad():
        expected = [net(x, lm) for lm in maps]  # eager first, as a model is run before it is compiled
        compiled = torch.compile(net, backend=counting_backend, fullgraph=True)  # a graph break raises
        for lm, ref in zip(maps, expected):
            torch.testing.assert_close(compiled(x, lm), ref, rtol=1e-4, atol=1e-4)
    assert len(graphs) == 1  # the second map reuses the first map's graph
    assert any(n.target is torch.ops.adatriton.triton_conv.default for n in graphs[0].graph.nodes)


def test_wrap_triton_leaves_an_interpreted_kernel_untraceable():
    """Why the Triton conv is not a ``torch.library.triton_op`` (docs/api.md, "Deployment"): under
    ``TRITON_INTERPRET=1`` ``triton.jit`` gives an ``InterpretedFunction``, which ``wrap_triton`` hands back as is
    (no ``triton_kernel_wrapper`` node to trace), so a ``triton_op``'s fake pass would run the interpreter on fake
    tensors. When torch starts tracing interpreted kernels this test fails: revisit the registration then."""
    if not triton_runs_on(torch.device("cpu")):
        pytest.skip("needs TRITON_INTERPRET=1")
    import triton

    @triton.jit
    def kernel(x_ptr):  # the project's kernels are defined the same way, under the same setting
        pass

    assert type(kernel).__name__ == "InterpretedFunction"
    try:
        wrapped = torch.library.wrap_triton(kernel)
    except RuntimeError:  # older torch refuses an interpreted kernel outright: not traceable either
        return
    assert wrapped is kernel


def test_graph_path_resnet_exports_and_compiles_without_graph_breaks():
    """The plain graph module of a ResNet (``method="graph"``) exports under no_grad (every map of the example's
    shape computed as eager computes it) and compiles with ``fullgraph=True``, 0 graph breaks."""
    net = adatriton.convert(tiny_resnet(), "8->32", method="graph", backend="torch").eval()
    assert type(net).__name__ == "AdaptiveGraphModule"
    x = torch.randn(1, 3, 64, 64)
    maps = [LevelMap.random(1, 8, 8, "8->32", generator=torch.Generator().manual_seed(s)) for s in range(3)]
    torch._dynamo.reset()
    with torch.no_grad():
        ep = torch.export.export(net, (x, maps[0]))
        for lm in maps:
            assert torch.equal(ep.module()(x, lm), net(x, lm)), lm.element_counts()
        explanation = torch._dynamo.explain(net)(x, maps[0])
        assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
        torch._dynamo.reset()
        compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, maps[1]), net(x, maps[1]), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
