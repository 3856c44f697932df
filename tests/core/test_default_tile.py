"""One keep-mask tile rule (``adatriton.core.strides.default_tile``) everywhere a keep mask becomes levels: the
authors' tiles (4x4 on the OS8 grid, 2x2 on the OS16 grid), checked against their ``batch_mask2poolingMask``
written out here from its description."""

import pytest
import torch

from adatriton import LevelMap, masks
from adatriton.core.strides import default_tile


def authors_pooling_mask(keep: torch.Tensor, pools: int) -> torch.Tensor:
    """The authors' ``batch_mask2poolingMask(keep, pools)``: ``2^pools x 2^pools`` tiles of the finest grid, a
    tile with any keep stays at level 0, the others go to level ``pools``; the grid is cropped to the input."""
    t = 1 << pools
    n, h, w = keep.shape
    out = torch.full((n, h, w), pools, dtype=torch.long)
    for b in range(n):
        for y in range(0, h, t):
            for x in range(0, w, t):
                if keep[b, y : y + t, x : x + t].any():
                    out[b, y : y + t, x : x + t] = 0
    return out


@pytest.mark.parametrize(
    "conversion,tile", [("8->32", 4), ("8->16", 4), ("16->32", 2), ("1->8", 8), ("16 -> 32", 2), (1, 4), (3, 8)]
)
def test_default_tile_table(conversion, tile):
    assert default_tile(conversion) == tile


def test_default_tile_rejects_unknown_conversions():
    with pytest.raises(ValueError, match="output_stride"):
        default_tile("4->8")


def test_16to32_keep_mask_matches_the_authors():
    """The issue's reproducer: a random OS16 keep mask, odd size; 156 cells differed with the old 4x4 default."""
    keep = torch.rand(2, 33, 63, generator=torch.Generator().manual_seed(0)) > 0.97
    ref = authors_pooling_mask(keep, 1)
    assert torch.equal(LevelMap.from_keep_mask(keep, "16->32").levels, ref)
    assert torch.equal(LevelMap.from_keep_mask(keep, "16->32", block=2).levels, ref)
    assert not torch.equal(LevelMap.from_keep_mask(keep, "16->32", block=4).levels, ref)  # the old default
    # 8->32 keeps the authors' 4x4 tiles on the OS8 grid
    assert torch.equal(LevelMap.from_keep_mask(keep, "8->32").levels, authors_pooling_mask(keep, 2))


def test_sources_and_synthetic_maps_use_the_rule():
    """Oracle, edges (both methods) and synthetic maps at 16->32 tile the OS16 grid in 2x2 blocks."""
    labels = torch.zeros(1, 160, 224, dtype=torch.long)
    labels[:, :, 100:] = 1
    for lm in (
        masks.oracle(labels, "16->32", kernel=1),
        masks.synthetic(2, 160, 224, "16->32", 0.3, kind="blocks", seed=1),
        masks.edges(torch.rand(1, 3, 160, 224, generator=torch.Generator().manual_seed(2)), "16->32", 0.9, 1),
    ):
        lv = lm.levels
        tiles = lv[:, ::2, ::2]
        assert torch.equal(tiles.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, : lv.shape[1], : lv.shape[2]], lv)
        assert 0 < float((lv == 0).float().mean()) < 1  # not trivially uniform
        # and not 4x4-aligned: the 2x2 tiling is really used
        coarse = lv[:, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2)[:, : lv.shape[1], : lv.shape[2]]
        assert not torch.equal(coarse, lv)
    lm = masks.synthetic(1, 160, 224, "16->32", 0.25, kind="blocks", seed=0)
    assert int((lm.levels[:, ::2, ::2] == 0).sum()) == round(0.25 * 5 * 7)  # exact count of 2x2 tiles (10 x 14 grid)
