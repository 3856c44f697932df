"""``adatriton.convert``'s argument checks: the backend at once, ints for dense strides end to end (issue 15)."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import adatriton


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return torchvision.models.resnet50().eval()


@pytest.mark.parametrize("stride", [8, 16, 32, np.int64(16)], ids=["8", "16", "32", "np.int64-16"])
def test_an_int_dense_stride_is_the_named_one(resnet50, stride):
    net = adatriton.convert(resnet50, stride).eval()
    named = adatriton.convert(resnet50, str(int(stride))).eval()
    assert net.output_stride == str(int(stride))
    x = torch.randn(1, 3, 64, 80)
    with torch.inference_mode():
        assert torch.equal(net(x), named(x))
        assert net.forward_features(x).shape[-2:] == (-(-64 // int(stride)), -(-80 // int(stride)))


def test_an_int_stride_for_a_segmentation_model():
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3).eval()
    seg = adatriton.convert(model, 16)
    assert seg.output_stride == "16"
    with torch.inference_mode():
        assert seg(torch.randn(1, 3, 48, 64))["out"].shape == (1, 3, 48, 64)


@pytest.mark.parametrize("backend", ["cuda", "Torch", "", 1])
def test_an_unknown_backend_is_refused_at_once(backend):
    resnet50 = torchvision.models.resnet18()  # not even a supported model: the backend is checked first
    with pytest.raises(ValueError, match=r"backend must be one of \['torch', 'dense', 'triton', 'auto'\]") as err:
        adatriton.convert(resnet50, "8->32", backend=backend)
    assert repr(backend) in str(err.value)
    assert type(resnet50.layer3[0].conv2) is torch.nn.Conv2d  # nothing was swapped


@pytest.mark.parametrize("backend", [None, "torch", "dense", "triton", "auto"])
def test_every_known_backend_is_accepted(resnet50, backend):
    assert adatriton.convert(resnet50, "8->32", backend=backend).backend == backend


def test_filter_fn_swaps_in_place_on_every_model_and_an_unknown_downsampling_is_refused():
    model = torchvision.models.mobilenet_v2()
    adatriton.convert(model, "8->32", filter_fn=lambda module, fqn: fqn.startswith("features.0"))
    assert type(model.features[0][0]) is adatriton.AdaptiveConv2d and type(model.features[1].conv[0][0]) is nn.Conv2d
    with pytest.raises(ValueError, match=r"downsampling must be one of \('top_left', 'softpool'\), got 'avg'"):
        adatriton.convert(model, "8->32", downsampling="avg")
