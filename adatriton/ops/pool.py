"""Pooling, per-sample and channel-wise ops on multi-resolution maps (docs/semantics.md §8): what the layers of
CNNs other than ResNets need besides convolutions.

- :func:`global_avg_pool` / :func:`global_max_pool`: global pooling of the densified finest-grid map, computed
  from the elements (each element weighted by the real finest-grid area it covers), so squeeze-and-excitation
  blocks and classifier heads need no densified map.
- :func:`per_sample`: an op between every element and the vector of its sample (the SE scaling ``x * s``) or a
  per-channel constant.
- :func:`layer_norm`, :func:`linear`: channel-wise LayerNorm and Linear over each element's vector.
- :func:`avg_downsample`: the average-pool variant of the adaptive downsampling step (a 2x2 average pool with
  stride 2 after the finest output stride).

Shapes: a :class:`~adatriton.core.multires.MultiResMap` holds ``(E, C)`` values; ``N`` is the level map's batch.
Every op here is plain torch on the values and the layout's index tensors: differentiable, and traceable by
``torch.compile`` once the level map's layouts exist.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.multires import MultiResMap, expect_map

__all__ = [
    "avg_downsample",
    "element_areas",
    "global_avg_pool",
    "global_max_pool",
    "layer_norm",
    "linear",
    "per_sample",
]


def element_areas(x: MultiResMap) -> Tensor:
    """Real finest-grid pixels covered by each element (docs/semantics.md §2, §4: blocks clipped to the grid).

    Returns:
        ``(E,)`` tensor in the values' dtype: ``min(s, Hf - y0) * min(s, Wf - x0)`` for an element of side ``s``
        with top-left finest pixel ``(y0, x0)``.
    """
    expect_map(x, "element_areas")
    lay, lm = x.layout, x.layout.levelmap
    side = torch.ones_like(lay.element_level) << lay.element_level
    rows = torch.clamp(lm.height - lay.rows * side, max=side)
    cols = torch.clamp(lm.width - lay.cols * side, max=side)
    return (rows * cols).to(x.dtype)


def global_avg_pool(x: MultiResMap) -> Tensor:
    """Global average pooling of a map: the mean over the finest grid of its densified form (docs/semantics.md §8).

    Every element counts with the real area it covers, so the result equals ``x.densify().mean((2, 3))`` without
    densifying: ``sum_e area(e) x_e / (Hf * Wf)`` per sample.

    Args:
        x: map with ``(E, C)`` values.

    Returns:
        ``(N, C)`` per-sample vectors.
    """
    expect_map(x, "global_avg_pool")
    lay, lm = x.layout, x.layout.levelmap
    # Per-sample sums as one (N, E) x (E, C) product with the element areas in a sample-membership matrix, not an
    # index_add: torch.onnx lowers index_add to a ScatterND whose repeated indices ONNX Runtime does not sum (a
    # ResNet-50 8->32 classifier differed by 2e-2 relative, a different value each run).
    samples = torch.arange(lm.batch, device=lay.batch_index.device)
    areas = (lay.batch_index[None, :] == samples[:, None]).to(x.dtype) * element_areas(x)[None, :]
    return (areas @ x.values) / (lm.height * lm.width)


def global_max_pool(x: MultiResMap) -> Tensor:
    """Global max pooling of a map: the per-sample, per-channel maximum over its elements (which is the maximum
    over the densified finest grid: every element covers at least one real pixel, docs/semantics.md §4).

    Returns:
        ``(N, C)``.
    """
    expect_map(x, "global_max_pool")
    lay, lm = x.layout, x.layout.levelmap
    out = x.values.new_full((lm.batch, x.channels), float("-inf"))
    index = lay.batch_index[:, None].expand(-1, x.channels)
    return out.scatter_reduce(0, index, x.values, reduce="amax", include_self=True)


def per_sample(
    x: MultiResMap, vectors: Tensor, op: Callable[[Tensor, Tensor], Tensor] = torch.mul, reflected: bool = False
) -> MultiResMap:
    """``op(x_e, v[n(e)])`` for every element ``e`` of sample ``n(e)``: the squeeze-and-excitation scaling
    (``op=torch.mul`` with the pooled, excited vector of each sample), a per-sample bias or a per-channel
    constant (docs/semantics.md §8).

    Args:
        x: map with ``(E, C)`` values.
        vectors: ``(N, C)``, ``(N, 1)``, ``(1, C)``, ``(1, 1)`` or ``(C,)``: one row per sample, or one row for all.
        op: a binary elementwise function (``torch.mul``, ``torch.add``, ``operator.truediv``, ...).
        reflected: compute ``op(v[n(e)], x_e)`` instead (``s * x`` vs ``x * s`` matters for ``sub`` / ``div``).

    Returns:
        Map on ``x``'s layout.
    """
    expect_map(x, "per_sample")
    rows = vectors.reshape(1, -1) if vectors.dim() < 2 else vectors
    if rows.dim() != 2 or rows.shape[0] not in (1, x.layout.levelmap.batch) or rows.shape[1] not in (1, x.channels):
        raise ValueError(
            f"per-sample vectors must be (N, C), (N, 1), (1, C) or (C,) with N = {x.layout.levelmap.batch}, "
            f"C = {x.channels}; got {tuple(vectors.shape)}"
        )
    if rows.shape[0] > 1:  # one row per sample: every element reads its sample's row
        rows = rows.index_select(0, x.layout.batch_index)
    return x.with_values(op(rows, x.values) if reflected else op(x.values, rows))


def layer_norm(
    x: MultiResMap, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> MultiResMap:
    """LayerNorm over each element's channels (a channel-wise ``LayerNorm2d`` / ``nn.LayerNorm(C)`` on
    channels-last features), per element.

    Args:
        x: map with ``(E, C)`` values.
        weight, bias: ``(C,)`` affine parameters or None.
        eps: added to the variance.
    """
    expect_map(x, "layer_norm")
    return x.with_values(F.layer_norm(x.values, (x.channels,), weight, bias, eps))


def linear(x: MultiResMap, weight: Tensor, bias: Tensor | None = None) -> MultiResMap:
    """``W x_e + b`` for every element (an ``nn.Linear`` over the channels of channels-last features).

    Args:
        x: map with ``(E, Cin)`` values.
        weight: ``(Cout, Cin)``; bias: ``(Cout,)`` or None.

    Returns:
        ``(E, Cout)`` map on ``x``'s layout.
    """
    expect_map(x, "linear")
    return x.with_values(F.linear(x.values, weight, bias))


def avg_downsample(x: MultiResMap) -> MultiResMap:
    """One adaptive downsampling step in the average variant: a merged block takes the mean of its sub-elements
    that hold real pixels, each counting once (a 2x2 average pool with stride 2 on the grid of the previous level;
    at the bottom / right border only the real sub-elements count, as docs/semantics.md §4 rules for the max
    variant). Elements that do not merge are copied.

    Args:
        x: map at stage ``j - 1``.

    Returns:
        The map at stage ``j``.
    """
    expect_map(x, "avg_downsample")
    lay = x.layout
    nxt = lay.next()
    merged = nxt.level_slice(nxt.stage)  # the new level-j elements come last in the element order
    keep = lay.downsample_sources("top_left")[: merged.start]
    quad = lay.downsample_sources("max")[merged]  # (E_merged, 4), sentinel E where a sub-block has no real pixel
    real = (quad < lay.num_elements).to(x.dtype)
    src = torch.cat([x.values, x.values.new_zeros(1, x.channels)])
    pooled = (src[quad] * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    return MultiResMap(torch.cat([x.values[keep], pooled]), nxt)
