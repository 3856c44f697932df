"""Segmentation models (docs/semantics.md §7): converted FCN / DeepLabv3 / DeepLabv3+ models share the weights, equal
the torchvision model at dense OS8, equal dense OS8 for L = 0, and equal the dense simulation of the backbone
(``tests/simulation.py``) followed by the heads for mixed level maps. Float64, eval mode, random weights with
randomised BatchNorm statistics."""

import copy
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import segmentation as tvseg
from torchvision.models._utils import IntermediateLayerGetter

import adatriton
from adatriton import LevelMap
from adatriton.models import segmentation
from tests.reference.simulation import simulate_resnet_features

DT = torch.float64
CONVERSIONS = {"8->32": (8, 2), "8->16": (8, 1), "16->32": (16, 1)}

# name -> (builder, backbone arch, input (N, H, W), conversions checked against the simulation).
# Input sizes stay small (ResNet-152 at a tiny one); the odd sizes give finest grids that are not multiples of
# the 4x4 blocks (docs/semantics.md §4).
MODELS = {
    "fcn_resnet50": (
        lambda: tvseg.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True),
        "resnet50",
        (2, 64, 96),
        ("8->32", "8->16", "16->32"),
    ),
    "deeplabv3_resnet50": (
        lambda: tvseg.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True),
        "resnet50",
        (2, 64, 96),
        ("8->32", "8->16", "16->32"),
    ),
    "fcn_resnet101": (
        lambda: tvseg.fcn_resnet101(weights=None, weights_backbone=None),
        "resnet101",
        (1, 72, 88),
        ("8->32",),
    ),
    "deeplabv3_resnet101": (
        lambda: tvseg.deeplabv3_resnet101(weights=None, weights_backbone=None, aux_loss=True),
        "resnet101",
        (1, 64, 64),
        ("8->32",),
    ),
    "deeplabv3plus_resnet50": (
        lambda: segmentation.deeplabv3plus("resnet50"),
        "resnet50",
        (2, 64, 96),
        ("8->32", "8->16", "16->32"),
    ),
    "fcn_resnet152": (
        lambda: segmentation.fcn("resnet152", aux=True),
        "resnet152",
        (1, 48, 64),
        ("8->32",),
    ),
    "deeplabv3plus_resnet152": (
        lambda: segmentation.deeplabv3plus("resnet152"),
        "resnet152",
        (1, 48, 64),
        ("8->32",),
    ),
}


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so eval-mode BN is not (nearly) the identity."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module", params=list(MODELS))
def seg(request):
    """One model at a time (module scope groups the tests by model, so only one is alive)."""
    build, arch, shape, conversions = MODELS[request.param]
    torch.manual_seed(7)
    model = _randomise_bn(build()).eval().to(DT)
    n, h, w = shape
    return SimpleNamespace(
        name=request.param,
        model=model,
        arch=arch,
        x=torch.randn(n, 3, h, w, dtype=DT, generator=torch.Generator().manual_seed(1)),
        conversions=conversions,
    )


def _finest(size, stride):
    h, w = size
    for _ in range({8: 3, 16: 4}[stride]):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def _assert_close(actual: dict, expected: dict):
    """Same keys, values equal to float64 round-off relative to their magnitude (which grows with depth)."""
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
        err = (actual[key] - expected[key]).abs().max().item()
        scale = expected[key].abs().max().item()
        assert err <= 1e-11 * max(scale, 1.0), f"{key}: max abs diff {err:.3g} at scale {scale:.3g}"


