"""Clear errors for wrong inputs of the model layer (issue 23, items 1, 5 and 6): a level map cannot change under a
model, an ``example_input`` too small for a graph conversion says so and gives the smallest size that works, and an
entry point given an object of the wrong kind raises ``TypeError`` naming what it expects."""

import pytest
import torch
import torchvision
from torch import nn

import adatriton
from adatriton import LevelMap, MultiResMap
from adatriton.masks import report
from adatriton.models.d2net import D2Net
from adatriton.models.graph import GraphConversionError, convert_graph
from adatriton.models.resnet import AdaptiveResNet


def test_an_edited_levels_tensor_changes_neither_the_map_nor_the_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1))
    net = adatriton.convert(model, "1->4", example_input=torch.empty(1, 3, 8, 8)).eval()
    x = torch.randn(1, 3, 8, 8)
    lm = LevelMap.uniform(1, 8, 8, 0, 2)
    with torch.no_grad():
        before = net(x, lm)
        lm.levels.fill_(2)  # the two edits
        lm.levels[0, 1, 1] = 2
        after = net(x, lm)
        coarse = net(x, LevelMap.uniform(1, 8, 8, 2, 2))
    assert lm.fractions().tolist() == [1.0, 0.0, 0.0]
    assert lm.element_counts() == [64, 0, 0]
    assert torch.equal(after, before)
    assert not torch.allclose(coarse, before)  # the edit, had it reached the map, would change the output


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2().eval()


@pytest.mark.parametrize(("conversion", "size"), [("2->4", (5, 4)), ("8->32", (7, 7))])
def test_a_too_small_example_input_says_so_and_gives_the_smallest_size(mobilenet, conversion, size):
    # Issue 23.5: a raw TypeError for "2->4" at 5x4, and a false "never takes the stride past OS8" at 7x7.
    with pytest.raises(GraphConversionError, match=r"too small .* smallest square example_input that works is 48x48"):
        adatriton.convert(mobilenet, conversion, example_input=torch.empty(1, 3, *size))


def test_the_smallest_size_given_is_the_smallest_that_works(mobilenet):
    net = adatriton.convert(mobilenet, "8->32", example_input=torch.empty(1, 3, 48, 48))
    assert net.num_levels == 2 and net.adaptive_convs()
    with pytest.raises(GraphConversionError, match="is 48x48"):
        adatriton.convert(mobilenet, "8->32", example_input=torch.empty(1, 3, 47, 47))


def test_an_example_input_the_model_rejects_is_too_small():
    pools = [nn.Sequential(nn.Conv2d(c, 4, 3, 1, 1), nn.MaxPool2d(2)) for c in (3, 4, 4, 4)]
    model = nn.Sequential(*pools, nn.AdaptiveAvgPool2d(1))
    with pytest.raises(GraphConversionError, match=r"5x4 is too small .* the model fails on it .* is 32x32"):
        adatriton.convert(model, "2->8", example_input=torch.empty(1, 3, 5, 4))


def test_a_layer_without_a_rule_is_named_whatever_the_example_size():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.MaxPool2d(3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1))
    with pytest.raises(GraphConversionError, match=r"node '_1' .*max pool with kernel \(3, 3\)"):
        adatriton.convert(model, "2->4", example_input=torch.empty(1, 3, 5, 4))


@pytest.mark.parametrize(
    ("call", "expects"),
    [
        (lambda: adatriton.convert("resnet50", "8->32"), "nn.Module"),  # issue 23.6
        (lambda: convert_graph("resnet50", "8"), "nn.Module"),
        (lambda: AdaptiveResNet("resnet50", "8->32"), "ResNet"),
        (lambda: D2Net("vgg16"), "VGG"),
        (lambda: LevelMap.from_keep_mask("mask", "8->32"), "tensor"),
        (lambda: MultiResMap.from_dense(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)), "LevelMap"),
        (lambda: MultiResMap(torch.zeros(16, 2), "layout"), "Layout"),
        (lambda: report(torch.zeros(1, 4, 4, dtype=torch.long)), "LevelMap"),
    ],
    ids=["convert", "convert_graph", "AdaptiveResNet", "D2Net", "keep_mask", "from_dense", "MultiResMap", "report"],
)
def test_an_object_of_the_wrong_kind_is_a_type_error(call, expects):
    with pytest.raises(TypeError, match=expects):
        call()
