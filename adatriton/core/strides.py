"""Output strides and conversions (docs/semantics.md §1, §7): the one table and the one parser.

A conversion ``"a->b"`` keeps the finest output stride ``a`` where the level map says so and downsamples up to
``K = log2(b / a)`` times elsewhere; a plain ``"8"`` / ``"16"`` / ``"32"`` is a dense network at that stride.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping

__all__ = [
    "CONVERSIONS",
    "OUTPUT_STRIDES",
    "TILE_STRIDE",
    "canonical_stride",
    "default_tile",
    "num_levels_of",
    "parse_output_stride",
]

#: Adaptive conversions: name -> (finest output stride, number of adaptive downsamplings K).
CONVERSIONS: dict[str, tuple[int, int]] = {"8->16": (8, 1), "8->32": (8, 2), "16->32": (16, 1), "1->8": (1, 3)}

#: What :func:`adatriton.convert` accepts for a ResNet: the dense strides (K = 0) and the ResNet conversions.
OUTPUT_STRIDES: dict[str, tuple[int, int]] = {
    "8": (8, 0),
    "16": (16, 0),
    "32": (32, 0),
    "8->16": (8, 1),
    "8->32": (8, 2),
    "16->32": (16, 1),
}


# "8->32", "8→32", "8to32", "8:32", spaces anywhere: "8to32" and "8:32" survive a shell unquoted ("->" is a redirect).
_STRIDE_SPELLING = re.compile(r"(\d+)(?:(?:->|→|to|:)(\d+))?", re.IGNORECASE)


def canonical_stride(output_stride: str | int) -> str:
    """The canonical name of an output stride spelling: ``"8to32"``, ``"8:32"``, ``"8→32"``, ``"8 -> 32"`` ->
    ``"8->32"``; ``8`` and ``" 8 "`` -> ``"8"``.

    The one place that reads the spellings: every parser of output strides (Python API, graph path, CLIs) calls it,
    and names written out (CSV columns, reprs) are the canonical ``"a->b"``.

    Args:
        output_stride: a name in any accepted spelling, or an int.

    Returns:
        The canonical name; anything that is not a spelling of a stride comes back without its spaces, for the
        caller to reject with its own message (this function never decides which strides exist).
    """
    key = re.sub(r"\s+", "", str(output_stride))
    match = _STRIDE_SPELLING.fullmatch(key)
    if match is None:
        return key
    return match.group(1) if match.group(2) is None else f"{match.group(1)}->{match.group(2)}"


def parse_output_stride(
    output_stride: str | int,
    choices: Mapping[str, tuple[int, int]] = OUTPUT_STRIDES,
    error: type[Exception] = ValueError,
) -> tuple[str, int, int]:
    """Normalise an output stride (``8``, ``"8"``, ``"8->32"``, ``"8to32"``, ``"8:32"``, ``"8→32"``, ``"8 -> 32"``:
    see :func:`canonical_stride`) to ``(name, finest, K)``.

    Args:
        output_stride: a name, or an int (also a numpy integer) for a dense stride.
        choices: the accepted names (default :data:`OUTPUT_STRIDES`).
        error: the exception type raised for anything else.

    Raises:
        error: not one of ``choices`` (an int for an adaptive-only table is refused: ``8`` could be 8->16 or 8->32).
    """
    if isinstance(output_stride, bool) or not isinstance(output_stride, (str, numbers.Integral)):
        raise error(f"unknown output_stride {output_stride!r}: output_stride must be one of {list(choices)}")
    key = canonical_stride(output_stride if isinstance(output_stride, str) else int(output_stride))
    if key not in choices:
        raise error(f"unknown output_stride {output_stride!r}: output_stride must be one of {list(choices)}")
    return (key, *choices[key])


def num_levels_of(conversion: str | int) -> int:
    """Number of adaptive downsamplings ``K`` of a conversion name such as ``"8->32"`` or ``"8to32"`` (ints pass
    through)."""
    if isinstance(conversion, int) and not isinstance(conversion, bool):
        if conversion < 0:
            raise ValueError(f"number of levels must be >= 0, got {conversion}")
        return conversion
    key = canonical_stride(conversion)
    if key not in CONVERSIONS:
        raise ValueError(f"unknown conversion {conversion!r}; expected one of {sorted(CONVERSIONS)} or an int K")
    return CONVERSIONS[key][1]


#: Output stride whose cells the default keep-mask tile covers: one cell of the coarsest grid of the conversion's
#: network, OS32 for the ResNet conversions, OS8 for the VGG-16 trunk of ``"1->8"``.
TILE_STRIDE: dict[str, int] = {"8->16": 32, "8->32": 32, "16->32": 32, "1->8": 8}


def default_tile(conversion: str | int) -> int:
    """Side, in finest-grid cells, of the aligned tiles a keep mask is turned into levels on (docs/semantics.md §6).

    The one rule for every conversion and every place a keep mask becomes a level map
    (:meth:`~adatriton.LevelMap.from_keep_mask`, the mask sources, the synthetic maps): a tile covers one cell of
    :data:`TILE_STRIDE` (the network's coarsest grid), and at least one coarsest element (``2^K`` cells). That is
    the authors' tiling: 4x4 on the OS8 grid for ``"8->32"`` and ``"8->16"``, 2x2 on the OS16 grid for
    ``"16->32"`` (their ``batch_mask2poolingMask(keep, 1)``); 8x8 on the image grid for ``"1->8"``.

    Args:
        conversion: a conversion name (``"8->32"``, ``"16->32"``, ...) or an int ``K``, which counts as a
            conversion from OS8 (``max(4, 2^K)``).

    Returns:
        The tile side, a multiple of ``2^K``.
    """
    if isinstance(conversion, int) and not isinstance(conversion, bool):
        return max(4, 1 << num_levels_of(conversion))
    name, finest, k = parse_output_stride(conversion, CONVERSIONS)
    return max(1 << k, TILE_STRIDE[name] // finest)