def _simulated_reference(
    model: nn.Module, arch: str, x, levels, conversion: str, downsampling: str = "top_left"
) -> OrderedDict:
    """Dense reference for a mixed level map, independent of adatriton's backbone code.

    The backbone maps come from ``tests/simulation.py``: ``simulate_resnet_features`` on a ResNet with default
    strides holding the model's backbone weights gives the densified ``layer4`` output; on the same ResNet with
    ``layer4`` emptied it stops after ``layer3`` and gives the densified ``layer3`` output (for the auxiliary
    head). ``layer1`` (DeepLabv3+ decoder) is dense. The model's heads then run on these maps and are upsampled
    to the input size, as torchvision's segmentation models do.
    """
    plain = getattr(torchvision.models, arch)().to(DT).eval()
    incompatible = plain.load_state_dict(model.backbone.state_dict(), strict=False)
    assert sorted(incompatible.missing_keys) == ["fc.bias", "fc.weight"] and not incompatible.unexpected_keys
    features = {"out": simulate_resnet_features(plain, x, levels, conversion, downsampling)}
    if model.aux_classifier is not None:
        up_to_layer3 = SimpleNamespace(**{**dict(plain.named_children()), "layer4": nn.Sequential()})
        features["aux"] = simulate_resnet_features(up_to_layer3, x, levels, conversion, downsampling)
    size = x.shape[-2:]
    if isinstance(model, segmentation.DeepLabV3Plus):
        features["low_level"] = plain.layer1(plain.maxpool(plain.relu(plain.bn1(plain.conv1(x)))))
        logits = model.classifier(features)
    else:
        logits = model.classifier(features["out"])
    result = OrderedDict(out=F.interpolate(logits, size=size, mode="bilinear", align_corners=False))
    if model.aux_classifier is not None:
        aux = model.aux_classifier(features["aux"])
        result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
    return result


def test_conversion_shares_weights_and_state_dict_keys(seg):
    reference = seg.model.state_dict()
    for output_stride in ("8", "8->32", "16->32"):
        net = adatriton.convert(seg.model, output_stride)
        assert isinstance(net, segmentation.AdaptiveSegmentationModel)
        state = net.state_dict()
        assert list(state) == list(reference)
        assert all(state[k].data_ptr() == reference[k].data_ptr() for k in reference), "buffers are not shared"
        assert all(a is b for a, b in zip(net.parameters(), seg.model.parameters(), strict=True))
        net.load_state_dict(reference)


def test_dense_os8_equals_torchvision(seg):
    """torchvision's segmentation models are dilated OS8 networks: "8" reproduces them."""
    with torch.no_grad():
        expected = seg.model(seg.x)
        got = adatriton.convert(seg.model, "8")(seg.x)
    assert isinstance(got, OrderedDict) and list(got) == (
        ["out", "aux"] if seg.model.aux_classifier is not None else ["out"]
    )
    assert got["out"].shape == (seg.x.shape[0], 21, *seg.x.shape[2:])
    _assert_close(got, expected)


def test_level_zero_equals_dense_os8(seg):
    n, _, h, w = seg.x.shape
    with torch.no_grad():
        dense = adatriton.convert(seg.model, "8")(seg.x)
        for conversion in ("8->32", "8->16"):
            k = CONVERSIONS[conversion][1]
            net = adatriton.convert(seg.model, conversion)
            _assert_close(net(seg.x, LevelMap.uniform(n, *_finest((h, w), 8), 0, k)), dense)


def test_mixed_levels_equal_dense_simulation(seg):
    n, _, h, w = seg.x.shape
    for conversion in seg.conversions:
        finest, k = CONVERSIONS[conversion]
        hf, wf = _finest((h, w), finest)
        lm = LevelMap.random(n, hf, wf, k, generator=torch.Generator().manual_seed(hf * wf + k))
        assert lm.levels.unique().numel() == k + 1, "the level map should mix all levels"
        net = adatriton.convert(seg.model, conversion)
        with torch.no_grad():
            got = net(seg.x, lm)
            expected = _simulated_reference(seg.model, seg.arch, seg.x, lm.levels, conversion)
        _assert_close(got, expected)


