"""What every mask source shares: its errors, the conversion parser, the finest grid, and the block rule."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ..core.layout import ceil_div
from ..core.levelmap import LevelMap
from ..core.strides import CONVERSIONS, parse_output_stride

__all__ = ["MaskDtypeError", "MaskInputError", "finest_size", "keep_to_levels", "odd_size", "parse_conversion"]


class MaskInputError(ValueError):
    """An input of a mask source is malformed (shape, value range, parameter)."""


class MaskDtypeError(MaskInputError, TypeError):
    """An input of a mask source has the wrong dtype (both a ``ValueError`` and a ``TypeError``)."""


def parse_conversion(output_stride: str) -> tuple[str, int, int]:
    """``(name, finest stride, K)`` of a conversion name such as ``"8->32"``.

    An int such as 8 is refused: it is ambiguous (8->16 or 8->32), and the finest stride and K are both needed.
    """
    if not isinstance(output_stride, str):
        raise MaskInputError(
            f"output_stride must be a conversion name, one of {sorted(CONVERSIONS)}, got {output_stride!r}"
        )
    return parse_output_stride(output_stride, CONVERSIONS, MaskInputError)


def finest_size(height: int, width: int, output_stride: str) -> tuple[int, int]:
    """``(Hf, Wf)``: the finest grid of an ``height x width`` image for a conversion (docs/semantics.md §1, §4).

    Equal to the size after ``log2(s)`` ceil-halvings (stride-2 convs with padding), i.e. ``ceil(H / s)``.
    """
    _, stride, _ = parse_conversion(output_stride)
    return ceil_div(height, stride), ceil_div(width, stride)


def odd_size(value, name: str) -> int:
    """A box size: a positive odd int (a centred box needs an odd side)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MaskInputError(f"{name} must be a positive odd int, got {value!r}")
    if value < 1 or value % 2 == 0:
        raise MaskInputError(f"{name} must be a positive odd int (a centred box), got {value}")
    return int(value)


def keep_to_levels(keep: Tensor, conversion: str | int, block: int | None) -> LevelMap:
    try:
        return LevelMap.from_keep_mask(keep, conversion, block=block)
    except ValueError as err:
        if isinstance(err, MaskInputError):
            raise
        raise (MaskDtypeError if isinstance(err, TypeError) else MaskInputError)(str(err)) from err
