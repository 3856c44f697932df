"""Drop-in modules (``adatriton.nn``), convert's sharing rule and filter_fn, SoftPool and deformable conversions."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

import adatriton
from adatriton import AdaptiveConv2d, LevelMap, MultiResMap
from adatriton import ops as AF
from tests.models.test_resnet import DILATION, DT, _assert_close, _finest, _weights
from tests.reference.simulation import simulate_resnet_features

SIZES = [pytest.param((64, 96), id="64x96"), pytest.param((65, 89), id="odd-65x89")]


def _resnet50(output_stride: int = 32) -> torchvision.models.ResNet:
    """A fresh model (conversion swaps its children in place) with the shared random weights, float64, eval."""
    model = torchvision.models.resnet50(replace_stride_with_dilation=DILATION[output_stride])
    model.load_state_dict(_weights("resnet50"))
    return model.eval().to(DT)


def _multires(channels: int, size=(9, 11), num_levels=2, seed=0) -> MultiResMap:
    g = torch.Generator().manual_seed(seed)
    lm = LevelMap.random(2, *size, num_levels, generator=g)
    return MultiResMap.from_dense(torch.randn(2, channels, *size, generator=g, dtype=DT), lm)


# ------------------------------------------------------------------------------------------------ on tensors
CONV_CASES = {
    "3x3": dict(kernel_size=3, padding=1),
    "3x3-stride2": dict(kernel_size=3, stride=2, padding=1),
    "3x3-dil2-groups2": dict(kernel_size=3, padding=2, dilation=2, groups=2),
    "1x1-stride2-nobias": dict(kernel_size=1, stride=2, bias=False),
    "5x5-same": dict(kernel_size=5, padding="same"),
    "3x3-reflect": dict(kernel_size=3, padding=1, padding_mode="reflect"),
    "rect-2x3": dict(kernel_size=(2, 3), stride=(1, 2)),
}


@pytest.mark.parametrize("kwargs", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_adaptive_conv_is_conv2d_on_tensors(kwargs):
    torch.manual_seed(0)
    plain = nn.Conv2d(6, 8, **kwargs)
    torch.manual_seed(0)
    drop_in = AdaptiveConv2d(6, 8, **kwargs)  # same constructor, same initialisation
    assert isinstance(drop_in, nn.Conv2d)
    assert list(drop_in.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(drop_in.state_dict().values(), plain.state_dict().values()))
    x = torch.randn(2, 6, 13, 17)
    assert torch.equal(drop_in(x), plain(x))
    swapped = adatriton.swap_modules(plain)
    assert type(swapped) is AdaptiveConv2d and swapped.weight is plain.weight
    assert torch.equal(swapped(x), plain(x))


def test_other_drop_ins_are_their_parents_on_tensors():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 9, 7)
    bn, drop_bn = nn.BatchNorm2d(5), adatriton.AdaptiveBatchNorm2d(5)
    drop_bn.load_state_dict(bn.state_dict())
    assert torch.equal(drop_bn(x), bn(x))  # train mode: same output and the same running-statistics update
    assert all(torch.equal(a, b) for a, b in zip(drop_bn.state_dict().values(), bn.state_dict().values()))
    assert torch.equal(drop_bn.eval()(x), bn.eval()(x))
    assert torch.equal(adatriton.AdaptiveReLU()(x), nn.ReLU()(x))
    for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, ceil_mode=True)):
        assert torch.equal(adatriton.AdaptiveMaxPool2d(**kwargs)(x), nn.MaxPool2d(**kwargs)(x))


def test_swap_modules_shares_parameters_and_keeps_outputs():
    model = _resnet50()
    x = torch.randn(1, 3, 64, 64, dtype=DT)
    expected = model(x)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    seen = []

    def only_layer4(module, fqn):
        seen.append(fqn)
        return fqn.startswith("layer4")

    assert adatriton.swap_modules(model, only_layer4) is model
    assert "layer4.0.downsample.0" in seen and "layer1.0.conv1" in seen and "fc" not in seen  # fc is no candidate
    assert type(model.layer4[0].conv2) is AdaptiveConv2d and type(model.layer4[0].bn2) is adatriton.AdaptiveBatchNorm2d
    assert type(model.layer3[0].conv2) is nn.Conv2d
    assert all(p is params[name] for name, p in model.named_parameters())  # nothing copied
    assert all(b is buffers[name] for name, b in model.named_buffers())
    assert torch.equal(model(x), expected)


# ------------------------------------------------------------------------------------- on multi-resolution maps
@pytest.mark.parametrize(
    "kwargs, spacing, downsample",
    [
        (dict(kernel_size=3, padding=1), 1, False),
        (dict(kernel_size=3, padding=2, dilation=2, groups=2), 2, False),
        (dict(kernel_size=3, stride=2, padding=1), 1, True),
        (dict(kernel_size=1, stride=2), 1, True),
        (dict(kernel_size=5, padding="same", dilation=2), 2, False),
    ],
    ids=["3x3", "dil2-groups2", "stride2", "1x1-stride2", "5x5-same-dil2"],
)
def test_adaptive_conv_on_multires_is_the_spec_conv(kwargs, spacing, downsample):
    conv = AdaptiveConv2d(4, 6, **kwargs).to(DT)
    x = _multires(4)
    got = conv(x)
    expected = AF.conv2d(x, conv.weight, conv.bias, spacing, conv.groups, downsample)
    assert got.layout.same_as(expected.layout)
    torch.testing.assert_close(got.values, expected.values, rtol=0, atol=1e-12)


def test_other_drop_ins_on_multires():
    x = _multires(5)
    bn = adatriton.AdaptiveBatchNorm2d(5).to(DT).eval()
    bn.running_mean.uniform_(-1, 1)
    torch.testing.assert_close(bn(x).values, AF.batch_norm(x, bn).values, rtol=0, atol=0)
    assert torch.equal(adatriton.AdaptiveReLU(inplace=True)(x).values, x.values.relu())
    pooled = adatriton.AdaptiveMaxPool2d(2, 2)(x)
    assert torch.equal(pooled.values, AF.downsample(x, "max").values) and pooled.stage == 1


@pytest.mark.parametrize(
    "module, match",
    [
        (AdaptiveConv2d(4, 4, 3, padding=0), "centred padding"),
        (AdaptiveConv2d(4, 4, 3, stride=3, padding=1), "stride 1 or 2"),
        (AdaptiveConv2d(4, 4, 3, padding=1, padding_mode="circular"), "padding_mode"),
        (AdaptiveConv2d(4, 4, (1, 3), padding=(0, 1)), "square kernel_size"),
        (adatriton.AdaptiveMaxPool2d(3, 2, 1), "kernel_size=2, stride=2"),
    ],
    ids=["uncentred", "stride3", "circular", "rectangular", "maxpool-3x3"],
)
def test_drop_ins_reject_what_has_no_multires_meaning(module, match):
    with pytest.raises(ValueError, match=match):
        module.to(DT)(_multires(4))


def test_torchvision_bottleneck_runs_on_multires_through_its_modules():
    """torchvision's own Bottleneck.forward on a MultiResMap (module by module) equals the graph path's conversion of
    the block (each conv-BN(-add)-ReLU one fused call)."""
    block = adatriton.swap_modules(copy.deepcopy(_resnet50().layer3[0]))  # stride 2, dilation 1: one step
    x = _multires(512, size=(10, 13), num_levels=1)  # the block's one step
    got = block(x)
    dense = x.densify()
    fused = adatriton.models.convert_graph(block, "1->2", dense)
    # conv2, conv3 + add and the shortcut on the map (conv1 runs densely before the step, fused there too)
    fused_on_map = [p.target for p in fused.adaptive_convs() if p.note.startswith("fused: ")]
    assert fused_on_map == ["conv2", "conv3", "downsample.0"]
    assert got.stage == 1
    torch.testing.assert_close(got.densify(), fused(dense, x.levelmap), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ conversion
@pytest.mark.parametrize("dilated", [False, True], ids=["strided", "dilated-os8"])
def test_convert_shares_and_does_not_modify_the_model(dilated):
    """The one rule (docs/api.md): ``convert`` leaves the model as it was and the converted module holds its own
    children; only the re-strided convs of a dilated ResNet (and the containers above them) are shallow copies."""
    model = _resnet50(8 if dilated else 32)
    x = torch.randn(1, 3, 64, 64, dtype=DT)
    expected = model(x)
    types = {name: type(m) for name, m in model.named_modules()}
    weights = {name: p for name, p in model.named_parameters()}
    net = adatriton.convert(model, "8->32")
    assert {name: type(m) for name, m in model.named_modules()} == types
    assert all(p is weights[name] for name, p in net.named_parameters())
    assert list(net.state_dict()) == list(model.state_dict())
    assert net.layer1 is model.layer1 and (net.layer4 is model.layer4) is not dilated
    assert net.layer3[0].bn2 is model.layer3[0].bn2
    assert torch.equal(model(x), expected)  # the source model still computes what it did


def test_convert_filter_fn_swaps_the_layers_it_picks_in_place():
    model = _resnet50()
    x = torch.randn(1, 3, 64, 64, dtype=DT)
    expected = model(x)
    net = adatriton.convert(model, "8->32", filter_fn=lambda module, fqn: not fqn.startswith(("conv1", "layer1")))
    assert type(model.conv1) is nn.Conv2d and type(model.layer1[0].conv1) is nn.Conv2d  # kept by filter_fn
    assert type(model.layer3[1].conv2) is AdaptiveConv2d and net.layer3 is model.layer3
    assert torch.equal(model(x), expected)
    lm = LevelMap.uniform(1, 8, 8, 0, 2)
    _assert_close(net(x, lm), adatriton.convert(_resnet50(), "8->32")(x, lm))  # either kind converts the same


# ------------------------------------------------------------------------------------------------ SoftPool
def _softpool_resnet_features(model, x, output_stride: int):
    """Reference written from the rule: torchvision's bottlenecks, with the stride-2 subsampling of layer3/layer4
    (where the network goes beyond OS8) done by SoftPool after conv2 and before the shortcut's 1x1 conv."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer2(model.layer1(x))
    dilation = 1
    for name in ("layer3", "layer4"):
        strided = output_stride >= (16 if name == "layer3" else 32)
        for b, block in enumerate(getattr(model, name)):
            first = b == 0
            d = dilation if first or strided else dilation * 2
            out = block.relu(block.bn1(block.conv1(x)))
            out = F.conv2d(out, block.conv2.weight, None, 1, d, d)
            out = block.relu(block.bn2(AF.softpool2d(out) if first and strided else out))
            out = block.bn3(block.conv3(out))
            identity = x
            if block.downsample is not None:
                conv, norm = block.downsample
                identity = norm(F.conv2d(AF.softpool2d(x) if strided else x, conv.weight))
            x = block.relu(out + identity)
        dilation = d if strided else dilation * 2
    return x


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("conversion, finest, k", [("8->32", 8, 2), ("8->16", 8, 1), ("16->32", 16, 1)])
def test_softpool_uniform_levels_equal_the_dense_softpool_network(conversion, finest, k, size):
    model = _resnet50()
    net = adatriton.convert(model, conversion, downsampling="softpool").eval()
    x = torch.randn(1, 3, *size, dtype=DT)
    hf, wf = _finest(size, finest)
    with torch.no_grad():
        for level in range(k + 1):
            stride = finest * 2**level
            ref = _softpool_resnet_features(model, x, stride)
            dense = adatriton.convert(model, str(stride), downsampling="softpool").forward_features(x)
            _assert_close(dense, ref)
            up = ref.repeat_interleave(2**level, 2).repeat_interleave(2**level, 3)[:, :, :hf, :wf]
            _assert_close(net.forward_features(x, LevelMap.uniform(1, hf, wf, level, k)), up)
        if k and finest == 8:  # SoftPool changes the numbers: the strided network is not what was compared
            strided = adatriton.convert(model, "8->32" if k == 2 else "8->16").forward_features(
                x, LevelMap.uniform(1, hf, wf, k, k)
            )
            assert (strided - net.forward_features(x, LevelMap.uniform(1, hf, wf, k, k))).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["torch", "dense"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("conversion", ["8->32", "8->16"])
def test_softpool_mixed_levels_equal_dense_simulation(conversion, size, backend):
    k = {"8->32": 2, "8->16": 1}[conversion]
    model = _resnet50()
    hf, wf = _finest(size, 8)
    lm = LevelMap.random(2, hf, wf, k, generator=torch.Generator().manual_seed(7 + hf))
    x = torch.randn(2, 3, *size, dtype=DT)
    net = adatriton.convert(model, conversion, backend=backend, downsampling="softpool")
    with torch.no_grad():
        _assert_close(
            net.forward_features(x, lm), simulate_resnet_features(model, x, lm.levels, conversion, "softpool")
        )


def test_bad_downsampling_is_rejected():
    with pytest.raises(ValueError, match="downsampling must be one of"):
        adatriton.convert(_resnet50(), "8->32", downsampling="avg")


# ------------------------------------------------------------------------------------------------ deformable
def _random_offsets(model, scale: float = 0.02) -> None:
    """Offset weights giving samples a few pixels away from the grid points (features are ~1-10 here)."""
    torch.manual_seed(5)
    for module in model.modules():
        if isinstance(module, adatriton.DeformableConv2d):
            module.offset.weight.data.normal_(0, scale)


def test_make_deformable_adds_zero_offsets_to_the_last_block():
    model = _resnet50()
    x = torch.randn(1, 3, 64, 64, dtype=DT)
    expected = model(x)
    adatriton.make_deformable(model)
    conv = model.layer4[2].conv2
    assert isinstance(conv, adatriton.DeformableConv2d) and conv.weight is model.layer4[2].conv2.weight
    assert "layer4.2.conv2.offset.weight" in model.state_dict()
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)  # zero offsets: the plain conv
    _random_offsets(model)
    assert (model(x) - expected).abs().max() > 1e-3
    with pytest.raises(TypeError, match="not a Conv2d"):
        adatriton.make_deformable(model, ["layer4.2.bn2"])