def test_conversion_leaves_the_model_and_softpool_equals_the_simulation(seg):
    """Every conversion reads the dilated backbone with the strided ResNet's strides on shallow copies (``restrided``)
    and leaves the model as it was, sharing its parameters; ``method="graph"`` gives the plain graph module of the
    same network. SoftPool merges (layer3 and layer4) equal the dense simulation, float64, a per-sample mixed map."""
    model = copy.deepcopy(seg.model)
    strides = [(m.stride, m.dilation, m.padding) for m in model.modules() if isinstance(m, nn.Conv2d)]
    n, _, h, w = seg.x.shape
    lm = LevelMap.random(n, *_finest((h, w), 8), 2, generator=torch.Generator().manual_seed(5))
    for conversion in (*seg.conversions, "8", "16"):
        graph = adatriton.convert(model, conversion, method="graph")
        assert type(graph).__name__ == "AdaptiveGraphModule"
        assert list(graph.state_dict()) == list(model.state_dict())
        assert all(a is b for a, b in zip(graph.parameters(), model.parameters(), strict=True))
    assert strides == [(m.stride, m.dilation, m.padding) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        got = adatriton.convert(model, "8->32", downsampling="softpool")(seg.x, lm)
        expected = _simulated_reference(model, seg.arch, seg.x, lm.levels, "8->32", "softpool")
    _assert_close(got, expected)


def test_adaptive_strides_need_levels(seg):
    x = seg.x[:1, :, :32, :32]
    for conversion in CONVERSIONS:
        with pytest.raises(ValueError, match="needs a level map"):
            adatriton.convert(seg.model, conversion)(x)
    with pytest.raises(ValueError, match="K=1 levels but output_stride '8->32' needs K=2"):
        adatriton.convert(seg.model, "8->32")(x, LevelMap.uniform(1, 4, 4, 0, 1))


# ---------------------------------------------------------------------------------------------------- builders
def _layout(model: nn.Module) -> list[tuple[str, tuple]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_builders_match_torchvision_layout():
    """fcn / deeplabv3 build torchvision's models (same keys, shapes, return layers), also on ResNet-152."""
    kw = {"weights": None, "weights_backbone": None}
    assert _layout(segmentation.fcn("resnet50", aux=True)) == _layout(tvseg.fcn_resnet50(**kw, aux_loss=True))
    assert _layout(segmentation.deeplabv3("resnet50")) == _layout(tvseg.deeplabv3_resnet50(**kw))
    tv = tvseg.deeplabv3_resnet101(**kw, aux_loss=True)
    ours = segmentation.deeplabv3("resnet101", num_classes=21, aux=True)
    assert _layout(ours) == _layout(tv)
    assert ours.backbone.return_layers == tv.backbone.return_layers == {"layer4": "out", "layer3": "aux"}
    big = segmentation.deeplabv3("resnet152", num_classes=5)
    assert isinstance(big, tvseg.DeepLabV3) and len(big.backbone.layer3) == 36 and big.aux_classifier is None
    assert big.backbone.layer4[0].conv2.dilation == (2, 2)  # dilated [False, True, True], as torchvision builds
    assert [big.classifier[0].convs[i][0].dilation[0] for i in (1, 2, 3)] == [12, 24, 36]
    os16 = segmentation.deeplabv3("resnet50", output_stride=16)
    assert [os16.classifier[0].convs[i][0].dilation[0] for i in (1, 2, 3)] == [6, 12, 18]
    with pytest.raises(ValueError, match="backbone must be one of"):
        segmentation.fcn("resnet18")
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        segmentation.deeplabv3plus(output_stride=32)


def test_deeplabv3plus_structure_and_decoder():
    """The reference's DeepLabv3+ (VainF): keys, shapes, rates, and its decoder written out here."""
    torch.manual_seed(3)
    model = _randomise_bn(segmentation.deeplabv3plus("resnet50", num_classes=5, output_stride=16)).eval()
    keys = dict(_layout(model))
    assert keys["classifier.project.0.weight"] == (48, 256, 1, 1)
    assert keys["classifier.aspp.convs.0.0.weight"] == (256, 2048, 1, 1)
    assert keys["classifier.aspp.project.0.weight"] == (256, 1280, 1, 1)
    assert keys["classifier.classifier.0.weight"] == (256, 304, 3, 3)
    assert keys["classifier.classifier.3.weight"] == (5, 256, 1, 1)
    assert not any(k.startswith(("backbone.fc", "backbone.avgpool", "aux_classifier")) for k in keys)
    head = model.classifier
    assert [head.aspp.convs[i][0].dilation[0] for i in (1, 2, 3)] == [6, 12, 18]
    assert model.backbone.return_layers == {"layer4": "out", "layer1": "low_level"}

    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        feats = model.backbone(x)
        assert feats["low_level"].shape[-2:] == (18, 23) and feats["out"].shape[-2:] == (5, 6)  # OS4, OS16
        low = F.relu(head.project[1](F.conv2d(feats["low_level"], head.project[0].weight)))
        aspp = F.interpolate(head.aspp(feats["out"]), size=(18, 23), mode="bilinear", align_corners=False)
        mid = torch.cat([low, aspp], 1)
        mid = F.relu(head.classifier[1](F.conv2d(mid, head.classifier[0].weight, padding=1)))
        logits = F.conv2d(mid, head.classifier[3].weight, head.classifier[3].bias)
        expected = F.interpolate(logits, size=(70, 90), mode="bilinear", align_corners=False)
        got = model(x)
    assert list(got) == ["out"] and got["out"].shape == (2, 5, 70, 90)
    torch.testing.assert_close(got["out"], expected, rtol=1e-5, atol=1e-5)


def test_convert_intermediate_layer_getter():
    """The backbone alone converts too and returns the getter's dict (adaptive layers densified)."""
    torch.manual_seed(5)
    resnet = _randomise_bn(torchvision.models.resnet50()).eval().to(DT)
    getter = IntermediateLayerGetter(resnet, {"layer1": "low", "layer3": "mid", "layer4": "out"})
    x = torch.randn(1, 3, 64, 64, dtype=DT)
    with torch.no_grad():
        dense = adatriton.convert(getter, "32")(x)
        _assert_close(dense, getter(x))  # the getter's own strides: plain OS32 ResNet
        net = adatriton.convert(getter, "8->32")
        got = net(x, LevelMap.uniform(1, 8, 8, 0, 2))
        assert [v.shape[-1] for v in got.values()] == [16, 8, 8]
        _assert_close(got, adatriton.convert(getter, "8")(x))
        feats = net.forward_backbone(x, torch.zeros(1, 8, 8, dtype=torch.long), ["layer4", "layer2"])
        assert list(feats) == ["layer4", "layer2"]
    with pytest.raises(ValueError, match="layers must be among"):
        net.forward_backbone(x, torch.zeros(1, 8, 8, dtype=torch.long), ["fc"])


def test_unsupported_models_are_rejected():
    # Segmentation models on other backbones take the graph path (tests/models/test_zoo.py).
    mobilenet = tvseg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None)
    assert type(adatriton.convert(mobilenet, "8->16")).__name__ == "AdaptiveGraphModule"
    stem_getter = IntermediateLayerGetter(torchvision.models.resnet50(), {"maxpool": "stem", "layer4": "out"})
    with pytest.raises(NotImplementedError, match="only"):
        adatriton.convert(stem_getter, "8")


def test_train_mode_backpropagates_into_backbone_and_heads():
    model = segmentation.deeplabv3plus("resnet50", num_classes=3).train()
    net = adatriton.convert(model, "8->32")
    lm = LevelMap.random(2, 8, 8, 2, generator=torch.Generator().manual_seed(0))
    net(torch.randn(2, 3, 64, 64), lm)["out"].square().mean().backward()
    assert model.backbone.layer4[0].conv2.weight.grad is not None
    assert model.classifier.project[0].weight.grad is not None
    assert model.backbone.layer1[0].conv1.weight.grad is not None
