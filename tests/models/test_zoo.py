"""Any CNN through the graph path (docs/semantics.md §8): torchvision's MobileNetV2 / V3, EfficientNet-B0,
RegNetY-400MF, ResNeXt-50, VGG-16-BN and LRASPP converted by ``adatriton.convert``.

Float64, eval mode, random weights with randomised BatchNorm statistics, small inputs (odd sizes included):

- a uniform level-0 map equals the dense dilated network, built independently by editing a copy of the model
  (``tests/reference/graph_simulation.dilated_network``);
- a uniform maximum level equals the strided network (the model itself for ``8->32``, the dense OS16 network for
  ``8->16``) at sizes that are multiples of the stride;
- mixed maps, different for every sample, equal the dense simulation written from the rules
  (``tests/reference/graph_simulation.simulate``);
- ops without a rule densify, layers the rules cannot express raise or run densely; compile, backward,
  ``explain`` and ``count_macs`` work on converted graphs.
"""

import copy
import functools
import operator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import segmentation as tvseg
from torchvision.models._utils import IntermediateLayerGetter

import adatriton
from adatriton import LevelMap, LevelMapError
from adatriton.core.strides import num_levels_of
from adatriton.models.graph import AdaptiveGraphModule, GraphConversionError
from adatriton.runtime.backend import triton_runs_on
from tests.reference.graph_simulation import dilated_network, simulate
from tests.reference.simulation import simulate_resnet_features

DT = torch.float64
ODD = (45, 61)  # finest grid 6x8 (VGG's floor-mode pools: 5x7), not a multiple of the 4x4 blocks
ALIGNED = (64, 96)  # a multiple of 32: the strided networks' grids are exact


pytestmark = pytest.mark.usefixtures("one_thread")


def _vgg16_bn() -> nn.Module:
    model = torchvision.models.vgg16_bn()
    # The 25088x4096 and 4096x4096 classifier layers hold 120M parameters (1 GB in float64) and add nothing the
    # other classifiers do not test: one small linear layer on the same pooled features.
    model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(512 * 7 * 7, 10))
    return model


BUILDERS = {
    "mobilenet_v2": torchvision.models.mobilenet_v2,
    "mobilenet_v3_large": torchvision.models.mobilenet_v3_large,
    "efficientnet_b0": torchvision.models.efficientnet_b0,
    "regnet_y_400mf": torchvision.models.regnet_y_400mf,
    "resnext50_32x4d": torchvision.models.resnext50_32x4d,
    "vgg16_bn": _vgg16_bn,
    "lraspp_mobilenet_v3_large": lambda: tvseg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None),
}
#: The conversions each model's strides allow (LRASPP's backbone stops at OS16).
CONVERSIONS = {name: ("8->16",) if name.startswith("lraspp") else ("8->32", "8->16") for name in BUILDERS}
CASES = [pytest.param(name, conv, id=f"{name}-{conv}") for name in BUILDERS for conv in CONVERSIONS[name]]


@functools.cache
def _model(name: str) -> nn.Module:
    """Random weights, randomised BatchNorm statistics (so eval-mode BatchNorm is not the identity), float64."""
    torch.manual_seed(sorted(BUILDERS).index(name))
    model = BUILDERS[name]()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval().to(DT)


@functools.cache
def _net(name: str, conversion: str, backend: str | None = None) -> AdaptiveGraphModule:
    net = adatriton.convert(_model(name), conversion, backend=backend, method="graph")
    assert isinstance(net, AdaptiveGraphModule)
    return net


def _num_levels(conversion: str) -> int:
    return {"8->32": 2, "8->16": 1}[conversion]


def _input(size, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *size, dtype=DT, generator=torch.Generator().manual_seed(seed))


def _out(value):
    return value["out"] if isinstance(value, dict) else value


