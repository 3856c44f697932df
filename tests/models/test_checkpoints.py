"""Loading the authors' checkpoints: state_dicts in their layout, built here from torchvision weights by a converter
written independently of adatriton's (the other way round), load back exactly, with clear strict errors."""

import re
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import segmentation as tvseg

import adatriton
from adatriton import CheckpointError, LevelMap, load_authors_state_dict, segmentation

#: Layers in the authors' adaptive layout per finest output stride (their replace_with_ap).
ADAPTIVE_LAYERS = {8: ("layer3", "layer4"), 16: ("layer4",)}


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics (num_batches_tracked too), so every tensor is distinctive."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(seed)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "running_mean")) or tensor.dim() == 1:
                tensor.uniform_(-0.5, 0.5).add_(1.0 if name.endswith("weight") else 0.0)
            else:
                tensor.normal_(0, (2.0 / tensor[0].numel()) ** 0.5)
    return model.eval()


def to_authors_layout(state_dict: dict, finest_stride: int = 8, wrapped_heads: bool = True) -> OrderedDict:
    """torchvision -> the authors' layout, from the description of their format.

    In the adaptive layers: ``conv1`` / ``conv3`` / shortcut weights as Conv1d ``(Cout, Cin, 1)``; ``conv2`` as
    ``conv2.conv.weight`` ``(Cout, Cin, 9, 1)`` with tap ``3 * ky + kx``; shortcut ``downsample.conv1`` /
    ``downsample.norm1``. FCN / DeepLabv3 heads (``wrapped_heads``) under ``classifier.classifier.``.
    """
    out = OrderedDict()
    for key, value in state_dict.items():
        parts = key.split(".")
        layer = next((p for p in parts if p in ADAPTIVE_LAYERS[finest_stride]), None)
        if layer is not None:
            i = parts.index(layer) + 2  # parts[i:] names the module inside the bottleneck
            inner = parts[i:]
            if inner == ["conv2", "weight"]:
                cout, cin, kh, kw = value.shape
                taps = value.new_empty(cout, cin, kh * kw, 1)
                for ky in range(kh):
                    for kx in range(kw):
                        taps[:, :, 3 * ky + kx, 0] = value[:, :, ky, kx]
                parts[i:] = ["conv2", "conv", "weight"]
                value = taps
            elif inner[0] in ("conv1", "conv3") or inner[:3] == ["downsample", "0", "weight"]:
                value = value[:, :, :, 0]
            if inner[:2] == ["downsample", "0"]:
                parts[i : i + 2] = ["downsample", "conv1"]
            elif inner[:2] == ["downsample", "1"]:
                parts[i : i + 2] = ["downsample", "norm1"]
        if wrapped_heads and parts[0] in ("classifier", "aux_classifier"):
            parts.insert(1, "classifier")
        out[".".join(parts)] = value
    return out


def _assert_same_state(model: nn.Module, expected: dict):
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_layout_written_by_the_test_is_the_authors():
    """Spot checks of the converter above against the format description."""
    sd = to_authors_layout(torchvision.models.resnet50().state_dict())
    assert sd["layer3.0.conv2.conv.weight"].shape == (256, 256, 9, 1)
    assert sd["layer3.0.conv1.weight"].shape == (256, 512, 1)
    assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1)
    assert sd["layer4.0.downsample.conv1.weight"].shape == (2048, 1024, 1)
    assert "layer4.0.downsample.norm1.running_var" in sd and "layer3.0.downsample.1.weight" not in sd
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # dense stages keep torchvision's layout
    assert sd["conv1.weight"].shape == (64, 3, 7, 7) and "bn1.running_mean" in sd


@pytest.mark.parametrize("finest_stride", [8, 16])
def test_round_trip_resnet(finest_stride):
    source = _randomised(torchvision.models.resnet50(), seed=1)
    expected = source.state_dict()  # the source model is never modified: no copies needed
    target = _randomised(torchvision.models.resnet50(), seed=2)
    result = load_authors_state_dict(target, to_authors_layout(expected, finest_stride))
    assert result.missing_keys == [] and result.unexpected_keys == []
    _assert_same_state(target, expected)


def test_round_trip_converted_segmentation_models_and_outputs():
    """A full authors' DeepLabv3 checkpoint loads into a converted model; outputs equal the source model's."""
    source = _randomised(tvseg.deeplabv3_resnet50(weights=None, weights_backbone=None), seed=3)
    expected = source.state_dict()
    authors = to_authors_layout(expected)
    assert "classifier.classifier.0.convs.0.0.weight" in authors
    assert authors["backbone.layer3.5.conv2.conv.weight"].shape == (256, 256, 9, 1)

    target = _randomised(tvseg.deeplabv3_resnet50(weights=None, weights_backbone=None), seed=4)
    net = adatriton.convert(target, "8->32").eval()
    load_authors_state_dict(net, authors)
    _assert_same_state(net, expected)
    _assert_same_state(target, expected)  # shared parameters: the plain model has them too

    x = torch.randn(2, 3, 64, 64)
    lm = LevelMap.random(2, 8, 8, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x, lm)["out"], adatriton.convert(source, "8->32")(x, lm)["out"])
        assert torch.equal(target(x)["out"], source(x)["out"])