@pytest.mark.parametrize("size", SIZES)
def test_deformable_level0_equals_the_dense_deformable_network(size):
    """L = 0 equals torchvision's dilated OS8 ResNet whose last block samples with torchvision's deform_conv2d."""
    model = adatriton.make_deformable(_resnet50())
    _random_offsets(model)
    dense8 = adatriton.make_deformable(_resnet50(8))  # the module's own dilation 4 / padding 4
    dense8.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, *size, dtype=DT)
    hf, wf = _finest(size, 8)
    with torch.no_grad():
        ref = IntermediateLayerGetter(dense8, {"layer4": "out"})(x)["out"]
        _assert_close(adatriton.convert(model, "8").forward_features(x), ref)
        got = adatriton.convert(model, "8->32").forward_features(x, LevelMap.uniform(1, hf, wf, 0, 2))
        _assert_close(got, ref)


@pytest.mark.parametrize("backend", ["torch", "dense"])
@pytest.mark.parametrize("size", SIZES)
def test_deformable_mixed_levels_equal_dense_simulation(size, backend):
    model = adatriton.make_deformable(_resnet50())
    _random_offsets(model)
    hf, wf = _finest(size, 8)
    lm = LevelMap.random(2, hf, wf, 2, generator=torch.Generator().manual_seed(3 + wf))
    x = torch.randn(2, 3, *size, dtype=DT)
    net = adatriton.convert(model, "8->32", backend=backend)
    with torch.no_grad():
        _assert_close(net.forward_features(x, lm), simulate_resnet_features(model, x, lm.levels, "8->32"))


