"""Adaptive downsampling (docs/semantics.md §3): top-left, max and SoftPool variants, and dense SoftPool."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.multires import MultiResMap, expect_map

__all__ = ["downsample", "softpool2d"]


def downsample(x: MultiResMap, variant: str = "top_left") -> MultiResMap:
    """One adaptive downsampling step (docs/semantics.md §3): each aligned block with ``L >= j`` merges its four
    elements.

    Args:
        x: map at stage ``j - 1``.
        variant: ``"top_left"`` keeps the top-left element (what a stride-2 conv or subsampling does);
            ``"max"`` takes the elementwise maximum of the sub-elements that hold real pixels (2x2 max-pooling);
            ``"softpool"`` takes their SoftPool, ``sum_i softmax_i(x) x_i`` per channel (see :func:`softpool2d`).

    Returns:
        The map at stage ``j``.
    """
    expect_map(x, "downsample")
    if variant not in ("top_left", "max", "softpool"):
        raise ValueError(f"downsampling variant must be 'top_left', 'max' or 'softpool', got {variant!r}")
    if variant == "softpool":
        return _downsample_softpool(x)
    src = x.layout.downsample_sources(variant)
    nxt = x.layout.next()
    if variant == "top_left":
        return MultiResMap(x.values[src], nxt)
    padded = torch.cat([x.values, x.values.new_full((1, x.channels), float("-inf"))])
    return MultiResMap(padded[src].amax(dim=1), nxt)


def _soft_merge(values: Tensor, valid: Tensor, dim: int) -> Tensor:
    """SoftPool along ``dim``: ``sum_i w_i x_i`` with ``w = softmax(x)`` over the entries where ``valid``.

    ``valid`` broadcasts against ``values``; at least one entry per window must be valid. ``torch.softmax``
    subtracts the window maximum, so large values do not overflow, and masked entries get weight exactly zero
    (masking the values too keeps ``0 * inf`` and ``0 * nan`` out of the sum and the gradient).
    """
    weights = torch.softmax(values.masked_fill(~valid, float("-inf")), dim=dim)
    return (weights * values.masked_fill(~valid, 0.0)).sum(dim)


def softpool2d(x: Tensor) -> Tensor:
    """Dense SoftPool with 2x2 windows and stride 2: ``out = sum_i softmax_i(x) x_i`` per window and channel.

    Sizes that are not even use ceil semantics: a window on the bottom/right border that is only partly inside
    the map merges just its real pixels (the rule the ``"softpool"`` :func:`downsample` follows, docs/semantics.md §4).

    Args:
        x: ``(N, C, H, W)``.

    Returns:
        ``(N, C, ceil(H / 2), ceil(W / 2))``.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"softpool2d expects (N, C, H, W), got {getattr(x, 'shape', type(x))}")
    n, c, h, w = x.shape
    h2, w2 = -(-h // 2), -(-w // 2)
    padded = F.pad(x, (0, 2 * w2 - w, 0, 2 * h2 - h))
    valid = torch.zeros(2 * h2, 2 * w2, dtype=torch.bool, device=x.device)
    valid[:h, :w] = True
    # Window entries in the order (0,0), (0,1), (1,0), (1,1), as in Layout.downsample_sources("max").
    windows = padded.view(n, c, h2, 2, w2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h2, w2, 4)
    valid = valid.view(h2, 2, w2, 2).permute(0, 2, 1, 3).reshape(h2, w2, 4)
    return _soft_merge(windows, valid, dim=-1)


def _downsample_softpool(x: MultiResMap) -> MultiResMap:
    """The ``"softpool"`` step of :func:`downsample`: merged blocks SoftPool their sub-elements, others copy."""
    lay = x.layout
    nxt = lay.next()
    merged = nxt.level_slice(nxt.stage)  # elements at the new level j: the merged blocks, last in the element order
    keep = lay.downsample_sources("top_left")[: merged.start]
    # Unchanged elements are copied rather than SoftPooled over four copies of themselves, which is not exact.
    quad = lay.downsample_sources("max")[merged]  # (E_merged, 4), sentinel E for sub-blocks without a real pixel
    src = torch.cat([x.values, x.values.new_zeros(1, x.channels)])
    pooled = _soft_merge(src[quad], (quad < lay.num_elements)[..., None], dim=1)
    return MultiResMap(torch.cat([x.values[keep], pooled]), nxt)
