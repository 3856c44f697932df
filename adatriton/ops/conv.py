"""Convolution on multi-resolution maps (docs/semantics.md §3), exact on every backend.

- The reference, and the torch backend: the gather-GEMM :func:`gather_conv_torch` (registered as the custom op
  ``adatriton::gather_conv`` with an analytic backward ``adatriton::gather_conv_backward``).
- The dense backend: densify, an ordinary dilated conv, sample at the element centres.
- The triton backend: the fused implicit-GEMM kernel of :mod:`adatriton.kernels.conv` (custom op
  ``adatriton::triton_conv``), with the autotuned config of :mod:`adatriton.runtime.autotune`.

Shapes: a :class:`~adatriton.core.multires.MultiResMap` holds ``(E, C)`` values; conv weights are
``(Cout, Cin / groups, k, k)`` as in :func:`torch.nn.functional.conv2d`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from ..core.multires import MultiResMap
from ..kernels.conv import conv_elements, pack_weight
from ..runtime import autotune, dispatch
from ..runtime.backend import triton_runs_on
from .batchnorm import bn_add_act, foldable

__all__ = ["MAX_GATHER_BYTES", "check_conv_args", "conv2d", "conv_bn_act", "gather_conv_torch", "packed_weight"]

# The torch backend gathers (rows x k*k*Cin) columns; chunk rows so one gather stays below this many bytes
# (a 1024x2048 image at OS8 would otherwise need 32768 x 9 x 512 x 4 B = 604 MB for one layer4 conv).
MAX_GATHER_BYTES = 128 << 20


def check_conv_args(x: MultiResMap, weight: Tensor, bias: Tensor | None, groups: int) -> int:
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


def gather_conv_torch(values: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor, groups: int) -> Tensor:
    """``out[e] = bias + sum_t W[:, :, t] @ values[index[e, t]]`` with ``index == E`` reading zero."""
    rows, taps = index.shape
    cin, cout = values.shape[1], weight.shape[0]
    src = torch.cat([values, values.new_zeros(1, cin)])
    if groups == 1:
        w = weight.permute(0, 2, 3, 1).reshape(cout, taps * cin).t()  # (taps*Cin, Cout), tap-major like the cols
    else:
        w = weight.reshape(groups, cout // groups, cin // groups, taps)
    chunk = max(1, MAX_GATHER_BYTES // max(1, taps * cin * values.element_size()))
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


# Packed weights per weight tensor, held weakly by identity: {weight: (its version counter, groups, packed)}. A hit
# needs the same live tensor at the same version, so in-place updates (optimizer steps) repack.
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def packed_weight(weight: Tensor, groups: int) -> Tensor:
    """``weight`` in the Triton kernel's layout (:func:`~adatriton.kernels.conv.pack_weight`), cached per tensor
    until it changes."""
    if weight.requires_grad and torch.is_grad_enabled():
        return pack_weight(weight, groups)  # keep the autograd graph; never cache a graph-carrying tensor
    hit = _PACKED.get(weight)
    if hit is not None and hit[0] == weight._version and hit[1] == groups:
        return hit[2]
    packed = pack_weight(weight.detach(), groups)
    _PACKED[weight] = (weight._version, groups, packed)
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
    taps = weight.shape[-1] * weight.shape[-2]
    packed = packed_weight(weight, groups)
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


# ---------------------------------------------------------------------------------------------------- custom ops
# The torch gather-GEMM, the Triton conv and the Triton densify are registered with torch.library, so torch.compile
# (and CUDA graphs under it) treat them as single opaque ops with known output shapes instead of tracing Python
# that launches kernels or loops over chunks. The backward of both convs is one analytic op (the Triton forward
# computes the gather-GEMM's function): it regathers the columns chunk by chunk, so no activation-sized buffer is
# saved between forward and backward.


@torch.library.custom_op("adatriton::gather_conv", mutates_args=())
def _gather_conv(values: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor, groups: int) -> Tensor:
    """``out[e] = bias + sum_t W[:, :, t] @ values[index[e, t]]`` (``index == E`` reads zero): the torch backend."""
    return gather_conv_torch(values, weight, bias, index, groups)


@_gather_conv.register_fake
def _(values, weight, bias, index, groups):
    return values.new_empty(index.shape[0], weight.shape[0])


@torch.library.custom_op("adatriton::gather_conv_backward", mutates_args=())
def _gather_conv_backward(
    grad: Tensor, values: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor, groups: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(d values, d weight, d bias)`` of :func:`_gather_conv` (``d bias`` is zeros without a bias).

    Analytic (custom ops run below autograd): per chunk of rows, ``dW += grad^T cols`` and the columns' gradient
    ``grad W`` scatter-adds back onto the elements it was gathered from (row ``E``, the zero sentinel, is dropped).
    """
    rows, taps = index.shape
    cin, cout = values.shape[1], weight.shape[0]
    cin_g, cout_g = cin // groups, cout // groups
    src = torch.cat([values, values.new_zeros(1, cin)])
    d_src = torch.zeros_like(src)
    w = weight.reshape(groups, cout_g, cin_g, taps)
    d_w = torch.zeros_like(w)
    chunk = max(1, MAX_GATHER_BYTES // max(1, taps * cin * values.element_size()))
    for start in range(0, rows, chunk):
        idx = index[start : start + chunk].reshape(-1)
        g_out = grad[start : start + chunk].view(-1, groups, cout_g)
        cols = src.index_select(0, idx).view(len(g_out), taps, groups, cin_g)
        d_w += torch.einsum("rgo,rtgc->goct", g_out, cols)
        d_src.index_add_(0, idx, torch.einsum("rgo,goct->rtgc", g_out, w).reshape(-1, cin))
    d_bias = grad.sum(0) if bias is not None else grad.new_zeros(cout)
    return d_src[:-1], d_w.reshape(weight.shape), d_bias


@_gather_conv_backward.register_fake
def _(grad, values, weight, bias, index, groups):
    return torch.empty_like(values), torch.empty_like(weight), grad.new_empty(weight.shape[0])


def _conv_backward_setup_context(ctx, inputs, output):
    grad, values, weight, bias, index, groups = inputs
    ctx.save_for_backward(grad, values, weight, index)
    ctx.groups, ctx.has_bias = groups, bias is not None


def _conv_double_backward(ctx, g_values, g_weight, g_bias):
    """Double backward: the backward is bilinear, ``d values = A_W^T grad``, ``d weight = B_values^T grad``,
    ``d bias = sum(grad)`` (``A_W`` / ``B_values``: the gather-GEMM as a linear map of values / of the weight), so
    its own gradients are the forward and backward gather-GEMMs again, themselves differentiable."""
    grad, values, weight, index = ctx.saved_tensors
    g_values = values.new_zeros(values.shape) if g_values is None else g_values.contiguous()
    g_weight = weight.new_zeros(weight.shape) if g_weight is None else g_weight.contiguous()
    g_bias = g_bias if ctx.has_bias and g_bias is not None else None
    # d grad = A_W g_values + B_values g_weight + g_bias (broadcast over rows)
    d_grad = torch.ops.adatriton.gather_conv(g_values, weight, None, index, ctx.groups)
    d_grad = d_grad + torch.ops.adatriton.gather_conv(values, g_weight, g_bias, index, ctx.groups)
    # d values pairs grad with g_weight (from d weight); d weight pairs grad with g_values (from d values)
    d_values, d_weight, _ = torch.ops.adatriton.gather_conv_backward(grad, g_values, g_weight, None, index, ctx.groups)
    return d_grad, d_values, d_weight, None, None, None


_gather_conv_backward.register_autograd(_conv_double_backward, setup_context=_conv_backward_setup_context)


def _conv_setup_context(ctx, inputs, output):
    values, weight, bias, index, groups = inputs[:5]
    ctx.save_for_backward(values, weight, bias, index)
    ctx.groups, ctx.num_inputs = groups, len(inputs)
    # triton_conv's epilogue (scale, residual, relu): conv_bn_act fuses only when no gradient is needed
    ctx.epilogue = len(inputs) > 5 and (inputs[5] is not None or inputs[6] is not None or inputs[7])


def _conv_backward(ctx, grad):
    values, weight, bias, index = ctx.saved_tensors
    if ctx.epilogue:
        raise RuntimeError("the fused Triton conv (BatchNorm / residual / ReLU epilogue) has no backward")
    if index is None:  # a plain 1x1 conv on the Triton path: every element reads itself
        index = torch.arange(len(values), device=values.device)[:, None]
    d_values, d_weight, d_bias = torch.ops.adatriton.gather_conv_backward(
        grad.contiguous(), values, weight, bias, index, ctx.groups
    )
    grads = (d_values, d_weight, d_bias if bias is not None else None, None, None)
    return grads + (None,) * (ctx.num_inputs - len(grads))


_gather_conv.register_autograd(_conv_backward, setup_context=_conv_setup_context)


@torch.library.custom_op("adatriton::triton_conv", mutates_args=())
def _triton_conv(
    values: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    index: Tensor | None,
    groups: int,
    scale: Tensor | None,
    residual: Tensor | None,
    relu: bool,
) -> Tensor:
    """The fused Triton conv: ``act(scale * conv(values) + bias + residual)``, one launch (``bias`` is the shift)."""
    return _launch_triton(values, index, weight, groups, scale, bias, residual, relu)


@_triton_conv.register_fake
def _(values, weight, bias, index, groups, scale, residual, relu):
    return values.new_empty(len(values) if index is None else index.shape[0], weight.shape[0])


_triton_conv.register_autograd(_conv_backward, setup_context=_conv_setup_context)


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
    """Convolution on a multi-resolution map (docs/semantics.md §3).

    ``y_e = b + sum_ij W[:, :, i, j] . F[c(e) + ((i - k//2) o, (j - k//2) o)]`` with ``F = densify(x)``, zero
    outside the grid (docs/semantics.md §4 at odd sizes). A 1x1 conv is ``y_e = W x_e + b``.

    Args:
        x: input map, ``(E, Cin)`` values.
        weight: ``(Cout, Cin / groups, k, k)``, ``k`` odd.
        bias: ``(Cout,)`` or None.
        tap_spacing: ``o``, the conv's dilation in the dense network at the finest resolution.
        groups: as in :func:`torch.nn.functional.conv2d`.
        downsample: also perform the next adaptive downsampling step (top-left variant): the conv is evaluated
            only at the elements that survive it, giving the next stage's map (a strided conv's fast path).
        backend: ``"torch"``, ``"dense"``, ``"triton"`` or ``"auto"`` (per-layer choice,
            :mod:`adatriton.runtime.dispatch`); None resolves through :func:`adatriton.runtime.dispatch.select`.

    Returns:
        ``(E_out, Cout)`` map on ``x``'s layout, or on the next stage's layout with ``downsample``.
    """
    check_conv_args(x, weight, bias, groups)
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
        values = _triton_conv(x.values.contiguous(), weight, bias, index, groups, None, None, False)
        return MultiResMap(values, out_layout)
    if k == 1:  # never reads neighbours: a GEMM over the (surviving) elements on every backend
        values = x.values[lay.downsample_sources("top_left")] if downsample else x.values
        w = weight.reshape(weight.shape[0], -1)
        if groups == 1:
            out = values @ w.t() if bias is None else torch.addmm(bias, values, w.t())
        else:
            out = _gather_conv(values, weight, bias, torch.arange(len(values), device=x.device)[:, None], groups)
        return MultiResMap(out, out_layout)
    if name == "dense":
        out = _conv_dense(x, weight, bias, tap_spacing, groups, downsample)
    else:
        out = _gather_conv(x.values, weight, bias, lay.tap_index(k, tap_spacing, downsample), groups)
    return MultiResMap(out, out_layout)


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
    k = check_conv_args(x, weight, bias, groups)
    name = dispatch.select(x, weight, tap_spacing, groups, downsample, backend)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x.values, weight, bias, residual and residual.values)
    )
    if name != "triton" or needs_grad or not foldable(bn):
        return bn_add_act(_conv2d(x, weight, bias, tap_spacing, groups, downsample, name), bn, relu, residual)
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
    index = _tap_index_or_rows(x, k, tap_spacing, downsample)
    values = _triton_conv(x.values.contiguous(), weight, shift, index, groups, scale, res, relu)
    return MultiResMap(values, out_layout)