def test_round_trip_fcn_with_aux_and_deeplabv3plus():
    for build, wrapped in (
        (lambda: tvseg.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True), True),
        # The DeepLabv3+ reference names its head parts project / aspp / classifier, as adatriton does.
        (lambda: segmentation.deeplabv3plus("resnet50", num_classes=4), False),
    ):
        expected = _randomised(build(), seed=5).state_dict()
        target = _randomised(build(), seed=6)
        load_authors_state_dict(target, to_authors_layout(expected, wrapped_heads=wrapped))
        _assert_same_state(target, expected)


def test_wrappers_module_prefix_and_prefix_argument():
    source = _randomised(tvseg.fcn_resnet50(weights=None, weights_backbone=None), seed=7)
    expected = source.state_dict()
    authors = to_authors_layout(expected)
    # The authors' training script saves {"model_state": ..., "optimizer_state": ...}; DataParallel adds module.
    checkpoint = {"model_state": OrderedDict(("module." + k, v) for k, v in authors.items()), "best_score": 0.7}
    target = _randomised(tvseg.fcn_resnet50(weights=None, weights_backbone=None), seed=8)
    load_authors_state_dict(target, checkpoint)
    _assert_same_state(target, expected)

    # prefix="backbone." loads the segmentation checkpoint's backbone into a ResNet; the heads are ignored.
    resnet = _randomised(torchvision.models.resnet50(), seed=9)
    fc = resnet.fc.weight.clone()
    result = load_authors_state_dict(resnet, checkpoint, strict=False, prefix="backbone.")
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    backbone = {k[len("backbone.") :]: v for k, v in expected.items() if k.startswith("backbone.")}
    assert all(torch.equal(resnet.state_dict()[k], v) for k, v in backbone.items())
    assert torch.equal(resnet.fc.weight, fc)
    with pytest.raises(CheckpointError, match=r"missing keys .*fc\.weight"):
        load_authors_state_dict(resnet, checkpoint, prefix="backbone.")

    # A backbone-only checkpoint loads into a segmentation model's backbone.
    load_authors_state_dict(target.backbone, to_authors_layout(backbone))


def test_strict_errors_name_the_keys_and_load_nothing():
    model = _randomised(torchvision.models.resnet50(), seed=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = to_authors_layout(_randomised(torchvision.models.resnet50(), seed=11).state_dict())

    missing = OrderedDict(good)
    del missing["layer3.2.conv2.conv.weight"]
    with pytest.raises(
        CheckpointError, match=r"missing keys \(in the model, not in the checkpoint\): layer3\.2\.conv2"
    ):
        load_authors_state_dict(model, missing)

    unexpected = OrderedDict(good, **{"layer3.0.offsets.weight": torch.zeros(3)})
    with pytest.raises(
        CheckpointError,
        match=re.escape("unexpected keys (in the checkpoint, not in the model): layer3.0.offsets.weight"),
    ):
        load_authors_state_dict(model, unexpected)

    both = OrderedDict(missing, **{"mask_net.0.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError) as info:
        load_authors_state_dict(model, both)
    assert "layer3.2.conv2.weight" in str(info.value) and "mask_net.0.weight" in str(info.value)

    wrong = OrderedDict(good)
    wrong["layer4.1.conv2.conv.weight"] = torch.zeros(512, 512, 8, 1)
    message = (
        "layer4.1.conv2.conv.weight: checkpoint shape (512, 512, 8, 1), model layer4.1.conv2.weight (512, 512, 3, 3)"
    )
    for strict in (True, False):  # shapes are checked even when not strict, as load_state_dict does
        with pytest.raises(CheckpointError, match=re.escape(message)):
            load_authors_state_dict(model, wrong, strict=strict)

    ambiguous = OrderedDict(good, **{"layer4.0.downsample.0.weight": good["layer4.0.downsample.conv1.weight"]})
    with pytest.raises(CheckpointError, match="both map to layer4.0.downsample.0.weight"):
        load_authors_state_dict(model, ambiguous)
    _assert_same_state(model, before)  # every failed load left the model untouched

    result = load_authors_state_dict(model, both, strict=False)
    assert result.missing_keys == ["layer3.2.conv2.weight"] and result.unexpected_keys == ["mask_net.0.weight"]
    assert torch.equal(model.layer3[2].conv2.weight, before["layer3.2.conv2.weight"])  # missing: kept
    assert torch.equal(model.layer3[1].conv2.weight.flatten(2), good["layer3.1.conv2.conv.weight"][..., 0])
