"""Drop-in calls (issue 24): ``adatriton.convert(model, output_stride, mask=source)`` attaches a mask source, and
``net(images)`` then equals ``net(images, source(images, output_stride))`` on every converted model kind (ResNet,
segmentation, graph path), an explicit ``levels`` still wins, and the state_dict keys stay the model's. Also the
sources themselves: ``masks.edges(fraction=...)`` / ``masks.keypoints()`` without images, ``MaskSource`` and its
``with_normalization``, and a ``LearnedMask`` attached to a ``"8->16"`` network."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

import adatriton
from adatriton import LevelMap, masks
from adatriton.masks import IMAGENET_MEAN, IMAGENET_STD, LearnedMask, MaskInputError, MaskSource
from adatriton.models import attach_mask, mask_source_of
from tests.models.test_learned import randomise_bn, tiny_deeplab

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int = 2, size: int = 64) -> torch.Tensor:
    """Blocky RGB images in [0, 1] (edges where the blocks meet), different per sample."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, size // 16, size // 16, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")


def _resnet() -> ResNet:
    torch.manual_seed(0)
    return randomise_bn(ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16, num_classes=5)).eval()


def _cnn() -> nn.Sequential:
    """Five stride-2 convs (output stride 32), a pooled linear head: a model for the graph path."""
    torch.manual_seed(0)
    convs = [nn.Conv2d(3 if i == 0 else 8, 8, 3, 2, 1) for i in range(5)]
    layers = [m for conv in convs for m in (conv, nn.ReLU())]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def _segmentation() -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(tiny_deeplab()).eval()


def _out(y):
    return y["out"] if isinstance(y, dict) else y


MODELS = {
    "resnet": (_resnet, {}),
    "segmentation": (_segmentation, {}),
    "graph": (_cnn, {"example_input": torch.empty(1, 3, 64, 64)}),
}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("conversion", ["8to32", "16->32"])
def test_net_of_images_builds_its_level_map_from_the_attached_source(kind, conversion):
    build, options = MODELS[kind]
    model = build()
    keys = list(model.state_dict())
    source = masks.edges(fraction=0.3)
    net = adatriton.convert(model, conversion, mask=source, **options).eval()
    assert list(net.state_dict()) == keys and mask_source_of(net) is source
    x = _images()
    expected = source(x, conversion)
    assert 0 < float(expected.fractions()[0]) < 1  # a mixed map: the test can tell it from a uniform one
    with torch.no_grad():
        drop_in = _out(net(x))
        explicit = _out(net(x, expected))
        uniform = LevelMap.uniform(*expected.shape, level=0, num_levels=expected.num_levels)
        wins = _out(net(x, uniform))
        by_keyword = _out(net(x, levels=uniform))
    assert torch.equal(drop_in, explicit)
    assert torch.equal(wins, by_keyword) and not torch.equal(wins, drop_in)

    attach_mask(net, None)  # detached: a level map is needed again
    assert mask_source_of(net) is None
    with pytest.raises(ValueError, match="level map"):
        net(x)


def test_a_normalising_model_reads_the_source_on_the_unnormalised_images():
    x = _images()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    source = masks.edges(fraction=0.3).with_normalization()
    net = adatriton.convert(_resnet(), "8->32", mask=source).eval()
    with torch.no_grad():
        assert torch.equal(net((x - mean) / std), net((x - mean) / std, masks.edges(x, "8->32", fraction=0.3)))
    assert "with_normalization" in repr(source)


def test_a_learned_mask_attached_to_8_to_16_predicts_from_the_finest_grid_features():
    """A LearnedMask is a source on the layer2 (OS8) features: the network computes them once and the map is the
    estimator's argmax; its weights stay out of the converted model's state_dict."""
    model = _segmentation()
    keys = list(model.state_dict())
    torch.manual_seed(1)
    estimator = LearnedMask().eval()
    net = adatriton.convert(model, "8->16", mask=estimator).eval()
    assert list(net.state_dict()) == keys
    x = _images()
    seen = []

    def features_of(features):  # a level-map callable that keeps the features it is given
        seen.append(features)
        return LevelMap.uniform(features.shape[0], *features.shape[2:], level=0, num_levels=1)

    with torch.no_grad():
        net(x, features_of)
        levels = estimator.level_map(seen[0], "8->16", sample=False)
        assert 0 < float(levels.fractions()[0]) < 1
        assert torch.equal(net(x)["out"], net(x, levels)["out"])
    with pytest.raises(ValueError, match="8->16"):
        adatriton.convert(_segmentation(), "8->32", mask=estimator)


def test_convert_refuses_a_mask_it_cannot_use():
    with pytest.raises(TypeError, match="mask must be a mask source"):
        adatriton.convert(_resnet(), "8->32", mask="edges")
    with pytest.raises(ValueError, match="dense"):
        adatriton.convert(_resnet(), "8", mask=masks.edges(fraction=0.3))
    with pytest.raises(MaskInputError, match="1->8"):
        adatriton.convert(_resnet(), "8->32", mask=masks.keypoints())


def test_edges_without_images_is_a_source_with_the_same_maps():
    x = _images()
    source = masks.edges(fraction=0.2, method="cad")
    assert isinstance(source, MaskSource) and repr(source) == "edges(fraction=0.2, method='cad')"
    assert torch.equal(source(x, "8->16").levels, masks.edges(x, "8->16", fraction=0.2, method="cad").levels)
    assert repr(masks.edges()) == "edges()"
    # Parameters are checked where the source is made, not at its first call.
    with pytest.raises(MaskInputError, match="fraction"):
        masks.edges(fraction=1.5)
    with pytest.raises(MaskInputError, match="not both"):
        masks.edges(threshold=0.1, fraction=0.3)
    with pytest.raises(MaskInputError, match="leave output_stride out"):
        masks.edges(output_stride="8->32")
    with pytest.raises(MaskInputError, match="dilations"):
        masks.keypoints(dilations=(1, 2))


def test_an_image_source_runs_eagerly_under_torch_compile():
    """Under torch.compile the source runs outside the graph (a graph break), so the compiled drop-in call gives
    what the eager one does."""
    net = adatriton.convert(_cnn(), "8->32", mask=masks.edges(fraction=0.3), example_input=torch.empty(1, 3, 64, 64))
    net = net.eval()
    x = _images()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager")
    with torch.no_grad():
        assert torch.equal(compiled(x), net(x))
