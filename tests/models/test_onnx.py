"""ONNX export of adaptive models (``adatriton.ops.onnx``): one ``.onnx`` file per model, with the level map as a
graph input, run by ONNX Runtime on the CPU, equals eager (float32, 1e-5 relative) on three mixed maps of its grid
shape, one with a level left empty; the adaptive part is a gather and a product on the active elements (no
``Conv`` node after the dense prefix). Needs the ``deploy`` extra (``onnx``, ``onnxscript``, ``onnxruntime``)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import adatriton
from adatriton import LevelMap
from adatriton.ops import ONNX_OPS, export_onnx, onnx_translation_table, register_onnx_translations
from tests.models.test_export import tiny_resnet
from tests.models.test_learned import randomise_bn, tiny_deeplab

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

RTOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def _maps(grid: tuple[int, int], conversion: str) -> list[LevelMap]:
    """Three maps of one grid shape with different element counts: two random, and the first with level 1 moved to
    level 0 (level 1 empty; with K == 1 the whole map is level 0)."""
    gen = [torch.Generator().manual_seed(s) for s in range(2)]
    maps = [LevelMap.random(1, *grid, conversion, generator=g) for g in gen]
    levels = maps[0].levels
    levels[levels == 1] = 0
    maps.append(LevelMap(levels, maps[0].num_levels))
    return maps


def _dense_prefix_convs(model: nn.Module, conversion: str) -> int:
    """Convs of a torchvision ResNet that run before the finest output stride (the stem and the dense stages)."""
    stages = {"8->32": ("conv1", "layer1", "layer2"), "16->32": ("conv1", "layer1", "layer2", "layer3")}[conversion]
    return sum(isinstance(m, nn.Conv2d) for name in stages for m in getattr(model, name).modules())


def _check(net: nn.Module, x: torch.Tensor, maps: list[LevelMap], tmp_path, dense_convs: int | None = None):
    """Export once (for the first map), save, load in ONNX Runtime, compare on every map."""
    path = tmp_path / "net.onnx"
    export_onnx(net, (x, maps[0]), path)
    model = onnx.load(path)
    ops = [node.op_type for node in model.graph.node]
    assert {node.domain for node in model.graph.node} == {""} and not model.functions  # standard ONNX ops only
    assert "NonZero" in ops  # the layouts are built inside the graph, from the level map input
    if dense_convs is not None:
        assert ops.count("Conv") == dense_convs, "a conv of the adaptive part was exported as a dense Conv"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == 2
    counts = set()
    for lm in maps:
        counts.add(tuple(lm.element_counts()))
        with torch.no_grad():
            ref = net(x, lm)
        ref = ref["out"] if isinstance(ref, dict) else ref
        out = torch.from_numpy(session.run(None, {names[0]: x.numpy(), names[1]: lm.levels.numpy()})[0])
        assert out.shape == ref.shape
        err, scale = (out - ref).abs().max().item(), ref.abs().max().item()
        assert err <= RTOL * scale, (lm.element_counts(), err, scale)
    assert len(counts) == len(maps)  # the file ran maps with different element counts
    assert any(0 in c for c in counts)  # one with an empty level


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.slow)])  # interpreted: slow
@pytest.mark.parametrize("conversion,grid", [("8->32", (8, 8)), ("16->32", (4, 4))])
def test_onnx_runtime_equals_eager_tiny_resnet(conversion, grid, backend, tmp_path):
    model = randomise_bn(tiny_resnet()).eval()
    net = adatriton.convert(model, conversion, backend=backend).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _check(net, x, _maps(grid, conversion), tmp_path, _dense_prefix_convs(model, conversion))


def test_onnx_runtime_equals_eager_tiny_deeplab(tmp_path):
    torch.manual_seed(0)
    net = adatriton.convert(randomise_bn(tiny_deeplab()).eval(), "8->32").eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _check(net, x, _maps((8, 8), "8->32"), tmp_path)


@pytest.mark.slow
def test_onnx_runtime_equals_eager_zoo_resnet18_graph_path(tmp_path):
    """A zoo model through the graph converter (BasicBlocks): standalone per-element BatchNorms, element areas."""
    torch.manual_seed(0)
    model = randomise_bn(torchvision.models.resnet18()).eval()
    net = adatriton.convert(model, "8->32", method="graph").eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _check(net, x, _maps((8, 8), "8->32"), tmp_path, _dense_prefix_convs(model, "8->32"))


@pytest.mark.slow
def test_onnx_runtime_equals_eager_zoo_mobilenet_v2_graph_path(tmp_path):
    """Depthwise convs (a multiply and a sum over the taps) and ReLU6 on the elements."""
    torch.manual_seed(0)
    net = adatriton.convert(randomise_bn(torchvision.models.mobilenet_v2()).eval(), "8->32", method="graph").eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _check(net, x, _maps((8, 8), "8->32"), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("conversion,grid", [("8->32", (16, 16)), ("16->32", (8, 8))])
def test_onnx_runtime_equals_eager_resnet50(conversion, grid, tmp_path):
    torch.manual_seed(0)
    model = randomise_bn(torchvision.models.resnet50()).eval()
    net = adatriton.convert(model, conversion).eval()
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    _check(net, x, _maps(grid, conversion), tmp_path, _dense_prefix_convs(model, conversion))


@pytest.mark.slow
def test_onnx_runtime_equals_eager_deeplabv3_resnet50(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False)
    net = adatriton.convert(randomise_bn(model).eval(), "8->32").eval()
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    _check(net, x, _maps((16, 16), "8->32"), tmp_path)


class _NonzeroStatic(nn.Module):
    def __init__(self, size: int, fill_value: int):
        super().__init__()
        self.size, self.fill_value = size, fill_value

    def forward(self, x):
        return torch.nonzero_static(x > 0, size=self.size, fill_value=self.fill_value)


@pytest.mark.parametrize("size", [0, 3, 40])
def test_nonzero_static_translation_pads_and_cuts_as_torch(size, tmp_path):
    """``size`` below, and above, the number of nonzeros (12 of 30): cut to the first ``size`` rows, or padded."""
    x = torch.zeros(5, 6)
    x.view(-1)[torch.randperm(30, generator=torch.Generator().manual_seed(0))[:12]] = 1.0
    path = tmp_path / "nz.onnx"
    export_onnx(_NonzeroStatic(size, -7).eval(), (x,), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = torch.randn(5, 6)  # another input: the file is not a constant
    for t in (x, other):
        out = session.run(None, {session.get_inputs()[0].name: t.numpy()})[0]
        assert torch.equal(torch.from_numpy(out), torch.nonzero_static(t > 0, size=size, fill_value=-7))


class _Means(nn.Module):
    def forward(self, x):
        spatial = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # as a torchvision classifier pools
        return spatial, x.mean(1, keepdim=True), x.mean((2, 3))  # the last two stay ReduceMean


def test_global_mean_pools_become_global_average_pool_nodes(tmp_path):
    x = torch.randn(2, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "means.onnx"
    export_onnx(_Means().eval(), (x,), path)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert ops.count("GlobalAveragePool") == 1 and ops.count("ReduceMean") == 2
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    for out, ref in zip(outs, _Means()(x)):
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-6, atol=1e-6)


class _ShiftLeft(nn.Module):
    def forward(self, x, y):
        return x << y


def test_lshift_translation_equals_torch(tmp_path):
    x = torch.tensor([1, -3, 5, 0, 7, -1])
    y = torch.tensor([0, 2, 3, 5, 1, 4])
    path = tmp_path / "shift.onnx"
    export_onnx(_ShiftLeft().eval(), (x, y), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    a, b = (i.name for i in session.get_inputs())
    assert torch.equal(torch.from_numpy(session.run(None, {a: x.numpy(), b: y.numpy()})[0]), x << y)


def test_plain_export_call_with_gradients_enabled():
    """The issue's call, ``torch.onnx.export(net, (images, levels), dynamo=True)``, outside ``no_grad`` (an ONNX
    export is an inference export) once the translations are registered."""
    register_onnx_translations()
    net = adatriton.convert(randomise_bn(tiny_resnet()).eval(), "16->32").eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = _maps((4, 4), "16->32")
    assert torch.is_grad_enabled()
    program = torch.onnx.export(net, (x, maps[0]), dynamo=True)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    image, levels = (i.name for i in session.get_inputs())
    for lm in maps:
        out = torch.from_numpy(session.run(None, {image: x.numpy(), levels: lm.levels.numpy()})[0])
        with torch.no_grad():
            ref = net(x, lm)
        assert (out - ref).abs().max() <= RTOL * ref.abs().max()


def test_translation_table_names_the_ops_and_registration_is_idempotent():
    table = onnx_translation_table()
    assert {op.name() for op in table} == set(ONNX_OPS)
    from onnxscript.function_libs.torch_lib import registration

    register_onnx_translations()
    register_onnx_translations()
    for name in ONNX_OPS:
        assert len(registration.default_registry[name].overloads) == 1