def _assert_close(actual, expected):
    """Float64 round-off relative to the magnitude of the outputs."""
    actual, expected = _out(actual), _out(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= 1e-11 * max(scale, 1.0), f"max abs diff {err:.3g} at scale {scale:.3g}"


def _nearest_up(x: torch.Tensor, factor: int, size) -> torch.Tensor:
    return x.repeat_interleave(factor, 2).repeat_interleave(factor, 3)[..., : size[0], : size[1]]


@pytest.mark.parametrize(("name", "conversion"), CASES)
def test_level0_equals_the_dense_dilated_network(name, conversion):
    net = _net(name, conversion)
    x = _input(ODD, batch=1)
    n, hf, wf = net.finest_grid(x)
    with torch.no_grad():
        expected = dilated_network(_model(name), 8)(x)
        _assert_close(net(x, LevelMap.uniform(n, hf, wf, 0, net.num_levels)), expected)
        _assert_close(net.finest_network()(x), expected)  # the converter's own dense OS8 network


@pytest.mark.parametrize(("name", "conversion"), CASES)
def test_max_level_equals_the_strided_network(name, conversion):
    """``L == K`` everywhere equals the network at the coarsest stride (logits: the global pooling of the densified
    map equals the strided one's at these sizes). VGG's 7x7 adaptive pooling and LRASPP's bilinear decoder read the
    densified finest grid, not the coarse one: their features are compared instead, then the head on them."""
    k = _num_levels(conversion)
    coarsest = 8 << k
    model = _model(name)
    x = _input(ALIGNED, batch=1)
    with torch.no_grad():
        if name.startswith("vgg"):
            net = adatriton.convert(model.features, conversion)
            strided = model.features if k == 2 else dilated_network(model.features, coarsest)
            n, hf, wf = net.finest_grid(x)
            got = net(x, LevelMap.uniform(n, hf, wf, k, k))
            _assert_close(got, _nearest_up(strided(x), 1 << k, (hf, wf)))
            return
        if name.startswith("lraspp"):
            feats = model.backbone(x)
            net = adatriton.convert(model.backbone, conversion)
            n, hf, wf = net.finest_grid(x)
            got = net(x, LevelMap.uniform(n, hf, wf, k, k))
            _assert_close(got["low"], feats["low"])
            high = _nearest_up(feats["high"], 1 << k, (hf, wf))
            _assert_close(got["high"], high)
            head = model.classifier({"low": feats["low"], "high": high})
            expected = F.interpolate(head, size=x.shape[-2:], mode="bilinear", align_corners=False)
            _assert_close(_net(name, conversion)(x, LevelMap.uniform(n, hf, wf, k, k)), expected)
            return
        net = _net(name, conversion)
        n, hf, wf = net.finest_grid(x)
        strided = model if k == 2 else dilated_network(model, coarsest)
        _assert_close(net(x, LevelMap.uniform(n, hf, wf, k, k)), strided(x))


@pytest.mark.parametrize(("name", "conversion"), CASES)
def test_mixed_levels_equal_the_dense_simulation(name, conversion):
    net = _net(name, conversion)
    k = net.num_levels
    x = _input(ODD, seed=1)
    n, hf, wf = net.finest_grid(x)
    lm = LevelMap.random(n, hf, wf, k, generator=torch.Generator().manual_seed(hf * wf + k))
    assert lm.levels.unique().numel() == k + 1 and not torch.equal(lm.levels[0], lm.levels[1])
    with torch.no_grad():
        _assert_close(net(x, lm), simulate(_model(name), x, lm.levels, 8, k))


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "regnet_y_400mf"])
def test_dense_backend_equals_the_simulation(name):
    net = _net(name, "8->32", "dense")
    x = _input(ODD, seed=2)
    n, hf, wf = net.finest_grid(x)
    lm = LevelMap.random(n, hf, wf, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _assert_close(net(x, lm), simulate(_model(name), x, lm.levels, 8, 2))


def _mixed_map(conversion: str, seed: int) -> LevelMap | None:
    """A per-sample mixed level map for a 2x3x40x56 input at ``conversion`` (None for a dense one): the finest grid
    is not block-aligned (OS8 5x7, OS16 3x4)."""
    if "->" not in conversion:
        return None
    finest = int(conversion.split("->")[0])
    grid = (-(-40 // finest), -(-56 // finest))
    return LevelMap.random(2, *grid, num_levels_of(conversion), generator=torch.Generator().manual_seed(seed))


def _reference(model: nn.Module, x: torch.Tensor, conversion: str, lm: LevelMap | None) -> torch.Tensor:
    """What ``model`` converted to ``conversion`` computes, written from the rules: torchvision's dilated network
    (dense) or the dense simulation of docs/semantics.md §8 (adaptive)."""
    if lm is None:
        return dilated_network(model, int(conversion))(x)
    return simulate(model, x, lm.levels, int(conversion.split("->")[0]), lm.num_levels)


@pytest.mark.parametrize("conversion", ["8->32", "8->16", "16->32", "8", "16"])
def test_resnext_converts_to_the_dense_simulation(conversion):
    """The ResNet family through ``convert`` (``AdaptiveResNet``: the graph path with its builder's options) at every
    conversion of the paper, float64, per-sample mixed maps on an odd-sized grid (40x56: OS8 5x7, OS16 3x4). A model
    swapped to adatriton's drop-in layers converts to the same network (they trace as leaves)."""
    model = _model("resnext50_32x4d")
    x = _input((40, 56), seed=3)
    lm = _mixed_map(conversion, seed=6)
    args = (x,) if lm is None else (x, lm)
    with torch.no_grad():
        net = adatriton.convert(model, conversion)
        assert type(net).__name__ == "AdaptiveResNet"
        got = net(*args)
        _assert_close(got, _reference(model, x, conversion, lm))
        swapped = adatriton.swap_modules(copy.deepcopy(model))
        _assert_close(adatriton.convert(swapped, conversion)(*args), got)


@pytest.mark.parametrize("conversion", ["8->32", "16->32", "8"])
def test_dilated_resnet_converts_as_the_strided_one(conversion):
    """A ResNet built dilated (``replace_stride_with_dilation``) has no stride-2 layer past OS8: ``convert`` reads it
    with torchvision's strides back (``restrided``, on shallow copies), so it computes what the strided ResNet with
    the same weights converts to, and the model is left as it was."""
    model = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval().to(DT)
    strided = torchvision.models.resnet50().eval().to(DT)
    strided.load_state_dict(model.state_dict())
    x = _input((40, 56), seed=8)
    lm = _mixed_map(conversion, seed=9)
    with torch.no_grad():
        got = adatriton.convert(model, conversion)(x, lm)
        assert model.layer4[0].conv2.stride == (1, 1) and model.layer4[1].conv2.dilation == (4, 4)
        _assert_close(got, _reference(strided, x, conversion, lm))


@pytest.mark.parametrize("conversion", ["8->32", "8->16"])
def test_softpool_resnext_equals_the_dense_simulation(conversion):
    """``downsampling="softpool"``: every stride-2 conv from OS8 on merges by SoftPool (a grouped conv2 before the
    merge, a shortcut after it), adaptive steps and dense strides alike."""
    model = _model("resnext50_32x4d")
    x = _input((40, 56), seed=10)
    lm = _mixed_map(conversion, seed=11)
    with torch.no_grad():
        net = adatriton.convert(model, conversion, downsampling="softpool")
        soft = net.forward_features(x, lm)
        _assert_close(soft, simulate_resnet_features(model, x, lm.levels, conversion, "softpool"))
        top_left = adatriton.convert(model, conversion).forward_features(x, lm)
    assert (soft - top_left).abs().max() > 1e-3 * soft.abs().max()
    # layer3's and layer4's conv2 and shortcut, where they subsample (8->16: layer4 is dilated, it does not)
    merges = sum(line.split("=")[0].strip().endswith("_softpool") for line in net.code.splitlines())
    assert merges == {"8->32": 4, "8->16": 2}[conversion], net.code


@pytest.mark.parametrize("conversion", ["8->32", "16->32"])
def test_deformable_resnet_equals_the_dense_simulation(conversion):
    """Deformable conv2s (``make_deformable``; one with a step, one in the last block), random offsets: on the map,
    offsets on the pre-step elements, then the step."""
    torch.manual_seed(12)
    model = torchvision.models.resnet50().eval().to(DT)
    model = adatriton.make_deformable(model, ["layer3.0.conv2", "layer4.2.conv2"])
    gen = torch.Generator().manual_seed(12)
    for module in model.modules():
        if isinstance(module, adatriton.DeformableConv2d):
            module.offset.weight.data.normal_(0, 0.02, generator=gen)
    x = _input((40, 56), seed=13)
    lm = _mixed_map(conversion, seed=14)
    with torch.no_grad():
        got = adatriton.convert(model, conversion).forward_features(x, lm)
        _assert_close(got, simulate_resnet_features(model, x, lm.levels, conversion))


def test_intermediate_layer_getter_returns_its_dict_densified():
    """The getter's dict, in its order: a dense layer as it is, an adaptive one densified on the finest grid."""
    model = _model("resnext50_32x4d")
    getter = IntermediateLayerGetter(model, {"layer2": "c3", "layer4": "c5"})
    x = _input((40, 56), seed=4)
    lm = LevelMap.random(2, 5, 7, 2, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = adatriton.convert(getter, "8->32")(x, lm)
        assert list(got) == ["c3", "c5"]
        _assert_close(got["c3"], model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))))
        _assert_close(got["c5"], simulate_resnet_features(model, x, lm.levels, "8->32"))


def test_dense_output_strides_equal_torchvision_dilation():
    """The dense conversions are torchvision's replace_stride_with_dilation (and so is the tests' own builder)."""
    model = _model("resnext50_32x4d")
    net = _net("resnext50_32x4d", "8->32")
    x = _input((40, 56), batch=1)
    with torch.no_grad():
        for stride, dilation in ((8, [False, True, True]), (16, [False, False, True])):
            reference = torchvision.models.resnext50_32x4d(replace_stride_with_dilation=dilation)
            reference.load_state_dict(model.state_dict())
            expected = reference.eval().to(DT)(x)
            _assert_close(net.with_output_stride(str(stride))(x), expected)
            _assert_close(dilated_network(model, stride)(x), expected)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_conversion_shares_parameters_and_state_dict_keys(name):
    model = _model(name)
    net = _net(name, CONVERSIONS[name][0])
    assert list(net.state_dict()) == list(model.state_dict())
    assert all(a is b for a, b in zip(net.parameters(), model.parameters()))
    assert all(a is b for a, b in zip(net.modules(), model.modules()) if a is not net)
    net.load_state_dict(model.state_dict())


def test_convert_dispatch():
    assert type(adatriton.convert(torchvision.models.resnet50(), "8->32")).__name__ == "AdaptiveResNet"
    basic = adatriton.convert(torchvision.models.resnet18(), "8->32")  # BasicBlock ResNets take the graph path
    assert isinstance(basic, AdaptiveGraphModule)
    assert [p.tap_spacing for p in basic.adaptive_convs() if p.kernel == 3] == [1, 2, 2, 2, 2, 4, 4, 4]
    with pytest.raises(ValueError, match="method must be"):
        adatriton.convert(torchvision.models.resnet18(), "8->32", method="fx")
    segmentation = adatriton.convert(tvseg.fcn_resnet50(weights=None, weights_backbone=None), "8->32")
    assert isinstance(segmentation, AdaptiveGraphModule) and segmentation.heads == ("classifier",)


# ---------------------------------------------------------------------------------------------- small models
class _Roll(nn.Module):
    """OS8 -> OS16 by a strided conv, then an op without a rule (torch.roll) read twice, then a 3x3 conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1))
        self.down = nn.Conv2d(8, 8, 3, 2, 1)
        self.conv = nn.Conv2d(8, 8, 3, 1, 1)

    def forward(self, x):
        x = self.down(self.stem(x)).relu()
        rolled = torch.roll(x, 1, 2)
        return self.conv(rolled * 0.5 + torch.roll(x, 1, 3))


class _EvenDown(nn.Module):
    """An adaptive step, then a 2x2 conv with stride 2 (ConvNeXt's downsampling layer): no rule on a map."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 8, 8)
        self.down = nn.Conv2d(8, 8, 3, 2, 1)
        self.even = nn.Conv2d(8, 8, 2, 2)
        self.conv = nn.Conv2d(8, 4, 3, 1, 1)
        self.pool = nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.pool(self.conv(F.relu(self.even(self.down(self.stem(x)).relu()))))


class _Mixer(nn.Module):
    """Average-pool steps, a channels-last LayerNorm + Linear block (ConvNeXt style), a squeeze-excitation scale
    from a mean over the spatial dims, concatenation and a per-channel constant."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 5, 8, 2)
        self.pool1 = nn.AvgPool2d(2, 2)
        self.dw = nn.Conv2d(6, 6, 3, 1, 1, groups=6)
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 12)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 12)[:, None, None])
        self.pool2 = nn.MaxPool2d(2, 2)
        self.se = nn.Conv2d(18, 18, 1)

    def forward(self, x):
        x = self.pool1(self.stem(x))
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc(F.gelu(self.norm(y))).permute(0, 3, 1, 2) * self.scale
        z = self.pool2(torch.cat([x, y], 1))
        s = torch.sigmoid(self.se(z.mean((2, 3), keepdim=True)))
        return z * s - 0.25


def _small(cls) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval().to(DT)


def test_unknown_op_densifies_once():
    model = _small(_Roll)
    net = adatriton.convert(model, "8->16")
    densify = [p for p in net.plan if p.op == "densify"]
    assert [p.target for p in densify] == ["roll", "roll"] and "no rule" in densify[0].note
    assert net.code.count("map_densify(") == 1  # both rolls read one densified map
    x = _input(ODD)
    n, hf, wf = net.finest_grid(x)
    lm = LevelMap.random(n, hf, wf, 1, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        _assert_close(net(x, lm), simulate(model, x, lm.levels, 8, 1))
        _assert_close(net(x, LevelMap.uniform(n, hf, wf, 0, 1)), dilated_network(model, 8)(x))


def test_layer_without_a_rule_errors_or_runs_densely():
    model = _small(_EvenDown)
    with pytest.raises(GraphConversionError, match=r"node 'even' \(call_module even\): kernel \(2, 2\) is not odd"):
        adatriton.convert(model, "8->64")
    net = adatriton.convert(model, "8->64", unsupported="densify")
    # The map is densified before the 2x2 conv, which runs as it is; the rest is the dense network at OS8, where a
    # 2x2 average pool with stride 2 past OS8 is no merge at all.
    assert [p.op for p in net.plan if p.node in ("down", "even", "pool")] == ["conv", "densify", "dense-identity"]
    x = _input((64, 80))
    n, hf, wf = net.finest_grid(x)
    lm = LevelMap.random(n, hf, wf, 3, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        _assert_close(net(x, lm), simulate(model, x, lm.levels, 8, 3, unsupported="densify"))


def test_avg_pool_channels_last_block_and_squeeze_excitation():
    model = _small(_Mixer)
    net = adatriton.convert(model, "8->32")
    ops = {p.node: p.op for p in net.plan}
    assert ops["pool1"] == "downsample" and ops["norm"] == ops["fc"] == "pointwise"
    assert ops["mul"] == ops["mul_1"] == "per_sample" and ops["sub"] == "binary"
    assert ops["mean"] == "global_pool" and ops["cat"] == "cat" and ops["permute"] == "permute"
    x = _input(ODD)
    n, hf, wf = net.finest_grid(x)
    lm = LevelMap.random(n, hf, wf, 2, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        got = net(x, lm)
        assert got.shape == (n, 18, hf, wf)  # the map reaching the output is densified
        _assert_close(got, simulate(model, x, lm.levels, 8, 2))


def test_backward_matches_the_simulation():
    """Gradients with respect to the input and to a conv that runs on the map, against autograd through the
    dense simulation."""
    model = _model("mobilenet_v2")
    net = _net("mobilenet_v2", "8->32")
    x = _input(ODD, seed=4)
    n, hf, wf = net.finest_grid(x)
    lm = LevelMap.random(n, hf, wf, 2, generator=torch.Generator().manual_seed(10))
    weight = model.features[14].conv[1][0].weight  # the depthwise conv of the second step
    assert any(p.target == "features.14.conv.1.0" and p.downsample for p in net.adaptive_convs())
    grads = []
    for fn in (lambda xx: net(xx, lm), lambda xx: simulate(model, xx, lm.levels, 8, 2)):
        xx = x.clone().requires_grad_()
        (fn(xx) ** 2).sum().backward()
        grads.append((xx.grad, weight.grad.clone()))
        weight.grad = None
    for got, expected in zip(*grads):
        _assert_close(got, expected)
    model.zero_grad(set_to_none=True)


def test_train_mode_runs_and_backpropagates():
    """BatchNorm statistics over the elements, stochastic depth per sample, gradients into the adaptive convs."""
    torch.manual_seed(1)
    model = torchvision.models.efficientnet_b0().train()
    net = adatriton.convert(model, "8->32")
    x = torch.randn(2, 3, 40, 56)
    lm = LevelMap.random(2, 5, 7, 2, generator=torch.Generator().manual_seed(14))
    conv = next(p for p in net.adaptive_convs() if p.downsample and p.stage == 1)
    bn = model.get_submodule(conv.target.rsplit(".", 1)[0] + ".1")
    before = bn.running_mean.clone()
    net(x, lm).square().mean().backward()
    assert model.get_submodule(conv.target).weight.grad is not None
    assert not torch.equal(before, bn.running_mean)


@pytest.mark.skipif(not triton_runs_on(torch.device("cpu")), reason="needs TRITON_INTERPRET=1 on the CPU")
@pytest.mark.parametrize(("cls", "conversion"), [(_Mixer, "8->32"), (_Roll, "8->16")], ids=["mixer", "roll"])
def test_triton_backend_equals_torch(cls, conversion):
    """The Triton kernels (convs, densify) in the interpreter, float32."""
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(2, 3, *ODD)
    reference = adatriton.convert(model, conversion, backend="torch")
    n, hf, wf = reference.finest_grid(x)
    lm = LevelMap.random(n, hf, wf, reference.num_levels, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        expected = reference(x, lm)
        got = adatriton.convert(model, conversion, backend="triton")(x, lm)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_compiles_without_graph_breaks():
    """Both kinds of steps, a channels-last block, squeeze-excitation scaling and global pooling in one graph
    (a small model: dynamo takes about a minute per 200 nodes on this CPU); eager first, which builds the level
    map's index tables."""
    net = adatriton.convert(_small(_Mixer), "8->32")
    x = _input(ODD, seed=5)
    n, hf, wf = net.finest_grid(x)
    lm = LevelMap.random(n, hf, wf, 2, generator=torch.Generator().manual_seed(11))
    torch._dynamo.reset()
    with torch.no_grad():
        expected = net(x, lm)
        explanation = torch._dynamo.explain(net)(x, lm)
        assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
        torch._dynamo.reset()
        compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
        _assert_close(compiled(x, lm), expected)
    torch._dynamo.reset()


def test_explain_and_count_macs():
    pd = pytest.importorskip("pandas")
    model = _model("regnet_y_400mf")
    net = adatriton.convert(model, "8->32", backend="auto")
    x = _input((64, 96), batch=1)
    n, hf, wf = net.finest_grid(x)
    lm = LevelMap.random(n, hf, wf, 2, generator=torch.Generator().manual_seed(12))
    table = adatriton.explain(net, x, lm)
    assert isinstance(table, pd.DataFrame)
    adaptive = table[table["adaptive"]]
    assert list(adaptive["layer"]) == [p.target for p in net.adaptive_convs()]
    assert set(adaptive["backend"]) <= {"torch", "dense"} and (adaptive["reason"] != "").all()
    assert len(table) == sum(isinstance(m, nn.Conv2d) for m in model.modules())

    count = adatriton.count_macs(net, x, lm)
    rows = count.rows[count.rows["op"] == "conv"]
    assert list(rows["layer"]) == list(table["layer"]) and list(rows["MAs"]) == list(table["MAs"])
    assert count.elements == tuple(sum(lm.element_counts(j)) for j in range(3))
    assert count.at(count.elements) == count.total
    assert set(count.rows.loc[count.rows["part"] == "head", "layer"]) == {"fc"}
    # Uniform maps: the dense OS8 network and the strided original (counted by the generic meta path).
    dense8 = adatriton.count_macs(net.finest_network(), x).total
    assert adatriton.count_macs(net, x, LevelMap.uniform(n, hf, wf, 0, 2)).total == dense8
    assert adatriton.count_macs(net, x, LevelMap.uniform(n, hf, wf, 2, 2)).total == adatriton.count_macs(model, x).total
    assert adatriton.count_macs(model, x).total < count.total < dense8


def test_bad_inputs_have_clear_errors():
    net = _net("mobilenet_v2", "8->32")
    x = _input((40, 56), batch=1)
    with pytest.raises(ValueError, match="needs a level map"):
        net(x)
    with pytest.raises(LevelMapError, match=r"shape \(1, 4, 4\) but the features need \(N, Hf, Wf\) = \(1, 5, 7\)"):
        net(x, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(LevelMapError, match="K=1 levels but output_stride '8->32' needs K=2"):
        net(x, LevelMap.uniform(1, 5, 7, 0, 1))
    dense = net.finest_network()
    with pytest.raises(LevelMapError, match="outside 0..0"):
        dense(x, torch.ones(1, 5, 7, dtype=torch.long))
    with torch.no_grad():
        dense(x, torch.zeros(1, 5, 7, dtype=torch.long))  # an all-zero map of the OS8 grid is accepted
    with pytest.raises(GraphConversionError, match="reaches output stride 32 at most"):
        adatriton.convert(_model("mobilenet_v2"), "8->64")
    with pytest.raises(GraphConversionError, match="reaches output stride 1 at most"):
        adatriton.convert(nn.Conv2d(3, 3, 3), "8->32")
    with pytest.raises(ValueError, match="unsupported must be one of"):
        adatriton.convert(_model("mobilenet_v2"), "8->32", unsupported="skip")
    with pytest.raises(ValueError, match="a->b needs a < b"):
        adatriton.convert(_model("mobilenet_v2"), "16->8")


def test_per_sample_and_global_pool_ops_equal_their_dense_forms():
    """The new ops against their definitions on the densified map, at an odd size with every level present."""
    lm = LevelMap.random(2, 7, 9, 2, generator=torch.Generator().manual_seed(13))
    x = adatriton.MultiResMap(torch.randn(lm.layout(2).num_elements, 5, dtype=DT), lm.layout(2))
    dense = x.densify()
    pooled = adatriton.ops.global_avg_pool(x)
    torch.testing.assert_close(pooled, dense.mean((2, 3)), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(adatriton.ops.global_max_pool(x), dense.amax((2, 3)), rtol=0, atol=0)
    scaled = adatriton.ops.per_sample(x, pooled, operator.truediv, reflected=True)
    torch.testing.assert_close(scaled.densify(), pooled[:, :, None, None] / dense, rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="per-sample vectors must be"):
        adatriton.ops.per_sample(x, torch.ones(3, 5, dtype=DT))
