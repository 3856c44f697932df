"""Adaptive ResNets (docs/semantics.md §3 consequences): uniform maps equal torchvision's strided/dilated networks,
mixed maps equal the dense simulation, on both backends, float64, eval mode with randomised BatchNorm statistics."""

import copy
import functools

import pytest
import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

import adatriton
from adatriton import LevelMap, LevelMapError
from tests.reference.simulation import simulate_resnet_features

DT = torch.float64
#: torchvision's replace_stride_with_dilation for the dense network at each output stride.
DILATION = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
CONVERSIONS = {"8->32": (8, 2), "8->16": (8, 1), "16->32": (16, 1)}
#: Odd and even input sizes on ResNet-50; ResNet-101 (the paper's network: the same blocks, 23 instead of 6 in
#: layer3) at the even size only. An odd size matters where the grid changes, in the stem and each layer's first
#: block, which the two share; each ResNet-101 case costs about twice a ResNet-50 one.
ARCH_SIZES = [
    pytest.param("resnet50", (64, 96), id="resnet50-64x96"),
    pytest.param("resnet50", (65, 89), id="resnet50-odd-65x89"),
    pytest.param("resnet101", (64, 96), id="resnet101-64x96", marks=pytest.mark.slow),
]


@functools.cache
def _weights(arch: str) -> dict:
    """Random weights with randomised BatchNorm statistics, so eval-mode BN is not the identity."""
    torch.manual_seed(123)
    model = getattr(torchvision.models, arch)()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.state_dict()


@functools.cache
def _model(arch: str, output_stride: int = 32) -> torchvision.models.ResNet:
    """Cached: tests only read these models (train-mode tests build their own)."""
    model = getattr(torchvision.models, arch)(replace_stride_with_dilation=DILATION[output_stride])
    model.load_state_dict(_weights(arch))
    return model.eval().to(DT)


def _features(model, x):
    return IntermediateLayerGetter(model, {"layer4": "out"})(x)["out"]


