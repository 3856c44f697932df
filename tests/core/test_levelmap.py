"""LevelMap: validation errors, constructors, statistics, and the layouts' element bookkeeping."""

import pytest
import torch

from adatriton import LevelMap, LevelMapDtypeError, LevelMapError
from tests.reference.simulation import DenseSim


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- bad input
def test_misaligned_map_names_first_block():
    levels = torch.zeros(2, 8, 8, dtype=torch.long)
    levels[1, 4:8, 4:8] = 2
    levels[1, 5, 6] = 1  # breaks the 4x4 block at rows 4..7, cols 4..7 (level 2), while 2x2 blocks stay fine
    with pytest.raises(LevelMapError, match=r"sample 1, 4x4 block rows 4\.\.7, cols 4\.\.7"):
        LevelMap(levels, 2)


def test_misaligned_level1_block_is_reported_before_level2():
    levels = torch.zeros(1, 8, 8, dtype=torch.long)
    levels[0, 2, 3] = 1  # a single pixel at level 1 cannot be a 2x2 block
    with pytest.raises(ValueError, match=r"2x2 block rows 2\.\.3, cols 2\.\.3 mixes levels >= 1 and < 1"):
        LevelMap(levels, "8->32")


def test_misaligned_clipped_block_at_odd_size():
    levels = torch.full((1, 5, 7), 2, dtype=torch.long)  # clipped blocks at the border are fine when uniform
    LevelMap(levels, 2)
    levels[0, 4, 6] = 0  # the clipped 4x4 block rows 4..4, cols 4..6 now mixes levels
    with pytest.raises(LevelMapError, match=r"rows 4\.\.4, cols 4\.\.6"):
        LevelMap(levels, 2)


@pytest.mark.parametrize("bad", [-1, 3], ids=["negative", "above-K"])
def test_value_out_of_range(bad):
    levels = torch.zeros(1, 8, 8, dtype=torch.long)
    levels[0, 3, 5] = bad
    with pytest.raises(LevelMapError, match=rf"value {bad} at sample 0, pixel \(row 3, col 5\) is outside 0\.\.2"):
        LevelMap(levels, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool], ids=str)
def test_non_integer_dtype(dtype):
    levels = torch.zeros(1, 8, 8, dtype=dtype)
    with pytest.raises(ValueError, match="integer dtype"):
        LevelMap(levels, 2)
    with pytest.raises(TypeError):
        LevelMap(levels, 2)


@pytest.mark.parametrize("shape", [(8, 8), (1, 1, 8, 8), (0, 8, 8)], ids=["2d", "4d", "empty"])
def test_wrong_shape(shape):
    with pytest.raises(LevelMapError, match="shape"):
        LevelMap(torch.zeros(shape, dtype=torch.long), 2)


def test_not_a_tensor_and_unknown_conversion():
    with pytest.raises(LevelMapDtypeError):
        LevelMap([[[0]]], 1)
    with pytest.raises(ValueError, match="unknown conversion"):
        LevelMap(torch.zeros(1, 4, 4, dtype=torch.long), "4->64")


def test_check_matches_shape_and_device():
    lm = LevelMap.uniform(2, 8, 8, 0, 2)
    lm.check_matches(2, 8, 8, torch.device("cpu"))
    with pytest.raises(LevelMapError, match=r"shape \(2, 8, 8\) but the features need"):
        lm.check_matches(2, 8, 9, torch.device("cpu"))
    with pytest.raises(LevelMapError, match="on cpu but the features are on meta"):
        lm.check_matches(2, 8, 8, torch.device("meta"))


