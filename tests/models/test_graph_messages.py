"""The graph path's errors name the node, what it found and what the user can do (issues 23 and 24): unpadded or
even-kernel layers in the dense part, models short of the conversion's strides, a layer that jumps past the finest
stride (ViT's patchify conv, with and without ``unsupported="densify"``), and the plan's densify notes."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

import adatriton
from adatriton.models.graph import GraphConversionError


def _strided(n: int, *extra: nn.Module) -> nn.Sequential:
    """``n`` stride-2 3x3 convs (output stride ``2^n``) after ``extra``."""
    return nn.Sequential(*extra, *(nn.Conv2d(3, 3, 3, 2, 1) for _ in range(n))).eval()


@pytest.mark.parametrize(
    ("layer", "found"),
    [
        (nn.Conv2d(3, 3, 3, 2, 0), r"floor\(\(x - 3\) / 2\) \+ 1 pixels, neither floor\(x / 2\) nor ceil\(x / 2\)"),
        (nn.Conv2d(3, 3, 3, 1, 0), r"floor\(\(x - 3\) / 1\) \+ 1 pixels"),
        (nn.Conv2d(3, 3, 2, 1, 0), r"kernel \(2, 2\), stride \(1, 1\)"),
        (nn.MaxPool2d(3, 2), r"floor\(\(x - 3\) / 2\) \+ 1 pixels"),
    ],
    ids=["unpadded-stride-2", "unpadded-stride-1", "even-stride-1", "unpadded-pool"],
)
@pytest.mark.parametrize("example", [None, (1, 3, 82, 90)], ids=["planned", "example-82x90"])
def test_a_dense_part_layer_that_breaks_the_finest_grid_is_refused_by_name(layer, found, example):
    """The reproducer of issue 23: on an 82x90 example the unpadded conv's sizes happen to fit OS8, on other inputs
    they fit no stride; the converter refuses it whatever the example."""
    model = _strided(4, nn.Conv2d(3, 3, 3, 2, 1), layer).eval()
    example_input = None if example is None else torch.empty(example)
    with pytest.raises(GraphConversionError) as err:
        adatriton.convert(model, "8->32", example_input=example_input)
    message = str(err.value)
    assert message.startswith("node '_1' (call_module 1) in the dense part (OS2, before the adaptive part at OS8)")
    assert re.search(found, message), message
    assert (
        "Give it padding d * (k // 2) with an odd kernel k, or a kernel equal to its stride without padding" in message
    )


@pytest.mark.parametrize(
    "layer", [nn.Conv2d(3, 3, 2, 2, 0), nn.Conv2d(3, 3, 4, 2, 1), nn.MaxPool2d(3, 2, 0, ceil_mode=True)]
)
def test_dense_part_layers_that_keep_the_floor_or_the_ceil_convert(layer):
    model = _strided(4, nn.Conv2d(3, 3, 3, 2, 1), layer).eval()
    net = adatriton.convert(model, "8->32")
    assert [p.node for p in net.adaptive_convs() if p.downsample] == ["_3", "_4"]  # the steps OS8->16->32


def test_squeezenet_names_its_unpadded_stem_conv():
    model = torchvision.models.squeezenet1_0(weights=None).eval()
    with pytest.raises(GraphConversionError, match=r"^node 'features_0' \(call_module features.0\) in the dense part"):
        adatriton.convert(model, "8->16")


@pytest.mark.parametrize(
    ("strides", "conversion", "found", "fix"),
    [
        (3, "8->32", "reaches output stride 8 at most (node '_2'): it has 0 of them", "output stride such as '8'"),
        (4, "8->32", "reaches output stride 16 at most (node '_3'): it has 1 of them", "'8->16'"),
        (2, "8", "reaches output stride 4 at most (node '_1'), not 8", "its values have the output strides 1, 2, 4"),
    ],
)  # fmt: skip
def test_a_model_short_of_the_conversion_says_how_far_it_goes_and_what_fits(strides, conversion, found, fix):
    with pytest.raises(GraphConversionError) as err:
        adatriton.convert(_strided(strides), conversion)
    message = str(err.value)
    assert found in message and fix in message, message
    assert "never takes the stride past" not in message


@pytest.fixture(scope="module")
def vit():
    return torchvision.models.vit_b_16(weights=None).eval()


def test_vit_says_its_patchify_conv_jumps_past_the_finest_stride(vit):
    with pytest.raises(GraphConversionError) as err:
        adatriton.convert(vit, "8->32", example_input=torch.empty(1, 3, 224, 224))
    message = str(err.value)
    assert message.startswith("node 'conv_proj' (call_module conv_proj): the stride goes from OS1 to OS16 in one layer")
    assert "no conversion starts before this layer (its input is the image)" in message
    assert "helps only where another layer leaves OS8 from a value at OS8" in message


def test_vit_with_densify_says_why_there_is_no_adaptive_part(vit):
    with pytest.raises(GraphConversionError) as err:
        adatriton.convert(vit, "8->32", example_input=torch.empty(1, 3, 224, 224), unsupported="densify")
    message = str(err.value)
    assert message.startswith("conversion '8->32' needs 2 stride-2 layers from OS8 to OS32, but node 'conv_proj'")
    assert "takes the stride from OS1 to OS16 in one layer" in message
    assert "the model has no value at OS8 for the adaptive part to start from" in message
    assert "reaches output stride 16 at most and never" not in message


def test_a_densify_note_says_its_reason_once():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, 8, 1), nn.Conv2d(4, 4, 3, 2, 1, padding_mode="reflect"), nn.Conv2d(4, 4, 3, 2, 1)
    ).eval()
    net = adatriton.convert(model, "8->32", unsupported="densify")
    (densified,) = [p for p in net.plan if p.op == "densify"]
    assert densified.note == "as is: padding_mode 'reflect' is not 'zeros'"


def test_a_head_that_is_not_a_module_is_refused_by_name():
    with pytest.raises(adatriton.models.GraphConversionError, match="head 'decoder' is not a module of ResNet"):
        adatriton.models.convert_graph(torchvision.models.resnet18(), "8->32", heads=("decoder",))


def test_a_softpool_conv_the_rules_cannot_express_runs_as_it_is_with_densify():
    """A stride-2 conv of the dense part that SoftPool would run at stride 1 with centred zero padding, but whose
    padding is not that (here reflect): refused by name, or with ``unsupported="densify"`` run as it is, not
    silently with other padding."""
    model = torchvision.models.resnet50().eval()
    model.layer3[0].conv2.padding_mode = "reflect"
    example = torch.empty(1, 3, 64, 64)
    with pytest.raises(GraphConversionError, match="layer3_0_conv2.*padding_mode 'reflect' is not 'zeros'"):
        adatriton.convert(model, "16->32", method="graph", downsampling="softpool", example_input=example)
    net = adatriton.convert(
        model, "16->32", method="graph", downsampling="softpool", unsupported="densify", example_input=example
    )
    (plan,) = [p for p in net.plan if p.target == "layer3.0.conv2"]
    assert plan.note == "as is: padding_mode 'reflect' is not 'zeros'"
