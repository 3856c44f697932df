"""Loading the authors' checkpoints: state_dicts in their layout, built here from torchvision weights by a converter
written independently of adatriton's (the other way round), load back exactly, with clear strict errors."""

import pathlib
import re
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import segmentation as tvseg
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet

import adatriton
from adatriton import CheckpointError, LevelMap, load_authors_state_dict
from adatriton.models import segmentation
from adatriton.models.checkpoints import dilate_head, read_checkpoint
from adatriton.models.learned import upsample_mask
from adatriton.models.segmentation import DeepLabHeadV3Plus
from tests.models.test_learned import tiny_deeplab  # the small DeepLabv3 of the learned-mask tests

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

    # prefix="backbone." loads the segmentation checkpoint's backbone into a ResNet; the heads are ignored, and the
    # classifier's absent fc head is no error even in strict mode (plain and converted ResNets alike).
    backbone = {k[len("backbone.") :]: v for k, v in expected.items() if k.startswith("backbone.")}
    for convert in (False, True):
        resnet = _randomised(torchvision.models.resnet50(), seed=9)
        fc = resnet.fc.weight.clone()
        if convert:
            resnet = adatriton.convert(resnet, "8->32")
        for strict in (True, False):
            result = load_authors_state_dict(resnet, checkpoint, strict=strict, prefix="backbone.")
            assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
        assert all(torch.equal(resnet.state_dict()[k], v) for k, v in backbone.items())
        assert torch.equal(resnet.fc.weight, fc)
        with pytest.raises(CheckpointError, match=r"missing keys .*fc\.weight"):  # the head demanded explicitly
            load_authors_state_dict(resnet, checkpoint, prefix="backbone.", ignore_missing=())

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


# ------------------------------------------------------------------------------------------ learned-mask checkpoints
def to_authors_learned_layout(state_dict: dict, high_res_stats: dict) -> OrderedDict:
    """A LearnedMaskModel's state_dict -> the authors' learned-mask checkpoint, from the description of their format.

    ``model.`` dropped; ``layer3`` / ``layer4`` stored twice, as ``layer{3,4}_high_res`` (BatchNorm running
    statistics from ``high_res_stats``, keyed like ``state_dict``) and ``layer{3,4}_low_res``, both in the adaptive
    conv layout; ``mask.layers.<i>`` as ``backbone.mask_estimator.<i>``; heads under ``classifier.classifier``.
    """
    seg = OrderedDict((k[len("model.") :], v) for k, v in state_dict.items() if k.startswith("model."))
    authors = to_authors_layout(seg, finest_stride=8)
    high = to_authors_layout(
        OrderedDict((k[len("model.") :], v) for k, v in high_res_stats.items() if k.startswith("model.")), 8
    )
    out = OrderedDict()
    for key, value in authors.items():
        parts = key.split(".")
        if parts[0] == "backbone" and parts[1] in ("layer3", "layer4"):
            for path in ("high_res", "low_res"):
                renamed = ".".join([parts[0], f"{parts[1]}_{path}", *parts[2:]])
                stat = key.endswith(("running_mean", "running_var", "num_batches_tracked"))
                out[renamed] = high[key] if path == "high_res" and stat else value
        else:
            out[key] = value
    for key, value in state_dict.items():
        if key.startswith("mask.layers."):
            out["backbone.mask_estimator." + key[len("mask.layers.") :]] = value
    return out


def _learned(seed: int):
    torch.manual_seed(seed)
    return _randomised(adatriton.models.learned.LearnedMaskModel(tiny_deeplab(aux=True)), seed)


def test_learned_mask_checkpoint_round_trip(tmp_path):
    source = _learned(seed=12)
    expected = source.state_dict()
    high = _learned(seed=13).state_dict()  # other running statistics for the OS8 (high_res) copy
    authors = to_authors_learned_layout(expected, high)
    assert "backbone.layer3_low_res.0.conv2.conv.weight" in authors and "backbone.mask_estimator.7.bias" in authors
    assert not any(k.startswith(("backbone.layer3.", "backbone.layer4.", "mask.", "model.")) for k in authors)
    assert not torch.equal(
        authors["backbone.layer4_high_res.1.bn2.running_var"], authors["backbone.layer4_low_res.1.bn2.running_var"]
    )

    # The authors' evaluation keeps the _low_res statistics: the default; from a file, wrapped as they save it.
    torch.save(
        {"model_state": OrderedDict(("module." + k, v) for k, v in authors.items()), "cur_itrs": 3}, tmp_path / "a.pth"
    )
    target = _learned(seed=14)
    result = load_authors_state_dict(target, str(tmp_path / "a.pth"))
    assert result.missing_keys == [] and result.unexpected_keys == []
    _assert_same_state(target, expected)
    diffs = [
        float((a.double() - b.double()).abs().max()) for a, b in zip(target.state_dict().values(), expected.values())
    ]
    assert max(diffs) == 0.0

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, ref = target.eval()(x)["out"], source.eval()(x)["out"]
    assert torch.equal(out, ref) and torch.equal(target.last_levels.levels, source.last_levels.levels)

    # bn_path="high_res": the OS8 path's statistics, the same weights.
    target = _learned(seed=15)
    load_authors_state_dict(target, authors, bn_path="high_res")
    state = target.state_dict()
    for key, value in expected.items():
        in_paths = key.startswith(("model.backbone.layer3.", "model.backbone.layer4."))
        stat = key.endswith(("running_mean", "running_var", "num_batches_tracked"))
        assert torch.equal(state[key], high[key] if in_paths and stat else value), key
    with pytest.raises(ValueError, match="bn_path"):
        load_authors_state_dict(target, authors, bn_path="low")


