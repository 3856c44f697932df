"""Deformable convolution on a multi-resolution map, sampling the densified padded finest grid."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.multires import MultiResMap, expect_map
from . import conv
from .conv import autocast_conv_inputs, check_conv_args

__all__ = ["deform_conv2d"]


def _check_aux_map(name: str, aux: MultiResMap, x: MultiResMap, channels: int) -> None:
    expect_map(aux, "deform_conv2d", name)
    if not aux.layout.same_as(x.layout):
        raise ValueError(f"{name} has layout {aux.layout}, the input {x.layout}; they must be the same")
    if aux.channels != channels:
        raise ValueError(f"{name} must have {channels} channels for this kernel, got {aux.channels}")
    if aux.dtype != x.dtype:
        raise ValueError(f"{name} has dtype {aux.dtype} but the input has {x.dtype}")


def deform_conv2d(
    x: MultiResMap,
    offset: MultiResMap,
    weight: Tensor,
    bias: Tensor | None = None,
    tap_spacing: int = 1,
    mask: MultiResMap | None = None,
    groups: int = 1,
) -> MultiResMap:
    """Deformable convolution on a multi-resolution map, sampling the densified padded finest grid.

    For element ``e`` with centre ``c(e)`` and tap ``t = i k + j`` with offset ``(dy, dx) = offset_e[2t : 2t + 2]``
    (torchvision's channel order)::

        y_e = b + sum_t m_e[t] W[:, :, i, j] . bilinear(F, c(e) + ((i - k//2) o + dy, (j - k//2) o + dx))

    with ``F = x.densify(padded=True)`` (docs/semantics.md §4) and every bilinear corner outside that grid reading zero,
    i.e. ``torchvision.ops.deform_conv2d(F, offset.densify(padded=True), W, b, padding=o*(k//2), dilation=o)`` read at
    ``c(e)``. Only the elements' rows are computed: four corner elements per tap are looked up in the layout's
    ``id_map``, gathered, blended, and one GEMM applies the weight. Plain torch ops, differentiable in ``x``,
    ``offset``, ``mask``, ``weight`` and ``bias``.

    Args:
        x: input map, ``(E, Cin)`` values.
        offset: map on ``x``'s layout with ``(E, 2 k k)`` values, finest-grid pixels (e.g. from
            ``conv2d(x, offset_weight, None, tap_spacing)``).
        weight: ``(Cout, Cin, k, k)``, ``k`` odd.
        bias: ``(Cout,)`` or None.
        tap_spacing: ``o``, the conv's dilation in the dense network at the finest resolution.
        mask: optional modulation (DCNv2), a map on ``x``'s layout with ``(E, k k)`` values, or None.
        groups: only 1 is supported.

    Returns:
        ``(E, Cout)`` map on ``x``'s layout.
    """
    expect_map(x, "deform_conv2d")
    x, weight, bias = autocast_conv_inputs(x, weight, bias)
    k = check_conv_args(x, weight, bias, groups, tap_spacing, "deform_conv2d")
    if groups != 1:
        raise ValueError(f"deform_conv2d supports groups=1 only, got groups={groups}")
    taps = k * k
    _check_aux_map("offset", offset, x, 2 * taps)
    if mask is not None:
        _check_aux_map("mask", mask, x, taps)
    lay, dev, dtype = x.layout, x.device, x.dtype
    e, cin, cout = lay.num_elements, x.channels, weight.shape[0]
    hp, wp = lay.id_map.shape[1:]
    src = torch.cat([x.values, x.values.new_zeros(1, cin)])
    w = weight.permute(0, 2, 3, 1).reshape(cout, taps * cin).t()  # (taps*Cin, Cout), tap-major like the cols
    grid = (torch.arange(k, device=dev) - k // 2) * tap_spacing
    tap_y, tap_x = grid.repeat_interleave(k), grid.repeat(k)  # tap t = i*k + j -> row i, column j
    corner_y = torch.tensor([0, 0, 1, 1], device=dev)
    corner_x = torch.tensor([0, 1, 0, 1], device=dev)
    chunk = max(1, conv.MAX_GATHER_BYTES // (taps * 4 * cin * x.values.element_size()))
    outs = []
    for start in range(0, e, chunk):
        rows = slice(start, start + chunk)
        off = offset.values[rows].view(-1, taps, 2)
        # Clamping keeps huge offsets out of integer overflow: beyond [-2, Hp] both corners read zero anyway.
        py = ((lay.centre_y[rows, None] + tap_y).to(dtype) + off[..., 0]).clamp(-2, hp)
        px = ((lay.centre_x[rows, None] + tap_x).to(dtype) + off[..., 1]).clamp(-2, wp)
        y0, x0 = py.floor(), px.floor()
        ly, lx = py - y0, px - x0  # floor has zero gradient: the offsets' gradient flows through these
        cy = y0.long()[..., None] + corner_y  # (rows, taps, 4)
        cx = x0.long()[..., None] + corner_x
        inside = (cy >= 0) & (cy < hp) & (cx >= 0) & (cx < wp)
        b = lay.batch_index[rows, None, None]
        ids = torch.where(inside, lay.id_map[b, cy.clamp(0, hp - 1), cx.clamp(0, wp - 1)], e)
        wy = torch.stack([1 - ly, 1 - ly, ly, ly], dim=-1)
        wx = torch.stack([1 - lx, lx, 1 - lx, lx], dim=-1)
        blend = wy * wx if mask is None else wy * wx * mask.values[rows, :, None]
        corners = src.index_select(0, ids.reshape(-1)).view(*ids.shape, cin)
        cols = (blend[..., None] * corners).sum(2).reshape(-1, taps * cin)
        outs.append(cols @ w if bias is None else torch.addmm(bias, cols, w))
    return MultiResMap(outs[0] if len(outs) == 1 else torch.cat(outs), lay)