# ---------------------------------------------------------------------------------------------- constructors
@pytest.mark.parametrize(
    "conversion,block,coarse",
    [("8->32", None, 2), ("8->16", None, 1), ("8->16", 2, 1)],
    ids=["8to32", "8to16-4x4", "8to16-2x2"],
)
def test_from_keep_mask(conversion, block, coarse):
    keep = torch.zeros(1, 9, 10, dtype=torch.bool)
    keep[0, 5, 1] = True
    keep[0, 8, 9] = True  # in the clipped bottom-right block
    lm = LevelMap.from_keep_mask(keep, conversion, block=block)
    b = block or 4
    expected = torch.full((1, 9, 10), coarse)
    expected[0, (5 // b) * b : (5 // b + 1) * b, 0:b] = 0
    expected[0, (8 // b) * b :, (9 // b) * b :] = 0
    assert torch.equal(lm.levels, expected)


def test_from_keep_mask_rejects_block_finer_than_levels():
    with pytest.raises(ValueError, match="multiple of 2"):
        LevelMap.from_keep_mask(torch.ones(1, 8, 8, dtype=torch.bool), "8->32", block=2)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_random_maps_are_aligned_mixed_and_differ_per_sample(k):
    lm = LevelMap.random(3, 19, 26, k, generator=_gen(k))
    assert lm.levels.unique().numel() == k + 1
    assert not torch.equal(lm.levels[0], lm.levels[1])


# ---------------------------------------------------------------------------------------------- statistics
def test_fractions_and_element_counts_brute_force():
    lm = LevelMap.random(2, 13, 18, 2, generator=_gen(5))
    lv = lm.levels
    expected = torch.tensor([(lv == v).double().mean().item() for v in range(3)], dtype=torch.float64)
    torch.testing.assert_close(lm.fractions(), expected)
    assert torch.allclose(lm.fractions(per_sample=True).sum(1), torch.ones(2, dtype=torch.float64))
    for stage in range(3):
        # brute force: an element is a distinct (sample, top-left, level) among the pixels' own blocks
        u = lv.clamp(max=stage)
        n, y, x = torch.meshgrid(torch.arange(2), torch.arange(13), torch.arange(18), indexing="ij")
        keys = {
            (int(a), int(b >> c << c), int(d >> c << c), int(c))
            for a, b, d, c in zip(n.flatten(), y.flatten(), x.flatten(), u.flatten())
        }
        counts = [sum(1 for key in keys if key[3] == v) for v in range(stage + 1)]
        assert lm.element_counts(stage) == counts
    stats = lm.stats()
    assert stats["elements_per_stage"][0] == [2 * 13 * 18]


@pytest.mark.parametrize("size", [(8, 8), (13, 18), (5, 3)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("k", [1, 2, 3])
def test_id_map_matches_spec_element_rule(size, k):
    """The layout's pixel -> element table equals the docs/semantics.md §4 rule as written in the simulation."""
    lm = LevelMap.random(2, *size, k, generator=_gen(sum(size) + k))
    sim = DenseSim(lm.levels, k)
    for stage in range(k + 1):
        lay = lm.layout(stage)
        ty, tx, lev = sim.element_of(stage)
        ids = lay.id_map
        covered = ids < lay.num_elements
        assert torch.equal(covered, lev >= 0)
        idx = ids[covered]
        size_of = 1 << lay.element_level[idx]
        assert torch.equal(lay.rows[idx] * size_of, ty[covered])
        assert torch.equal(lay.cols[idx] * size_of, tx[covered])
        assert torch.equal(lay.element_level[idx], lev[covered])


# ---------------------------------------------------------------------------------------------- immutability
def test_levels_is_a_copy_so_edits_change_nothing():
    lm = LevelMap.random(2, 13, 18, 2, generator=_gen(7))
    levels, fractions, counts = lm.levels, lm.fractions(), [lm.element_counts(j) for j in range(3)]
    layout = lm.layout(2)
    lm.levels.fill_(2)  # issue 23.1: an in-place edit of the public tensor
    lm.levels[0, 1, 1] = 1  # and a misaligned one
    assert torch.equal(lm.levels, levels)
    assert torch.equal(lm.fractions(), fractions)
    assert [lm.element_counts(j) for j in range(3)] == counts
    assert lm.layout(2) is layout and layout.num_elements == sum(counts[2])
    edited = lm.levels
    edited.fill_(2)
    assert LevelMap(edited, 2).fractions().tolist() == [0.0, 0.0, 1.0]  # the way to change a map: build a new one