def test_learned_checkpoint_into_plain_converted_model_and_strict_errors():
    source = _learned(seed=16)
    authors = to_authors_learned_layout(source.state_dict(), source.state_dict())
    net = adatriton.convert(_randomised(tiny_deeplab(aux=True), 17), "8->16")
    result = load_authors_state_dict(net, authors)  # the estimator's keys are skipped: this model has none
    assert result.missing_keys == [] and result.unexpected_keys == []
    _assert_same_state(
        net, OrderedDict((k[len("model.") :], v) for k, v in source.state_dict().items() if k[:6] == "model.")
    )

    partial = OrderedDict((k, v) for k, v in authors.items() if "layer4_low_res.1." not in k)
    with pytest.raises(CheckpointError, match=r"missing keys .*model\.backbone\.layer4\.1\.conv1\.weight"):
        load_authors_state_dict(_learned(seed=18), partial)  # the high_res copy does not stand in for it


# ---------------------------------------------------------------------------------------------- head dilation
def _tiny_deeplabv3plus() -> nn.Module:
    resnet = ResNet(Bottleneck, [1, 1, 2, 2], width_per_group=16)
    body = IntermediateLayerGetter(resnet, return_layers={"layer4": "out", "layer1": "low_level"})
    return segmentation.DeepLabV3Plus(body, DeepLabHeadV3Plus(2048, 256, 3, (6, 12, 18)))


@pytest.mark.parametrize("plus", [False, True], ids=["deeplabv3-aux", "deeplabv3plus"])
def test_dilate_head_evaluates_an_os16_head_on_the_os8_grid(plus):
    """A head trained at OS16 run on OS8 features that repeat each OS16 value over 2x2 cells (an "8->16" network
    at level 1): with dilation 16 / 8 = 2 it gives exactly the OS16 head's output, repeated (DeepLabv3+: its ASPP;
    the decoder stays on the OS4 grid)."""
    model = _randomised(_tiny_deeplabv3plus() if plus else tiny_deeplab(aux=True), seed=19).double()
    heads = [model.classifier.aspp] if plus else [model.classifier, model.aux_classifier]
    seen: dict[int, list] = {i: [] for i in range(len(heads))}
    hooks = [h.register_forward_hook(lambda m, a, out, i=i: seen[i].append(out)) for i, h in enumerate(heads)]
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        adatriton.convert(model, "16")(x)  # the heads as trained, on the OS16 grid (4 x 6)
        dilate_head(model, 16, "8->16")
        adatriton.convert(model, "8->16")(x, LevelMap.uniform(1, 8, 12, 1, 1))  # on the OS8 grid, all level 1
    for hook in hooks:
        hook.remove()
    for os16, os8 in seen.values():
        assert os16.shape[-2:] == (4, 6) and os8.shape[-2:] == (8, 12)
        torch.testing.assert_close(os8, upsample_mask(os16, 8, 12), rtol=1e-10, atol=1e-10)
    if plus:
        assert model.classifier.aspp.convs[1][0].dilation == (12, 12)
        assert model.classifier.classifier[0].dilation == (1, 1)  # the OS4 decoder is left alone
    else:
        assert model.classifier[0].convs[1][0].dilation == (24, 24) and model.classifier[1].dilation == (2, 2)
        assert model.aux_classifier[0].padding == (2, 2)
    dilate_head(model, 16, 16)  # back to the trained dilations, not compounded
    conv = model.classifier.aspp.convs[1][0] if plus else model.classifier[0].convs[1][0]
    assert conv.dilation == conv.padding == ((6, 6) if plus else (12, 12))


def test_dilate_head_rejects_fractional_dilations():
    with pytest.raises(ValueError, match="not whole numbers"):
        dilate_head(tiny_deeplab(), 8, 16)  # the 3x3 conv after the ASPP would need dilation 1/2
    with pytest.raises(ValueError, match="output stride"):
        dilate_head(tiny_deeplab(), 16, 4)


# ---------------------------------------------------------------------------------------------- unreadable input
class _NotATensor:
    pass


