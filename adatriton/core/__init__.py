"""The data: output strides and conversions, level maps, element layouts and multi-resolution maps."""

from .export import (
    TracedCounts,
    count_sizes,
    dynamic_counts,
    explain_export_failure,
    fits_int32,
    is_traced,
    traced_stage_counts,
)
from .layout import Layout, TileGroup, block_sums, ceil_div
from .levelmap import MAX_LEVELS, LevelMap, LevelMapDtypeError, LevelMapError, LevelMapExportError
from .multires import MultiResMap, densify_values, expect_map
from .strides import (
    CONVERSIONS,
    OUTPUT_STRIDES,
    TILE_STRIDE,
    canonical_stride,
    default_tile,
    num_levels_of,
    parse_output_stride,
)

__all__ = [
    "CONVERSIONS",
    "Layout",
    "LevelMap",
    "LevelMapDtypeError",
    "LevelMapError",
    "LevelMapExportError",
    "MAX_LEVELS",
    "MultiResMap",
    "OUTPUT_STRIDES",
    "TracedCounts",
    "TILE_STRIDE",
    "TileGroup",
    "block_sums",
    "canonical_stride",
    "ceil_div",
    "count_sizes",
    "default_tile",
    "densify_values",
    "dynamic_counts",
    "explain_export_failure",
    "expect_map",
    "fits_int32",
    "is_traced",
    "num_levels_of",
    "parse_output_stride",
    "traced_stage_counts",
]
