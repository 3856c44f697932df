"""Density control: how much of the area a level map keeps fine, a parameter search for a target fraction, and
synthetic level maps with an exact number of level-0 tiles (for budgets, benchmarks, tuning and calibration)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..core.layout import ceil_div
from ..core.levelmap import LevelMap
from ..core.strides import default_tile
from .common import MaskDtypeError, MaskInputError, keep_to_levels, odd_size, parse_conversion

__all__ = ["Match", "match_fraction", "report", "synthetic", "synthetic_grid"]

_SYNTHETIC_KINDS = ("blobs", "blocks")


def report(levels: LevelMap) -> dict[str, object]:
    """Area fractions of a level map, overall and per sample.

    Returns:
        ``{"shape", "num_levels", "fractions" (K+1 floats, whole batch), "per_sample" (N lists),
        "level0" (fraction at level 0), "mean_level" (area-weighted)}``.
    """
    if not isinstance(levels, LevelMap):
        raise MaskDtypeError(f"report needs a LevelMap, got {type(levels).__name__}")
    fr = levels.fractions()
    return {
        "shape": levels.shape,
        "num_levels": levels.num_levels,
        "fractions": fr.tolist(),
        "per_sample": levels.fractions(per_sample=True).tolist(),
        "level0": float(fr[0]),
        "mean_level": float((fr * torch.arange(len(fr), dtype=fr.dtype)).sum()),
    }


class Match(NamedTuple):
    """Result of :func:`match_fraction`: the parameter value found and the level map it gives."""

    value: float | int
    levelmap: LevelMap


_CONTINUOUS_PARAMS = ("threshold",)
_ODD_PARAMS = ("dilation", "kernel")


def match_fraction(
    source_fn: Callable[..., LevelMap],
    target_fraction: float,
    param: str = "threshold",
    *,
    bounds: tuple[float, float] | None = None,
    max_iter: int = 40,
) -> Match:
    """Search one parameter of a mask source for the level-0 area fraction closest to a target.

    The fraction is that of the whole batch (:meth:`LevelMap.fractions`), so one value serves every sample.
    Level-0 area falls with ``threshold`` and grows with a box size, so the searches are bisections:

    - ``"threshold"``: bisection over ``bounds`` (default ``[0, 1]``) down to ``1e-6`` or ``max_iter`` steps;
      the fraction is a step function, so the result is the closer side of the step that crosses the target.
    - ``"dilation"`` / ``"kernel"``: bisection over odd sizes in ``bounds`` (default ``[1, 1025]``); the closer of
      the two odd sizes around the crossing (the smaller one on a tie, as it is cheaper).

    Args:
        source_fn: called as ``source_fn(**{param: value})``, returns a :class:`LevelMap`; e.g.
            ``functools.partial(masks.edges, images, "8->32", method="cad")``.
        target_fraction: wanted area fraction at level 0, in ``[0, 1]``.
        param: ``"threshold"``, ``"dilation"`` or ``"kernel"`` (the oracle's box).
        bounds: search interval (inclusive).
        max_iter: cap on bisection steps.

    Returns:
        :class:`Match` ``(value, levelmap)``; the closest achievable, not necessarily equal, fraction.
    """
    if not 0.0 <= float(target_fraction) <= 1.0:
        raise MaskInputError(f"target_fraction must lie in [0, 1], got {target_fraction}")
    if param not in _CONTINUOUS_PARAMS + _ODD_PARAMS:
        raise MaskInputError(f"param must be one of {_CONTINUOUS_PARAMS + _ODD_PARAMS}, got {param!r}")
    target = float(target_fraction)
    cache: dict[float, LevelMap] = {}

    def run(value) -> float:
        if value not in cache:
            lm = source_fn(**{param: value})
            if not isinstance(lm, LevelMap):
                raise MaskDtypeError(f"source_fn must return a LevelMap, got {type(lm).__name__}")
            cache[value] = lm
        return float(cache[value].fractions()[0])

    def best(*values) -> Match:
        v = min(values, key=lambda c: (abs(run(c) - target), c))
        return Match(v, cache[v])

    if param in _CONTINUOUS_PARAMS:
        lo, hi = (0.0, 1.0) if bounds is None else (float(bounds[0]), float(bounds[1]))
        if not lo <= hi:
            raise MaskInputError(f"bounds must be (low, high) with low <= high, got {bounds}")
        # Invariant: fraction(lo) >= target >= fraction(hi) (fraction falls with the threshold).
        if run(lo) <= target:
            return best(lo)
        if run(hi) >= target:
            return best(hi)
        for _ in range(max_iter):
            if hi - lo <= 1e-6:
                break
            mid = 0.5 * (lo + hi)
            f = run(mid)
            if f == target:
                return best(mid)
            lo, hi = (mid, hi) if f > target else (lo, mid)
        return best(lo, hi)
    lo, hi = (1, 1025) if bounds is None else (int(bounds[0]), int(bounds[1]))
    lo, hi = lo | 1, hi - (1 - hi % 2)  # the odd sizes inside the bounds
    if lo < 1 or lo > hi:
        raise MaskInputError(f"bounds must contain an odd size >= 1, got {bounds}")
    # Invariant: fraction(lo) < target <= fraction(hi) (fraction grows with the box).
    if run(lo) >= target:
        return best(lo)
    if run(hi) <= target:
        return best(hi)
    for _ in range(max_iter):
        if hi - lo <= 2:
            break
        mid = (lo + hi) // 2
        if mid % 2 == 0:
            mid -= 1
        if run(mid) < target:
            lo = mid
        else:
            hi = mid
    return best(lo, hi)


def synthetic(
    batch: int,
    height: int,
    width: int,
    output_stride: str,
    fraction: float,
    kind: str = "blobs",
    seed: int = 0,
    *,
    block: int | None = None,
    smoothing: int = 5,
) -> LevelMap:
    """Synthetic level map with an exact number of level-0 tiles, for budgets and benchmarks.

    The finest grid of an ``height x width`` *image* (as for the other sources) is tiled into aligned
    ``block x block`` tiles (the block rule's tiles, 4x4 by default); exactly ``round(fraction * tiles)`` tiles per
    sample get level 0, the others level ``K``. Tiles clipped by the border make the level-0 *area* differ
    slightly from ``fraction`` when the grid is not a multiple of the tile.

    - ``"blocks"``: a uniformly random subset of tiles (salt-and-pepper).
    - ``"blobs"``: tiles ranked by Gaussian noise smoothed with a ``smoothing x smoothing`` box (over real
      neighbours at the border), so the kept tiles form clusters, as content-adaptive masks do.

    One seed draws the scores of every sample, so masks of several fractions with the same seed are nested.

    Args:
        batch, height, width: number of samples and *image* size; the map is ``(N, ceil(H/s), ceil(W/s))``.
        output_stride: conversion name.
        fraction: share of tiles at level 0, in ``[0, 1]``.
        kind: ``"blobs"`` or ``"blocks"``.
        seed: seed of a private ``torch.Generator`` (the global RNG is untouched).
        block: tile size (default: that of :meth:`LevelMap.from_keep_mask`).
        smoothing: odd box size in tiles for ``"blobs"``.

    Returns:
        :class:`LevelMap` with levels in ``{0, K}`` on the CPU.
    """
    conversion, stride, k = parse_conversion(output_stride)
    for name, value in (("batch", batch), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise MaskInputError(f"{name} must be a positive int, got {value!r}")
    hf, wf = ceil_div(height, stride), ceil_div(width, stride)
    block = default_tile(conversion) if block is None else block
    return synthetic_grid(batch, hf, wf, k, fraction, kind, seed, block=block, smoothing=smoothing)


def synthetic_grid(
    batch: int,
    grid_height: int,
    grid_width: int,
    num_levels: int,
    fraction: float,
    kind: str = "blobs",
    seed: int = 0,
    *,
    block: int | None = None,
    smoothing: int = 5,
) -> LevelMap:
    """:func:`synthetic` on a given finest grid ``(N, grid_height, grid_width)`` with ``K = num_levels``.

    Returns:
        :class:`LevelMap` with levels in ``{0, K}`` on the CPU.
    """
    if kind not in _SYNTHETIC_KINDS:
        raise MaskInputError(f"unknown synthetic kind {kind!r}; expected one of {_SYNTHETIC_KINDS}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise MaskInputError(f"fraction must lie in [0, 1], got {fraction}")
    k = int(num_levels)
    smoothing = odd_size(smoothing, "smoothing")
    block = default_tile(k) if block is None else block
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1 or block % (1 << k):
        raise MaskInputError(f"block must be a positive multiple of 2^K = {1 << k}, got {block!r}")
    hf, wf = grid_height, grid_width
    hb, wb = ceil_div(hf, block), ceil_div(wf, block)
    gen = torch.Generator().manual_seed(int(seed))
    if kind == "blocks":
        scores = torch.rand(batch, hb * wb, generator=gen)
    else:
        noise = torch.randn(batch, 1, hb, wb, generator=gen)
        # count_include_pad=False: border tiles average real neighbours only, so they are not biased to 0.
        smooth = F.avg_pool2d(noise, smoothing, stride=1, padding=smoothing // 2, count_include_pad=False)
        scores = smooth.reshape(batch, hb * wb)
    count = round(float(fraction) * hb * wb)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    tiles = torch.zeros(batch, hb * wb, dtype=torch.bool)
    tiles.scatter_(1, order[:, :count], True)
    tiles = tiles.view(batch, hb, wb)
    keep = tiles.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :hf, :wf]
    return keep_to_levels(keep.contiguous(), k, block)
