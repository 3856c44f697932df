"""Smoke test of the main job: ``python -m bench --quick`` writes a complete, sane runtime table."""

import math

import pandas as pd
import pytest
import torch

# `bench` is a top-level folder, not an installed package: importable because tests/ is a package whose parent,
# the repository root, pytest puts on sys.path.
from bench.__main__ import main, parse_args
from bench.backbone import COLUMNS, clustered_keep_mask

FRACTION = 0.3


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    path = main(["--quick", "--no-progress", "--suite", "backbone", "--fractions", str(FRACTION), "--out", str(out)])
    assert path == out / "backbone_runtime.csv"
    assert path.is_file()
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def test_columns(table):
    assert tuple(table.columns) == COLUMNS


def test_one_row_per_measurement(table):
    kinds = list(zip(table["kind"], table["output_stride"].astype(str), table["backend"].fillna("")))
    expected = [
        ("dense", "8", ""),
        ("dense", "16", ""),
        ("dense", "32", ""),
        ("bookkeeping", "8->32", ""),
        ("adaptive", "8->32", "torch"),
        ("adaptive", "8->32", "dense"),
    ]
    assert kinds == expected


def test_times_positive_finite(table):
    for col in ("median_s", "min_s", "max_s", "ratio_to_os8"):
        assert all(math.isfinite(v) and v > 0 for v in table[col]), col
    assert (table["min_s"] <= table["median_s"]).all() and (table["median_s"] <= table["max_s"]).all()
    assert (table["iqr_s"] >= 0).all()


def test_ratio_to_os8(table):
    os8 = table[(table["kind"] == "dense") & (table["output_stride"].astype(str) == "8")]
    assert len(os8) == 1
    assert os8["ratio_to_os8"].iloc[0] == pytest.approx(1.0)


def test_level0_fraction(table):
    dense = table[table["kind"] == "dense"]
    adaptive = table[table["kind"] != "dense"]
    assert dense["level0_fraction"].isna().all()
    # At the quick size the OS8 grid has 8 tiles of 4x4: 0.3 rounds to 2 tiles, an area of 0.25.
    assert ((adaptive["level0_fraction"] - FRACTION).abs() <= 0.05 + 1e-9).all()
    assert (adaptive["requested_fraction"] == FRACTION).all()


def test_elements(table):
    by_stride = {str(s): e for s, e, k in zip(table["output_stride"], table["elements"], table["kind"]) if k == "dense"}
    # Quick size 64x128: OS8 8x16, OS16 4x8, OS32 2x4 output pixels.
    assert by_stride == {"8": 128, "16": 32, "32": 8}
    adaptive = table[table["kind"] != "dense"]["elements"]
    assert (adaptive > by_stride["32"]).all() and (adaptive < by_stride["8"]).all()


def test_quick_defaults_and_overrides():
    args = parse_args(["--quick"])
    assert (tuple(args.size), args.repeats, args.warmup) == ((64, 128), 1, 0)
    args = parse_args(["--quick", "--size", "32", "32", "--repeats", "2"])
    assert (tuple(args.size), args.repeats, args.warmup) == ((32, 32), 2, 0)
    args = parse_args([])
    assert (tuple(args.size), args.repeats, args.warmup) == ((512, 1024), 3, 1)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_clustered_keep_mask_exact_tile_count(fraction):
    height, width = 512, 1024  # OS8 grid 64x128 = 16x32 tiles, none clipped
    keep = clustered_keep_mask(height, width, fraction, torch.Generator().manual_seed(0))
    assert keep.shape == (1, 64, 128) and keep.dtype == torch.bool
    tiles = keep[0, ::4, ::4]
    assert int(tiles.sum()) == round(fraction * tiles.numel())
    # Tiles are all-or-nothing, so the level map's level-0 area is exactly the kept tiles.
    assert torch.equal(keep[0], tiles.repeat_interleave(4, 0).repeat_interleave(4, 1))


def test_kernels_suite_quick(tmp_path):
    """The single-layer suite writes one row per (shape, density) plus a dense reference row per shape."""
    main(["--quick", "--no-progress", "--suite", "kernels", "--out", str(tmp_path)])
    table = pd.read_csv(tmp_path / "kernel_runtime.csv")
    assert not (tmp_path / "backbone_runtime.csv").exists()
    assert len(table) == 2 * (1 + 2)
    dense = table[table["backend"] == "dense"]
    assert (dense["efficiency"] == 1.0).all() and (dense["elements"] == 8 * 16).all()
    sparse = table[table["backend"] != "dense"]
    assert ((sparse["elements"] > 0) & (sparse["elements"] <= 8 * 16)).all()
    assert (table["median_ms"] > 0).all() and table["tflops"].notna().all()
