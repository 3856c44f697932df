"""The dense backend's tiled convs on the CPU (:meth:`Layout.tile_tables`, docs/semantics.md §3-4): grouped and
depthwise convs over tiles of the lattices of output centres equal the dense simulation, whatever tile side the
cost model picks (forced here from one lattice point per tile up to whole lattices)."""

from __future__ import annotations

import pytest
import torch

import adatriton.core.layout as layout_module
import adatriton.ops as AF
from adatriton import LevelMap, MultiResMap, densify
from adatriton.masks.density import synthetic_grid
from tests.reference.simulation import DenseSim

DT = torch.float64


def _level_maps():
    gen = torch.Generator().manual_seed(3)
    return [
        ("K1-13x11-random", LevelMap.random(2, 13, 11, 1, generator=gen)),
        ("K2-16x24-blobs", synthetic_grid(1, 16, 24, 2, 0.3, kind="blobs", seed=0)),
        ("K2-17x23-random", LevelMap.random(2, 17, 23, 2, generator=gen)),
    ]


LEVEL_MAPS = _level_maps()


@pytest.fixture(params=[None, 1, 2, 4], ids=["cost-model", "tile1", "tile2", "tile4"])
def tile(request, monkeypatch):
    """The tile side: the cost model's choice, or a forced side (no gather cost: the smallest tiles win)."""
    if request.param is not None:
        monkeypatch.setattr(layout_module, "MIN_TILE", request.param)
        monkeypatch.setattr(layout_module, "GATHER_COST", 0)
    return request.param


@pytest.mark.parametrize("lm", [c[1] for c in LEVEL_MAPS], ids=[c[0] for c in LEVEL_MAPS])
@pytest.mark.parametrize(
    "k,spacing,cin_g,groups",
    [(3, 1, 1, 6), (3, 2, 1, 6), (5, 2, 1, 4), (3, 2, 8, 2), (3, 1, 32, 2), (3, 3, 8, 2)],
    ids=["dw-o1", "dw-o2", "dw-k5-o2", "g8-o2", "g32-o1", "g8-o3"],
)
def test_tiled_grouped_conv_matches_dense_simulation(tile, lm, k, spacing, cin_g, groups):
    cin = cout = cin_g * groups
    gen = torch.Generator().manual_seed(k + spacing + cin_g)
    weight = torch.randn(cout, cin_g, k, k, dtype=DT, generator=gen)
    bias = torch.randn(cout, dtype=DT, generator=gen)
    sim = DenseSim(lm.levels, lm.num_levels)
    for stage in range(lm.num_levels + 1):
        lay = lm.layout(stage)
        x = MultiResMap(torch.randn(lay.num_elements, cin, dtype=DT, generator=gen), lay)
        for step in (False, True) if stage < lm.num_levels else (False,):
            y = AF.conv2d(x, weight, bias, spacing, groups, downsample=step, backend="dense")
            expected = sim.conv(densify(x), weight, bias, spacing, stage, step, groups)
            torch.testing.assert_close(densify(y), expected, rtol=1e-12, atol=1e-12 * k * k * cin_g)


@pytest.mark.parametrize(
    "dtype,tol", [(DT, 1e-12), pytest.param(torch.bfloat16, 3e-2, id="bfloat16")], ids=lambda v: str(v)
)
def test_tiled_conv_dtypes(tile, dtype, tol):
    """bfloat16 runs the same tiles (oneDNN's conv in bfloat16): within bfloat16's rounding of the float64 result."""
    lm = LEVEL_MAPS[1][1]
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(16, 8, 3, 3, dtype=DT, generator=gen)
    sim = DenseSim(lm.levels, lm.num_levels)
    lay = lm.layout(1)
    x = MultiResMap(torch.randn(lay.num_elements, 16, dtype=DT, generator=gen), lay)
    expected = sim.conv(densify(x), weight, None, 2, 1, True, 2)
    xq = MultiResMap(x.values.to(dtype), lay)
    y = AF.conv2d(xq, weight.to(dtype), None, 2, 2, downsample=True, backend="dense")
    assert y.dtype == dtype
    # the reference from the rounded inputs: the tiles' own error, not the inputs' rounding
    expected = sim.conv(densify(MultiResMap(xq.values.to(DT), lay)), weight.to(dtype).to(DT), None, 2, 1, True, 2)
    scale = expected.abs().max()
    torch.testing.assert_close(densify(y).to(DT) / scale, expected / scale, rtol=0, atol=tol)


def test_tile_tables_cover_every_output_once(tile):
    """Every output row picks a distinct tile output, and the groups cover the rows in order."""
    lm = LEVEL_MAPS[2][1]
    lay = lm.layout(1)
    for downsample, rows in ((False, lay.num_elements), (True, lay.next().num_elements)):
        groups = lay.tile_tables(3, 2, downsample, output_cost=8)
        assert [g.start for g in groups] == [0] + [g.stop for g in groups[:-1]]
        assert groups[-1].stop == rows
        for g in groups:
            tiles, wy, wx = g.window.shape
            assert len(g.pick) == g.stop - g.start and len(torch.unique(g.pick)) == len(g.pick)
            assert int(g.window.max()) <= lay.num_elements and int(g.window.min()) >= 0
            assert int(g.pick.max()) < tiles * (wy - 2 * g.dilation) * (wx - 2 * g.dilation)
