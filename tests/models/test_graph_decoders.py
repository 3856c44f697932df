"""Encoder-decoder models on the graph path (docs/semantics.md §8, "Decoders"): a UNet-like model whose decoder
upsamples with ``F.interpolate`` (``scale_factor=`` or ``size=``) and concatenates skips from higher-resolution
stages; torchvision's FCN / DeepLabv3, whose heads upsample the OS8 logits to the image.

What holds: every level map equals the dense simulation of the rules; ``scale_factor=`` and ``size=`` decoders
compute the same; a uniform level-0 map equals the dense network at the finest stride (the dilated one), a uniform
level-K map equals the original network where the decoder upsamples in ``nearest`` mode; a ``bilinear`` decoder
reading densified features converts with a warning that says so; a transposed conv there is refused by name.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import adatriton
from adatriton import LevelMap
from adatriton.models.graph import GraphConversionError
from tests.reference.graph_simulation import dilated_network, simulate

DT = torch.float64


class UNet(nn.Module):
    """Encoder to OS32, decoder back to OS4 by ``F.interpolate`` and ``torch.cat`` with the encoder's skips."""

    def __init__(self, upsampling: str = "scale_factor", mode: str = "nearest", transposed: bool = False):
        super().__init__()
        self.upsampling, self.mode = upsampling, mode
        c = 3
        self.e0 = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.ReLU())
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, 2, 1), nn.ReLU()) for _ in range(5))
        self.dec = nn.ModuleList(nn.Conv2d(2 * c, c, 3, 1, 1) for _ in range(3))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c, c, 2, 2) for _ in range(3)) if transposed else None
        self.out = nn.Conv2d(c, 2, 1)

    def up(self, i: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.ups is not None:
            return self.ups[i](x)
        align = {} if self.mode == "nearest" else {"align_corners": False}
        if self.upsampling == "scale_factor":
            return F.interpolate(x, scale_factor=2, mode=self.mode, **align)
        return F.interpolate(x, size=skip.shape[-2:], mode=self.mode, **align)

    def forward(self, x):
        skips = [self.e0(x)]
        for layer in self.down:
            skips.append(layer(skips[-1]))
        y = skips.pop()
        for i, conv in enumerate(self.dec):
            skip = skips.pop()
            y = conv(torch.cat([self.up(i, y, skip), skip], 1))
        return self.out(y)


def _unet(upsampling: str, mode: str, dtype=DT) -> nn.Module:
    torch.manual_seed(0)
    return UNet(upsampling, mode).eval().to(dtype)


def _convert(model: nn.Module, conversion: str) -> nn.Module:
    """``adatriton.convert`` without the bilinear decoder's warning (tested on its own below)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="decoder upsampling")
        return adatriton.convert(model, conversion)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("conversion", ["8->32", "8->16", "16->32"])
def test_unet_scale_factor_and_size_equal_the_simulation_on_mixed_maps(conversion, mode):
    a = int(conversion.split("->")[0])
    outputs = {}
    # A scale_factor decoder needs sides that are multiples of 32 (or its own cat fails); size= takes any.
    for upsampling, size in (("scale_factor", (64, 96)), ("size", (64, 96)), ("size", (72, 88))):
        x = torch.randn(2, 3, *size, dtype=DT, generator=torch.Generator().manual_seed(1))
        model = _unet(upsampling, mode)
        net = _convert(model, conversion)
        n, hf, wf = net.finest_grid(x)
        lm = LevelMap.random(n, hf, wf, net.num_levels, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            got = net(x, lm)
            expected = simulate(model, x, lm.levels, a, net.num_levels)
        assert got.shape == expected.shape == (2, 2, size[0] // 4, size[1] // 4)
        assert (got - expected).abs().max().item() <= 1e-12 * max(expected.abs().max().item(), 1.0)
        outputs[upsampling, size] = got
    assert torch.equal(outputs["scale_factor", (64, 96)], outputs["size", (64, 96)])


@pytest.mark.parametrize("upsampling", ["scale_factor", "size"])
def test_unet_uniform_level0_equals_the_dilated_network(upsampling):
    x = torch.randn(1, 3, 64, 96, dtype=DT, generator=torch.Generator().manual_seed(3))
    model = _unet(upsampling, "bilinear")
    net = _convert(model, "8->32")
    n, hf, wf = net.finest_grid(x)
    # The dilated network of either model is the size= one with strides past OS8 turned into dilation: there the
    # upsamplings above OS8 are identities, and size= says so by itself.
    dilated = dilated_network(_unet("size", "bilinear"), 8)
    with torch.no_grad():
        got = net(x, LevelMap.uniform(n, hf, wf, 0, net.num_levels))
        expected = dilated(x)
    assert (got - expected).abs().max().item() <= 1e-12


@pytest.mark.parametrize("upsampling", ["scale_factor", "size"])
def test_unet_nearest_uniform_coarsest_level_equals_the_original_in_float32(upsampling):
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    model = _unet(upsampling, "nearest", torch.float32)
    net = adatriton.convert(model, "8->32")
    n, hf, wf = net.finest_grid(x)
    with torch.no_grad():
        got = net(x, LevelMap.uniform(n, hf, wf, 2, 2))
        expected = model(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-6


def test_a_bilinear_decoder_on_densified_features_warns_naming_the_nodes():
    with pytest.warns(UserWarning, match=r"decoder upsampling \(node 'interpolate' \(bilinear, OS32 held at OS8\)"):
        adatriton.convert(_unet("scale_factor", "bilinear"), "8->32")


def test_a_transposed_conv_on_densified_features_is_refused_by_name():
    torch.manual_seed(0)
    model = UNet(transposed=True).eval()
    with pytest.raises(GraphConversionError, match=r"node 'ups_0' .*transposed conv of features at OS32 .*OS8"):
        adatriton.convert(model, "8->32")


@pytest.mark.parametrize("builder", ["fcn_resnet50", "deeplabv3_resnet50"])
@pytest.mark.parametrize("conversion", ["8->16", "8->32"])
def test_torchvision_fcn_and_deeplab_uniform_level0_equal_the_original(builder, conversion):
    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, builder)(weights=None, weights_backbone=None, num_classes=3)
    model = model.eval()
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x)["out"]  # torchvision's models are dilated to OS8: level 0 is the original
        net = adatriton.convert(copy.deepcopy(model), conversion)
        k = {"8->16": 1, "8->32": 2}[conversion]
        got = net(x, LevelMap.uniform(1, 8, 10, 0, k))["out"]
    assert got.shape == expected.shape == (1, 3, 64, 80)
    assert (got - expected).abs().max().item() <= 1e-5 * max(expected.abs().max().item(), 1.0)