def _finest(size, stride):
    h, w = size
    for _ in range({8: 3, 16: 4}[stride]):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def _assert_close(actual, expected):
    """Float64 round-off, relative to the magnitude of the features (~1e2 after 33 random blocks)."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= 1e-11 * max(scale, 1.0), f"max abs diff {err:.3g} at scale {scale:.3g}"
    return err


@pytest.mark.parametrize("conversion", list(CONVERSIONS))
@pytest.mark.parametrize(("arch", "size"), ARCH_SIZES)
def test_uniform_level_equals_torchvision(arch, conversion, size):
    """L = v everywhere equals the torchvision network that downsamples v more times (densified)."""
    finest, k = CONVERSIONS[conversion]
    net = adatriton.convert(_model(arch, 32), conversion).eval()
    x = torch.randn(2, 3, *size, dtype=DT)
    hf, wf = _finest(size, finest)
    for level in range(k + 1):
        ref = _features(_model(arch, finest * 2**level), x)
        up = ref.repeat_interleave(2**level, 2).repeat_interleave(2**level, 3)[:, :, :hf, :wf]
        got = net.forward_features(x, LevelMap.uniform(2, hf, wf, level, k))
        _assert_close(got, up)


def test_uniform_logits_equal_torchvision_at_aligned_size():
    x = torch.randn(1, 3, 128, 128, dtype=DT)
    net = adatriton.convert(_model("resnet50"), "8->32")
    for level, stride in ((0, 8), (1, 16), (2, 32)):
        ref = _model("resnet50", stride)(x)
        _assert_close(net(x, torch.full((1, 16, 16), level)), ref)


@pytest.mark.parametrize("backend", ["torch", "dense"])
@pytest.mark.parametrize("conversion", list(CONVERSIONS))
@pytest.mark.parametrize(("arch", "size"), ARCH_SIZES)
def test_mixed_levels_equal_dense_simulation(arch, conversion, size, backend):
    finest, k = CONVERSIONS[conversion]
    plain = _model(arch, 32)
    hf, wf = _finest(size, finest)
    lm = LevelMap.random(2, hf, wf, k, generator=torch.Generator().manual_seed(hf + k))
    assert lm.levels.unique().numel() == k + 1 and not torch.equal(lm.levels[0], lm.levels[1])
    x = torch.randn(2, 3, *size, dtype=DT)
    net = adatriton.convert(plain, conversion, backend=backend)
    with torch.no_grad():
        got = net.forward_features(x, lm)
        expected = simulate_resnet_features(plain, x, lm.levels, conversion)
        _assert_close(got, expected)
        logits = plain.fc(torch.flatten(plain.avgpool(expected), 1))
        _assert_close(net(x, lm.levels.int()), logits)


def test_dense_output_strides_equal_torchvision():
    x = torch.randn(1, 3, 64, 96, dtype=DT)
    for stride in (8, 16, 32):
        net = adatriton.convert(_model("resnet50", 8), str(stride))  # the input model's own strides do not matter
        _assert_close(net(x), _model("resnet50", stride)(x))


def test_converted_model_shares_weights_and_state_dict_keys():
    model = _model("resnet50")
    net = adatriton.convert(model, "8->32")
    assert list(net.state_dict()) == list(model.state_dict())
    assert all(a is b for a, b in zip(net.parameters(), model.parameters()))
    net.load_state_dict(model.state_dict())


def test_forward_features_runs_the_modules_of_the_converted_network():
    """``forward_features`` / ``forward_backbone`` run this network's own children: a hook on a re-strided copy of a
    dilated model's conv (``net.layer4[1].conv2``, not the model's) fires in both."""
    model = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    net = adatriton.convert(model, "8->32")
    assert net.layer4[1].conv2 is not model.layer4[1].conv2 and net.layer4[1].bn2 is model.layer4[1].bn2
    calls = []
    net.layer4[1].conv2.register_forward_hook(lambda *args: calls.append(1))
    lm = LevelMap.uniform(1, 8, 8, 1, 2)
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 64), lm)
        net.forward_features(torch.randn(1, 3, 64, 64), lm)
        net.forward_backbone(torch.randn(1, 3, 64, 64), lm, ("layer3", "layer4"))
    assert len(calls) == 3


def test_forward_features_sees_a_child_replaced_after_conversion():
    """``net.layer4 = ...`` after conversion: ``forward_features`` runs the new layer, as ``forward`` does, and the
    dense finest-stride network holds it."""
    model = torchvision.models.resnet50().eval()
    net = adatriton.convert(model, "8->32", example_input=torch.empty(1, 3, 64, 64))
    x, lm = torch.randn(1, 3, 64, 64), LevelMap.uniform(1, 8, 8, 1, 2)
    finest = net.finest_network()
    assert net.finest_network() is finest  # kept while nothing changes
    with torch.no_grad():
        before = net.forward_features(x, lm)
        replaced = copy.deepcopy(net.layer4)
        for p in replaced.parameters():
            p.mul_(0.5)
        net.layer4 = model.layer4 = replaced
        after = net.forward_features(x, lm)
        expected = adatriton.convert(model, "8->32", example_input=x).forward_features(x, lm)  # converted anew
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)
    assert net.finest_network() is not finest and net.finest_network().layer4 is replaced


def test_train_mode_runs_and_backpropagates():
    model = torchvision.models.resnet50().train()
    net = adatriton.convert(model, "8->32")
    lm = LevelMap.random(2, 8, 8, 2, generator=torch.Generator().manual_seed(0))
    before = model.layer3[0].bn2.running_mean.clone()
    net(torch.randn(2, 3, 64, 64), lm).sum().backward()
    assert model.layer3[0].conv2.weight.grad is not None
    assert not torch.equal(before, model.layer3[0].bn2.running_mean)


def test_bad_inputs_have_clear_errors():
    net = adatriton.convert(torchvision.models.resnet50(), "8->32").eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="needs a level map"):
        net(x)
    with pytest.raises(LevelMapError, match=r"shape \(1, 4, 4\) but the features need \(N, Hf, Wf\) = \(1, 8, 8\)"):
        net(x, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(LevelMapError, match="K=1 levels but output_stride '8->32' needs K=2"):
        net(x, LevelMap.uniform(1, 8, 8, 0, 1))
    with pytest.raises(ValueError, match="integer dtype"):
        net(x, torch.zeros(1, 8, 8))
    bad = torch.zeros(1, 8, 8, dtype=torch.long)
    bad[0, 0, 0] = 2
    with pytest.raises(ValueError, match="not aligned"):
        net(x, bad)
    with pytest.raises(LevelMapError, match="on the meta device, which holds no values"):
        net(x, torch.zeros(1, 8, 8, dtype=torch.long, device="meta"))
    with pytest.raises(LevelMapError, match="outside 0..0"):
        adatriton.convert(torchvision.models.resnet50(), "16")(x, torch.ones(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="output_stride must be one of"):
        adatriton.convert(torchvision.models.resnet50(), "4")
    # Other models take the graph path (tests/models/test_zoo.py), which says why a model cannot be converted.
    with pytest.raises(ValueError, match="reaches output stride 1 at most"):
        adatriton.convert(torch.nn.Conv2d(3, 3, 3), "8->32")


def test_levels_from_a_callable_on_the_finest_grid_features():
    """A map predicted from the features entering the adaptive part: called once, same result as passing it."""
    net = adatriton.convert(_model("resnet50"), "8->32")
    x = torch.randn(2, 3, 64, 96, dtype=DT)
    lm = LevelMap.random(2, 8, 12, 2, generator=torch.Generator().manual_seed(3))
    seen = []

    def predict(features):
        seen.append(features.shape)
        return lm

    with torch.no_grad():
        _assert_close(net.forward_features(x, predict), net.forward_features(x, lm))
    assert seen == [(2, 512, 8, 12)]