def _bad_checkpoints(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    pickled = tmp_path / "object.pth"
    torch.save({"model_state": _NotATensor()}, pickled)
    legacy = tmp_path / "legacy.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    legacy_cut = tmp_path / "legacy_cut.pth"
    legacy_cut.write_bytes(legacy.read_bytes()[:40])
    return [
        (None, "got None"),
        (3, "got int"),
        (str(tmp_path / "missing.pth"), "missing.pth' does not exist"),
        (tmp_path, "is not a file"),
        (empty, r"empty.pth' is empty \(0 bytes\)"),
        (truncated, r"truncated.pth' is truncated \(an incomplete zip archive"),
        (text, "notes.txt' is not a torch.save file"),
        (legacy_cut, "legacy_cut.pth' is truncated or damaged"),
        (a_list, "list.pth' holds a list"),
        (pickled, r"object.pth' holds objects other than tensors.*_NotATensor.*weights_only=False"),
    ]


def test_unreadable_checkpoints_raise_checkpoint_errors(tmp_path):
    model = torchvision.models.resnet50()
    net = adatriton.models.d2net.D2Net()
    for bad, message in _bad_checkpoints(tmp_path):
        with pytest.raises(CheckpointError, match=message) as info:
            load_authors_state_dict(model, bad)
        assert "expected" in str(info.value)
        with pytest.raises(adatriton.D2NetCheckpointError, match=message) as info:
            adatriton.load_d2net_state_dict(net, bad)
        assert "expected" in str(info.value)


def test_paths_load_like_mappings(tmp_path):
    expected = _randomised(torchvision.models.resnet50(), seed=20).state_dict()
    for kind in (str, pathlib.Path):
        torch.save(to_authors_layout(expected), tmp_path / "r.pth")
        target = _randomised(torchvision.models.resnet50(), seed=21)
        load_authors_state_dict(target, kind(tmp_path / "r.pth"))
        _assert_same_state(target, expected)
    torch.save(to_authors_layout(expected), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    target = _randomised(torchvision.models.resnet50(), seed=22)
    load_authors_state_dict(target, tmp_path / "legacy.pth")  # torch.save's pre-1.6 format reads too
    _assert_same_state(target, expected)
    assert read_checkpoint({"a": 1}) == {"a": 1}


# ------------------------------------------------------------------------------- the authors' training checkpoint
def with_training_classifier(authors: OrderedDict, seed: int = 0) -> OrderedDict:
    """What their ``main_e2e_train.py`` saves: the learned-mask layout plus the ImageNet classifier of the whole
    ResNet that ``deeplabv3_ad_resnet101(..., eval=False)`` keeps as its backbone."""
    generator = torch.Generator().manual_seed(seed)
    out = OrderedDict(authors)
    out["backbone.fc.weight"] = torch.randn(1000, 2048, generator=generator)
    out["backbone.fc.bias"] = torch.randn(1000, generator=generator)
    return out


def test_authors_training_checkpoint_loads_strictly(tmp_path):
    """The classifier keys are ignored on purpose (not unexpected), into a LearnedMaskModel and a plain "8->16"
    conversion alike; every other key still loads exactly, and other stray keys are still errors."""
    source = _learned(seed=20)
    expected = source.state_dict()
    training = with_training_classifier(to_authors_learned_layout(expected, expected))
    torch.save({"model_state": training, "cur_itrs": 30000}, tmp_path / "e2e.pth")

    target = _learned(seed=21)
    result = load_authors_state_dict(target, tmp_path / "e2e.pth")
    assert result.missing_keys == [] and result.unexpected_keys == []
    _assert_same_state(target, expected)

    net = adatriton.convert(_randomised(tiny_deeplab(aux=True), 22), "8->16")
    result = load_authors_state_dict(net, training)
    assert result.missing_keys == [] and result.unexpected_keys == []
    _assert_same_state(net, OrderedDict((k[len("model.") :], v) for k, v in expected.items() if k[:6] == "model."))

    stray = OrderedDict(training, **{"backbone.fc2.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys .*backbone\.fc2\.weight"):
        load_authors_state_dict(_learned(seed=23), stray)
    # A model that has an fc head still gets it: the backbone of the checkpoint into a classification ResNet.
    resnet = _randomised(ResNet(Bottleneck, [1, 1, 2, 2], width_per_group=16), 24)
    load_authors_state_dict(resnet, training, prefix="backbone.")
    assert torch.equal(resnet.fc.weight, training["backbone.fc.weight"])


def test_authors_training_checkpoint_of_deeplabv3_resnet101_keys():
    """At full size: the key set of their ResNet-101 training model (built here from torchvision's
    deeplabv3_resnet101, random weights, no download) loads strictly into convert(deeplabv3 r101, "8->16") and into
    a LearnedMaskModel over it."""
    torch.manual_seed(0)
    seg = tvseg.deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    learned = adatriton.models.LearnedMaskModel(seg)
    training = with_training_classifier(to_authors_learned_layout(learned.state_dict(), learned.state_dict()))
    assert sum(k.startswith("backbone.layer3_high_res.") for k in training) == sum(
        k.startswith("model.backbone.layer3.") for k in learned.state_dict()
    )
    fresh = adatriton.models.LearnedMaskModel(tvseg.deeplabv3_resnet101(weights=None, weights_backbone=None))
    result = load_authors_state_dict(fresh, training)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), learned.state_dict().values()))
    net = adatriton.convert(tvseg.deeplabv3_resnet101(weights=None, weights_backbone=None), "8->16")
    result = load_authors_state_dict(net, training)
    assert result.missing_keys == [] and result.unexpected_keys == []
