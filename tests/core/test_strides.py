"""One parser of output strides: ``8to32``, ``8:32``, ``8->32`` (and ``8→32``, ``8 -> 32``) read the same everywhere,
and what is written out keeps the canonical ``8->32``."""

import pytest
import torch
import torchvision

import adatriton
from adatriton.core.strides import canonical_stride, default_tile, num_levels_of, parse_output_stride
from adatriton.masks import edges, finest_size, synthetic
from adatriton.models.graph import parse_graph_output_stride

SPELLINGS = ["8->32", "8to32", "8TO32", "8:32", "8→32", "8 -> 32", " 8 to 32 ", "8 : 32"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_is_the_canonical_name(spelling):
    assert canonical_stride(spelling) == "8->32"
    assert parse_output_stride(spelling) == ("8->32", 8, 2)
    assert num_levels_of(spelling) == 2
    assert default_tile(spelling) == 4
    assert parse_graph_output_stride(spelling) == ("8->32", 8, 2)


@pytest.mark.parametrize("text, name", [(8, "8"), ("16", "16"), (" 32 ", "32"), ("16to32", "16->32"), ("1:8", "1->8")])
def test_dense_strides_and_other_conversions(text, name):
    assert canonical_stride(text) == name


@pytest.mark.parametrize("bad", ["8-32", "8>32", "8to", "to32", "eight", "8to32to64", ""])
def test_other_text_is_still_refused_naming_the_value(bad):
    with pytest.raises(ValueError, match="unknown output_stride"):
        parse_output_stride(bad)
    with pytest.raises(ValueError, match="unknown output_stride"):
        parse_graph_output_stride(bad)
    with pytest.raises(ValueError, match="unknown conversion"):
        num_levels_of(bad)


def test_level_maps_and_mask_sources_take_the_shell_safe_spellings():
    keep = torch.zeros(1, 8, 8, dtype=torch.bool)
    keep[:, :4, :4] = True
    ref = adatriton.LevelMap.from_keep_mask(keep, "8->32")
    for spelling in ("8to32", "8:32"):
        assert torch.equal(adatriton.LevelMap.from_keep_mask(keep, spelling).levels, ref.levels)
        assert adatriton.LevelMap(ref.levels, spelling).num_levels == 2
        assert finest_size(64, 96, spelling) == (8, 12)
        assert torch.equal(synthetic(1, 64, 64, spelling, 0.5).levels, synthetic(1, 64, 64, "8->32", 0.5).levels)
    images = torch.rand(1, 3, 64, 64)
    assert torch.equal(edges(images, "16to32").levels, edges(images, "16->32").levels)


def test_convert_names_the_canonical_stride():
    resnet = adatriton.convert(torchvision.models.resnet50(), "8to32")
    assert resnet.output_stride == "8->32" and "8->32" in repr(resnet).splitlines()[0] + repr(resnet)
    graph = adatriton.convert(torchvision.models.mobilenet_v2(), "8:16", example_input=torch.zeros(1, 3, 64, 64))
    assert graph.output_stride == "8->16" and graph.num_levels == 1
