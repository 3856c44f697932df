"""Operations on multi-resolution maps (SPEC §3), each exact on every backend.

Shapes: a :class:`~adatriton.multires.MultiResMap` holds ``(E, C)`` values; conv weights are
``(Cout, Cin / groups, k, k)`` as in :func:`torch.nn.functional.conv2d`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backends import resolve_backend
from .multires import MultiResMap

__all__ = ["conv2d", "downsample", "batch_norm", "relu", "add"]

# The torch backend gathers (rows x k*k*Cin) columns; chunk rows so one gather stays below this many bytes
# (a 1024x2048 image at OS8 would otherwise need 32768 x 9 x 512 x 4 B = 604 MB for one layer4 conv).
_MAX_GATHER_BYTES = 128 << 20


def _check_conv_args(x: MultiResMap, weight: Tensor, bias: Tensor | None, groups: int) -> int:
    if not isinstance(x, MultiResMap):
        raise TypeError(f"expected a MultiResMap, got {type(x).__name__}")
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(f"weight must be (Cout, Cin/groups, k, k) with odd k, got {tuple(weight.shape)}")
    cout, cin_g, k, _ = weight.shape
    if groups < 1 or cout % groups or cin_g * groups != x.channels:
        raise ValueError(f"weight {tuple(weight.shape)} with groups={groups} does not fit {x.channels} input channels")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but the input is on {x.device}")
        if t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but the input has {x.dtype}")
    if bias is not None and bias.shape != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")
    return k


def _gather_gemm(values: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor, groups: int) -> Tensor:
    """``out[e] = bias + sum_t W[:, :, t] @ values[index[e, t]]`` with ``index == E`` reading zero."""
    rows, taps = index.shape
    cin, cout = values.shape[1], weight.shape[0]
    src = torch.cat([values, values.new_zeros(1, cin)])
    if groups == 1:
        w = weight.permute(0, 2, 3, 1).reshape(cout, taps * cin).t()  # (taps*Cin, Cout), tap-major like the cols
    else:
        w = weight.reshape(groups, cout // groups, cin // groups, taps)
    chunk = max(1, _MAX_GATHER_BYTES // max(1, taps * cin * values.element_size()))
    outs = []
    for start in range(0, rows, chunk):
        idx = index[start : start + chunk]
        cols = src.index_select(0, idx.reshape(-1))
        if groups == 1:
            cols = cols.view(len(idx), taps * cin)
            outs.append(cols @ w if bias is None else torch.addmm(bias, cols, w))
        else:
            cols = cols.view(len(idx), taps, groups, cin // groups)
            out = torch.einsum("etgc,goct->ego", cols, w).reshape(len(idx), cout)
            outs.append(out if bias is None else out + bias)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _conv_dense(
    x: MultiResMap, weight: Tensor, bias: Tensor | None, tap_spacing: int, groups: int, downsample: bool
) -> Tensor:
    """Dense path: conv over the padded finest grid, sampled at the output elements' centres."""
    lay, k = x.layout, weight.shape[-1]
    dense = x.densify(padded=True)
    out = F.conv2d(dense, weight, bias, padding=tap_spacing * (k // 2), dilation=tap_spacing, groups=groups)
    b, cy, cx = lay.batch_index, lay.centre_y, lay.centre_x
    if downsample:
        src = lay.downsample_sources("top_left")
        b, cy, cx = b[src], cy[src], cx[src]
    return out.permute(0, 2, 3, 1)[b, cy, cx]


def conv2d(
    x: MultiResMap,
    weight: Tensor,
    bias: Tensor | None = None,
    tap_spacing: int = 1,
    groups: int = 1,
    downsample: bool = False,
    backend: str | None = None,
) -> MultiResMap:
    """Convolution on a multi-resolution map (SPEC §3).

    ``y_e = b + sum_ij W[:, :, i, j] . F[c(e) + ((i - k//2) o, (j - k//2) o)]`` with ``F = densify(x)``, zero
    outside the grid (SPEC §4 at odd sizes). A 1x1 conv is ``y_e = W x_e + b``.

    Args:
        x: input map, ``(E, Cin)`` values.
        weight: ``(Cout, Cin / groups, k, k)``, ``k`` odd.
        bias: ``(Cout,)`` or None.
        tap_spacing: ``o``, the conv's dilation in the dense network at the finest resolution.
        groups: as in :func:`torch.nn.functional.conv2d`.
        downsample: also perform the next adaptive downsampling step (top-left variant): the conv is evaluated
            only at the elements that survive it, giving the next stage's map (a strided conv's fast path).
        backend: ``"torch"`` or ``"dense"``; None resolves through :func:`adatriton.backends.resolve_backend`.

    Returns:
        ``(E_out, Cout)`` map on ``x``'s layout, or on the next stage's layout with ``downsample``.
    """
    k = _check_conv_args(x, weight, bias, groups)
    lay = x.layout
    out_layout = lay.next() if downsample else lay
    if k == 1:  # never reads neighbours: a GEMM over the (surviving) elements on every backend
        values = x.values[lay.downsample_sources("top_left")] if downsample else x.values
        w = weight.reshape(weight.shape[0], -1)
        if groups == 1:
            out = values @ w.t() if bias is None else torch.addmm(bias, values, w.t())
        else:
            out = _gather_gemm(values, weight, bias, torch.arange(len(values), device=x.device)[:, None], groups)
        return MultiResMap(out, out_layout)
    name = resolve_backend(backend)
    if name == "dense":
        out = _conv_dense(x, weight, bias, tap_spacing, groups, downsample)
    else:
        out = _gather_gemm(x.values, weight, bias, lay.tap_index(k, tap_spacing, downsample), groups)
    return MultiResMap(out, out_layout)


def downsample(x: MultiResMap, variant: str = "top_left") -> MultiResMap:
    """One adaptive downsampling step (SPEC §3): each aligned block with ``L >= j`` merges its four elements.

    Args:
        x: map at stage ``j - 1``.
        variant: ``"top_left"`` keeps the top-left element (what a stride-2 conv or subsampling does);
            ``"max"`` takes the elementwise maximum of the sub-elements that hold real pixels (2x2 max-pooling).

    Returns:
        The map at stage ``j``.
    """
    src = x.layout.downsample_sources(variant)
    nxt = x.layout.next()
    if variant == "top_left":
        return MultiResMap(x.values[src], nxt)
    padded = torch.cat([x.values, x.values.new_full((1, x.channels), float("-inf"))])
    return MultiResMap(padded[src].amax(dim=1), nxt)


def batch_norm(x: MultiResMap, bn: nn.modules.batchnorm._BatchNorm) -> MultiResMap:
    """Apply a BatchNorm module per element; in training mode statistics are over elements, each counting once.

    The module's own forward runs (running-stat updates, momentum, ``num_batches_tracked``), on the values
    viewed as ``(E, C, 1, 1)``.
    """
    e, c = x.values.shape
    return x.with_values(bn(x.values.reshape(e, c, 1, 1)).reshape(e, c))


def relu(x: MultiResMap) -> MultiResMap:
    return x.relu()


def add(x: MultiResMap, y: MultiResMap) -> MultiResMap:
    """Residual add of two maps on the same layout."""
    return x + y
