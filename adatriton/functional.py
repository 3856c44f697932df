"""Operations on multi-resolution maps (SPEC §3), each exact on every backend.

Shapes: a :class:`~adatriton.multires.MultiResMap` holds ``(E, C)`` values; conv weights are
``(Cout, Cin / groups, k, k)`` as in :func:`torch.nn.functional.conv2d`.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import dispatch
from .backends import triton_runs_on
from .multires import MultiResMap

__all__ = ["conv2d", "conv_bn_act", "downsample", "batch_norm", "relu", "add"]

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


def _check_triton(x: MultiResMap) -> None:
    if not triton_runs_on(x.device):
        raise RuntimeError(
            f"the triton backend needs a CUDA device (or TRITON_INTERPRET=1 on the CPU); the input is on {x.device}"
        )
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the triton backend computes in float32, float16 or bfloat16, got {x.dtype}")


# Packed weights per weight tensor: {id: (weakref to the tensor, its version counter, groups, packed)}. A hit needs
# the same live tensor object at the same version, so in-place updates (optimizer steps) and reused ids repack.
_PACKED: dict[int, tuple[weakref.ref, int, int, Tensor]] = {}


def _packed_weight(weight: Tensor, groups: int) -> Tensor:
    from .kernels.conv import pack_weight

    if weight.requires_grad and torch.is_grad_enabled():
        return pack_weight(weight, groups)  # keep the autograd graph; never cache a graph-carrying tensor
    hit = _PACKED.get(id(weight))
    if hit is not None and hit[0]() is weight and hit[1] == weight._version and hit[2] == groups:
        return hit[3]
    if len(_PACKED) > 4096:  # drop entries whose tensors are gone
        for key in [k for k, v in _PACKED.items() if v[0]() is None]:
            del _PACKED[key]
    packed = pack_weight(weight.detach(), groups)
    _PACKED[id(weight)] = (weakref.ref(weight), weight._version, groups, packed)
    return packed


def _launch_triton(
    values: Tensor,
    index: Tensor | None,
    weight: Tensor,
    groups: int,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    residual: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """One fused kernel launch with the autotuned (or default) config for this bucket of shapes."""
    from . import autotune
    from .kernels.conv import conv_elements

    taps = weight.shape[-1] * weight.shape[-2]
    packed = _packed_weight(weight, groups)
    values = values.contiguous()

    def launch(config):
        return conv_elements(
            values,
            index,
            packed,
            taps=taps,
            groups=groups,
            scale=scale,
            shift=shift,
            residual=residual,
            relu=relu,
            config=config,
        )

    config = autotune.select_config(
        rows=len(values) if index is None else len(index),
        cin_g=values.shape[1] // groups,
        cout_g=weight.shape[0] // groups,
        taps=taps,
        groups=groups,
        dtype=values.dtype,
        gather=index is not None,
        device=values.device,
        launch=launch,
    )
    return launch(config)


class _TritonConv(torch.autograd.Function):
    """Triton forward; the backward differentiates the torch gather-GEMM (the same function) by recomputation."""

    @staticmethod
    def forward(ctx, values, weight, bias, index, groups):
        ctx.save_for_backward(values, weight, bias, index)
        ctx.groups = groups
        return _launch_triton(values, index, weight, groups, shift=bias)

    @staticmethod
    def backward(ctx, grad_out):
        values, weight, bias, index = ctx.saved_tensors
        inputs = [
            None if t is None else t.detach().requires_grad_(need)
            for t, need in zip((values, weight, bias), ctx.needs_input_grad[:3])
        ]
        with torch.enable_grad():
            rows = index if index is not None else torch.arange(len(values), device=values.device)[:, None]
            out = _gather_gemm(inputs[0], inputs[1], inputs[2], rows, ctx.groups)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_out))
        return (*[next(grads) if t is not None and t.requires_grad else None for t in inputs], None, None)


def _tap_index_or_rows(x: MultiResMap, k: int, tap_spacing: int, downsample: bool) -> Tensor | None:
    """The Triton kernel's row table: taps for k x k, top-left sources for a strided 1x1, None for a plain 1x1."""
    if k > 1:
        return x.layout.tap_index(k, tap_spacing, downsample)
    return x.layout.downsample_sources("top_left")[:, None] if downsample else None


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
        backend: ``"torch"``, ``"dense"``, ``"triton"`` or ``"auto"`` (per-layer choice,
            :mod:`adatriton.dispatch`); None resolves through :func:`adatriton.dispatch.select`.

    Returns:
        ``(E_out, Cout)`` map on ``x``'s layout, or on the next stage's layout with ``downsample``.
    """
    _check_conv_args(x, weight, bias, groups)
    name = dispatch.select(x, weight, tap_spacing, groups, downsample, backend)
    return _conv2d(x, weight, bias, tap_spacing, groups, downsample, name)


def _conv2d(
    x: MultiResMap, weight: Tensor, bias: Tensor | None, tap_spacing: int, groups: int, downsample: bool, name: str
) -> MultiResMap:
    """:func:`conv2d` on the backend ``name`` already selected (so the dispatcher decides and records once)."""
    k = weight.shape[-1]
    lay = x.layout
    out_layout = lay.next() if downsample else lay
    if name == "triton":
        _check_triton(x)
        index = _tap_index_or_rows(x, k, tap_spacing, downsample)
        return MultiResMap(_TritonConv.apply(x.values, weight, bias, index, groups), out_layout)
    if k == 1:  # never reads neighbours: a GEMM over the (surviving) elements on every backend
        values = x.values[lay.downsample_sources("top_left")] if downsample else x.values
        w = weight.reshape(weight.shape[0], -1)
        if groups == 1:
            out = values @ w.t() if bias is None else torch.addmm(bias, values, w.t())
        else:
            out = _gather_gemm(values, weight, bias, torch.arange(len(values), device=x.device)[:, None], groups)
        return MultiResMap(out, out_layout)
    if name == "dense":
        out = _conv_dense(x, weight, bias, tap_spacing, groups, downsample)
    else:
        out = _gather_gemm(x.values, weight, bias, lay.tap_index(k, tap_spacing, downsample), groups)
    return MultiResMap(out, out_layout)


def _foldable(bn: nn.Module | None) -> bool:
    """Eval-mode BatchNorm with running statistics is a per-channel affine map, foldable into the epilogue."""
    return bn is None or (not bn.training and bn.running_mean is not None and bn.running_var is not None)


def conv_bn_act(
    x: MultiResMap,
    weight: Tensor,
    bias: Tensor | None = None,
    bn: nn.modules.batchnorm._BatchNorm | None = None,
    relu: bool = False,
    residual: MultiResMap | None = None,
    tap_spacing: int = 1,
    groups: int = 1,
    downsample: bool = False,
    backend: str | None = None,
) -> MultiResMap:
    """``act(bn(conv2d(x)) + residual)``: a ResNet conv-BN(-add)-ReLU.

    On the triton backend with an eval-mode BatchNorm and no gradient needed, this is one kernel launch (bias and
    BatchNorm folded into a per-channel scale and shift, the residual add, ReLU and the cast in the epilogue);
    otherwise the ops run one after the other with the same result.

    Args:
        x, weight, bias, tap_spacing, groups, downsample, backend: as in :func:`conv2d`.
        bn: BatchNorm applied to the conv output, or None.
        relu: apply ReLU last.
        residual: map on the output layout added after the BatchNorm.
    """
    k = _check_conv_args(x, weight, bias, groups)
    name = dispatch.select(x, weight, tap_spacing, groups, downsample, backend)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x.values, weight, bias, residual and residual.values)
    )
    if name != "triton" or needs_grad or not _foldable(bn):
        out = _conv2d(x, weight, bias, tap_spacing, groups, downsample, name)
        if bn is not None:
            out = batch_norm(out, bn)
        if residual is not None:
            out = out + residual
        return out.relu() if relu else out
    _check_triton(x)
    out_layout = x.layout.next() if downsample else x.layout
    scale, shift = None, bias
    if bn is not None:
        inv_std = torch.rsqrt(bn.running_var.float() + bn.eps)
        scale = inv_std if bn.weight is None else bn.weight.float() * inv_std
        shift = -bn.running_mean.float() * scale if bias is None else (bias.float() - bn.running_mean.float()) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.float()
    res = None
    if residual is not None:
        if not residual.layout.same_as(out_layout):
            raise ValueError(f"residual has layout {residual.layout}, the conv output {out_layout}")
        res = residual.values.contiguous()
    values = _launch_triton(
        x.values, _tap_index_or_rows(x, k, tap_spacing, downsample), weight, groups, scale, shift, res, relu
    )
    return MultiResMap(values, out_layout)


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
