"""``adatriton.viz.overlay``: the tint of each level, the block outlines, the accepted image layouts, and the
errors for a map that does not fit the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adatriton
from adatriton import LevelMap
from adatriton.viz import BORDER_COLOR, LEVEL_COLORS, overlay


def _map() -> LevelMap:
    """An ``"8->32"`` map on a 4x8 grid: one 4x4 block at level 2, two 2x2 blocks at level 1, the rest level 0."""
    levels = torch.zeros(1, 4, 8, dtype=torch.long)
    levels[0, :, :4] = 2
    levels[0, :2, 4:6] = 1
    levels[0, 2:, 6:8] = 1
    return LevelMap(levels, 2)


def test_each_location_is_tinted_by_its_level_and_blocks_are_outlined():
    image = np.full((30, 60, 3), 100, dtype=np.uint8)  # a 4x8 grid at OS8 (ceil(30 / 8) = 4)
    out = overlay(image, _map(), alpha=0.5, borders=False)
    assert out.shape == (30, 60, 3) and out.dtype == np.uint8
    for (y, x), level in (((10, 10), 2), ((3, 35), 1), ((20, 52), 1), ((20, 40), 0), ((3, 50), 0)):
        expected = np.round(0.5 * 100 + 0.5 * np.array(LEVEL_COLORS[level]))
        assert np.array_equal(out[y, x], expected), (y, x, level)
    outlined = overlay(image, _map(), alpha=0.5)
    # The level-2 block spans pixels 0..31 across: its last column (31) is a border, its inside is not.
    assert tuple(outlined[10, 31]) == BORDER_COLOR and np.array_equal(outlined[10, 20], out[10, 20])
    assert tuple(outlined[0, 20]) == BORDER_COLOR  # the image's edge


def test_a_chw_float_tensor_and_a_batch_index():
    images = torch.rand(2, 3, 64, 64)
    levels = adatriton.masks.edges(images, "8->32", fraction=0.3)
    rgb = (images[1].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(overlay(images[1], levels, index=1), overlay(rgb, levels, index=1))
    assert np.array_equal(overlay(images[1], levels.levels[1]), overlay(rgb, levels, index=1))
    assert not np.array_equal(overlay(images[1], levels, index=0), overlay(images[1], levels, index=1))


def test_a_map_that_does_not_fit_the_image_is_refused():
    with pytest.raises(ValueError, match="no power-of-two stride"):
        overlay(np.zeros((100, 100, 3), np.uint8), _map())
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        overlay(np.zeros((30, 60), np.uint8), _map())
    with pytest.raises(IndexError, match="batch of 1"):
        overlay(np.zeros((30, 60, 3), np.uint8), _map(), index=1)
    with pytest.raises(TypeError, match="LevelMap"):
        overlay(np.zeros((30, 60, 3), np.uint8), np.zeros((4, 8)))