# ------------------------------------------------------------------------------------------------ multiply-adds
def test_count_macs_of_softpool_and_deformable_networks():
    """SoftPool conv2s compute every pre-step element (as the dense SoftPool network's stride-1 conv2); a
    deformable conv adds its offset conv's k*k*Cin*2k*k MAs per element."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _resnet50()
    x = torch.randn(1, 3, 64, 96, dtype=DT)
    net = adatriton.convert(model, "8->32", downsampling="softpool")
    for level, stride in ((0, "8"), (1, "16"), (2, "32")):
        dense = adatriton.convert(model, stride, downsampling="softpool")
        expected = adatriton.count_macs(dense, x).backbone
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            dense.forward_features(x)
        assert 2 * expected == flops.get_total_flops()
        assert adatriton.count_macs(net, x, LevelMap.uniform(1, 8, 12, level, 2)).backbone == expected
    strided = adatriton.count_macs(adatriton.convert(model, "32"), x).backbone
    assert adatriton.count_macs(adatriton.convert(model, "32", downsampling="softpool"), x).backbone > strided

    plain = adatriton.count_macs(adatriton.convert(model, "8"), x).backbone
    adatriton.make_deformable(model)
    offset_macs = 9 * 512 * 18 * 8 * 12  # layer4.2.conv2's offset conv over the 8x12 OS8 grid
    lm = LevelMap.random(1, 8, 12, 2, generator=torch.Generator().manual_seed(0))
    assert adatriton.count_macs(adatriton.convert(model, "8"), x).backbone == plain + offset_macs
    assert adatriton.count_macs(adatriton.convert(model, "8->32"), x, LevelMap.uniform(1, 8, 12, 0, 2)).backbone == (
        plain + offset_macs
    )
    rows = adatriton.count_macs(adatriton.convert(model, "8->32"), x, lm).rows.set_index("layer")
    stage2 = lm.layout(2).num_elements
    assert rows.loc["layer4.2.conv2.offset", "MAs"] == 9 * 512 * 18 * stage2
    assert rows.loc["layer4.2.conv2", "MAs"] == 9 * 512 * 512 * stage2
