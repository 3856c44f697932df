"""Convolution on multi-resolution maps (docs/semantics.md §3), exact on every backend.

- The reference, and the torch backend: the gather-GEMM :func:`gather_conv_torch` (registered as the custom op
  ``adatriton::gather_conv`` with an analytic backward ``adatriton::gather_conv_backward``).
- The dense backend: densify, an ordinary dilated conv, sample at the element centres; on the CPU the same convs
  over only the tiles of the grid (and of the coarser lattices of the coarse elements) that hold outputs.
- The triton backend: the fused implicit-GEMM kernel of :mod:`adatriton.kernels.conv` (custom op
  ``adatriton::triton_conv``), with the autotuned config of :mod:`adatriton.runtime.autotune`.

Shapes: a :class:`~adatriton.core.multires.MultiResMap` holds ``(E, C)`` values; conv weights are
``(Cout, Cin / groups, k, k)`` as in :func:`torch.nn.functional.conv2d`.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.multires import MultiResMap, expect_map
from ..kernels import conv as conv_kernels
from ..runtime import autotune
from ..runtime.backend import TRITON_DTYPES, requested_backend, triton_runs_on
from ..runtime.context import getenv, same_settings, settings_token
from . import dispatch
from .batchnorm import ACTIVATIONS, EvalStats, activation_name, bn_add_act, eval_stats

__all__ = [
    "MAX_GATHER_BYTES",
    "autocast_conv_inputs",
    "check_conv_args",
    "conv2d",
    "conv_bn_act",
    "eager_plans",
    "folded_bn",
    "gather_conv_torch",
]

# The torch backend gathers (rows x k*k*Cin) columns; chunk rows so one gather stays below this many bytes
# (a 1024x2048 image at OS8 would otherwise need 32768 x 9 x 512 x 4 B = 604 MB for one layer4 conv).
MAX_GATHER_BYTES = 128 << 20


def check_conv_args(
    x: MultiResMap, weight: Tensor, bias: Tensor | None, groups: int, tap_spacing: int = 1, op: str = "conv2d"
) -> int:
    """Check a conv's arguments against the input map; returns the kernel size ``k``.

    ``op`` names the op in the messages.

    Raises:
        TypeError: ``x`` is not a MultiResMap, or ``tap_spacing`` / ``groups`` is not an int.
        ValueError: shapes, devices or dtypes that do not fit, or ``tap_spacing < 1``.
    """
    expect_map(x, op)
    if type(tap_spacing) is not int or type(groups) is not int:  # the common case costs two type checks
        for name, value in (("tap_spacing", tap_spacing), ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if tap_spacing < 1:
        raise ValueError(f"tap_spacing must be a positive int (the dilation on the finest grid), got {tap_spacing}")
    shape = weight.shape
    if len(shape) != 4 or shape[2] != shape[3] or shape[2] % 2 == 0:
        raise ValueError(f"weight must be (Cout, Cin/groups, k, k) with odd k, got {tuple(shape)}")
    cout, cin_g, k, _ = shape
    values = x.values
    if groups < 1 or cout % groups or cin_g * groups != values.shape[1]:
        raise ValueError(f"weight {tuple(shape)} with groups={groups} does not fit {x.channels} input channels")
    device, dtype = values.device, values.dtype
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but the input is on {device}")
        if t.dtype != dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but the input has {dtype}")
    if bias is not None and bias.shape != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")
    return k


def gather_conv_torch(values: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor, groups: int) -> Tensor:
    """``out[e] = bias + sum_t W[:, :, t] @ values[index[e, t]]`` with ``index == E`` reading zero: the reference.

    Rows go in chunks of at most :data:`MAX_GATHER_BYTES` of gathered columns, each GEMM writing its rows of the
    output in place (not differentiable itself: autograd reaches it through the custom op ``adatriton::gather_conv``).
    """
    rows, taps = index.shape
    cin, cout = values.shape[1], weight.shape[0]
    src = torch.cat([values, values.new_zeros(1, cin)])  # row E reads zero
    out = values.new_empty(rows, cout)
    if groups == cin == cout:  # depthwise: one multiply-add pass per tap, no (rows, taps, C) columns (5x faster)
        w = weight.reshape(cout, taps).t()
        torch.mul(src.index_select(0, index[:, 0]), w[0], out=out)
        for t in range(1, taps):
            out.addcmul_(src.index_select(0, index[:, t]), w[t])
        return out if bias is None else out.add_(bias)
    if groups == 1:
        w = weight.permute(0, 2, 3, 1).reshape(cout, taps * cin).t()  # (taps*Cin, Cout), tap-major like the cols
    else:
        w = weight.reshape(groups, cout // groups, cin // groups, taps)
    chunk = max(1, MAX_GATHER_BYTES // max(1, taps * cin * values.element_size()))
    for start in range(0, rows, chunk):
        idx = index[start : start + chunk]
        dst = out[start : start + chunk]
        cols = src.index_select(0, idx.reshape(-1))
        if groups == 1:
            cols = cols.view(len(idx), taps * cin)
            torch.mm(cols, w, out=dst) if bias is None else torch.addmm(bias, cols, w, out=dst)
        else:
            cols = cols.view(len(idx), taps, groups, cin // groups)
            dst.copy_(torch.einsum("etgc,goct->ego", cols, w).reshape(len(idx), cout))
            if bias is not None:
                dst.add_(bias)
    return out


def autocast_conv_inputs(
    x: MultiResMap, weight: Tensor, bias: Tensor | None
) -> tuple[MultiResMap, Tensor, Tensor | None]:
    """The conv's inputs as :func:`torch.autocast` would give them to ``F.conv2d``: floating tensors other than
    float64 cast to the autocast dtype of the input's device, when autocast is on there (else unchanged)."""
    device_type = x.values.device.type
    if not torch.is_autocast_enabled(device_type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: Tensor | None) -> Tensor | None:
        if t is None or not t.is_floating_point() or t.dtype in (dtype, torch.float64):
            return t
        return t.to(dtype)

    values = cast(x.values)
    if values is not x.values:
        x = MultiResMap(values, x.layout)
    return x, cast(weight), cast(bias)


def folded_bn(
    stats: EvalStats | None, bias: Tensor | None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor | None, Tensor | None]:
    """``(scale, shift)`` with ``bn(conv + bias) == scale * conv + shift`` for an eval-mode BatchNorm given by its
    :func:`~adatriton.ops.batchnorm.eval_stats` (or None: no BatchNorm); either may be None (no scale, or no shift).
    Computed in ``dtype`` promoted to at least float32."""
    dtype = torch.promote_types(dtype, torch.float32)
    if stats is None:
        return None, None if bias is None else bias.to(dtype)
    bn_weight, bn_bias, running_mean, running_var, eps = stats
    inv_std = torch.rsqrt(running_var.to(dtype) + eps)
    scale = inv_std if bn_weight is None else bn_weight.to(dtype) * inv_std
    mean = running_mean.to(dtype) if bias is None else running_mean.to(dtype) - bias.to(dtype)
    shift = -mean * scale if bn_bias is None else torch.addcmul(bn_bias.to(dtype), mean, scale, value=-1)
    return scale, shift


def _fused_gemm_epilogue(out: Tensor, shift: Tensor | None, residual: Tensor | None, act: int) -> Tensor:
    """``act(out + shift + residual)`` in place on a GEMM output (one pass each for the add and the activation).

    ``act`` is the activation's code (its index in :data:`adatriton.kernels.conv.ACTIVATIONS`, 0: none); the
    activation is torch's own function, in place, so the result is that of applying it after the op."""
    if shift is not None:
        out.add_(shift)
    if residual is not None:
        out.add_(residual)
    if act == 0:
        return out
    if act == 1:
        return out.relu_()
    return ACTIVATIONS[conv_kernels.ACTIVATIONS[act]](out, inplace=True)


def _conv_torch_fused(
    x: MultiResMap,
    weight: Tensor,
    scale: Tensor | None,
    shift: Tensor | None,
    residual: Tensor | None,
    act: int,
    index: Tensor | None,
    groups: int,
    grad: bool,
) -> Tensor:
    """The torch backend's eval-mode conv-BN(-add)-act: BatchNorm's scale folded into the GEMM weight, its shift
    into the GEMM's bias, residual add and activation (code ``act``) in place on the GEMM output.

    ``index`` is the tap table, the strided 1x1's source rows ``(M, 1)``, or None for a plain 1x1. With ``grad``
    (a gradient flows: no scale, residual or activation here) the gather-GEMM is the custom op with its backward.
    """
    dtype = x.dtype
    if scale is not None:
        weight = weight * scale.to(dtype).view(-1, 1, 1, 1)
    bias = None if shift is None else shift.to(dtype)
    # Under torch.compile the gather-GEMM stays one opaque op (its chunk loop writes in place).
    gather = _gather_conv if grad or torch.compiler.is_compiling() else gather_conv_torch
    if groups > 1:  # grouped convs: the reference einsum, then the epilogue
        rows = torch.arange(len(x.values), device=x.device)[:, None] if index is None else index
        return _fused_gemm_epilogue(gather(x.values, weight, bias, rows, groups), None, residual, act)
    cout = weight.shape[0]
    if index is None or index.shape[1] == 1:  # 1x1: a GEMM over the (surviving) elements
        values = x.values if index is None else x.values.index_select(0, index[:, 0])
        w = weight.reshape(cout, -1).t()
        out = values @ w if bias is None else torch.addmm(bias, values, w)
        return _fused_gemm_epilogue(out, None, residual, act)
    return _fused_gemm_epilogue(gather(x.values, weight, bias, index, 1), None, residual, act)


def _conv_dense(
    x: MultiResMap, weight: Tensor, bias: Tensor | None, tap_spacing: int, groups: int, downsample: bool
) -> Tensor:
    """Dense path: conv over the padded finest grid, sampled at the output elements' centres.

    On the CPU (eager) the conv runs only over the tiles of the grid that hold outputs (:func:`_conv_tiles`).
    """
    lay, k = x.layout, weight.shape[-1]
    if x.device.type == "cpu" and not lay.in_graph and not torch.compiler.is_compiling():
        return _conv_tiles(x, weight, bias, tap_spacing, groups, downsample)
    dense = x.densify(padded=True)
    out = F.conv2d(dense, weight, bias, padding=tap_spacing * (k // 2), dilation=tap_spacing, groups=groups)
    b, cy, cx = lay.batch_index, lay.centre_y, lay.centre_x
    if downsample:
        src = lay.downsample_sources("top_left")
        b, cy, cx = b[src], cy[src], cx[src]
    return out.permute(0, 2, 3, 1)[b, cy, cx]


def _conv_tiles(
    x: MultiResMap, weight: Tensor, bias: Tensor | None, tap_spacing: int, groups: int, downsample: bool
) -> Tensor:
    """The dense path's numbers from dense convs over the tiles that hold outputs (:meth:`Layout.tile_tables
    <adatriton.core.layout.Layout.tile_tables>`): per lattice of output centres, gather the tiles' input windows
    from the element values (channels-last, as densify gives them), one unpadded conv, pick the outputs.

    Why: a level-``v`` element's taps lie on a lattice ``2^v`` times coarser than the finest grid (the tap spacing
    is a multiple of ``2^v`` in a dilated network), so the coarse elements cost a conv over ``1/4^v`` of the grid;
    and the finest elements of clustered masks fill whole tiles, so the conv skips the tiles without outputs.
    The unpadded convs over pre-padded windows also keep oneDNN on its direct kernels, where the padded dilated
    5x5 depthwise conv of the densified grid is slow. Measured on this project's 2-core CPU (1 thread, 16x32 grid,
    8->32 blobs at level-0 fraction 0.3): a 960-channel depthwise 3x3 at tap spacing 4 costs 0.61 ms against 0.85 ms
    densified (the dense network's conv: 0.34 ms for all 512 pixels); 1024 channels in groups of 32: 3.4 against
    4.5 ms; whole networks (``python -m bench zoo --quick``'s models): EfficientNet-B0 and MobileNetV3-Large 2.1x
    faster, MobileNetV2 and RegNetY-400MF 5 %.
    """
    values = x.values
    cout, cin_g, k, _ = weight.shape
    # a 3x3 output costs ~(4 + Cin/groups) in the units where a gathered row costs GATHER_COST (see its note)
    output_cost = max(1, round((k * k / 9) * (4 + cin_g) * cout / values.shape[1]))
    plan = x.layout.tile_tables(k, tap_spacing, downsample, output_cost)
    src = torch.cat([values, values.new_zeros(1, values.shape[1])])  # row E reads zero
    parts = []
    for group in plan:
        tiles, wy, wx = group.window.shape
        cols = src.index_select(0, group.window.reshape(-1)).view(tiles, wy, wx, -1).permute(0, 3, 1, 2)
        out = F.conv2d(cols, weight, bias, dilation=group.dilation, groups=groups)
        parts.append(out.permute(0, 2, 3, 1).reshape(-1, cout).index_select(0, group.pick))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _check_triton(values: Tensor) -> None:
    if not (values.is_cuda or triton_runs_on(values.device)):
        raise RuntimeError(
            f"the triton backend needs a CUDA device (or TRITON_INTERPRET=1 on the CPU); the input is on "
            f"{values.device}"
        )
    if values.dtype not in TRITON_DTYPES:
        raise TypeError(f"the triton backend computes in float32, float16 or bfloat16, got {values.dtype}")


# Launch configs by shape bucket while tuning is off (see _launch_triton).
_CONFIGS: dict[tuple, tuple] = {}
#: Writes to _CONFIGS so far (it is only ever written in _launch_triton): an eager plan made after the last one
#: holds the config the memo gives without looking it up again.
_configs_written = [0]


def _memo_key(values: Tensor, index: Tensor | None, weight: Tensor, groups: int) -> tuple:
    """The key of :data:`_CONFIGS`: the autotune cache's bucket of the launch, and the cache directory."""
    rows = values.shape[0] if index is None else index.shape[0]
    return (
        (rows - 1).bit_length(), values.shape[1], weight.shape[0], weight.shape[-1] * weight.shape[-2], groups,
        values.dtype, index is not None, values.device, getenv(autotune.CACHE_DIR_ENV),
    )  # fmt: skip


def _launch_triton(
    values: Tensor,
    index: Tensor | None,
    weight: Tensor,
    groups: int,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    residual: Tensor | None = None,
    act: int = 0,
    bn: EvalStats | None = None,
) -> Tensor:
    """One fused kernel launch with the autotuned (or default) config for this bucket of shapes.

    Called where no gradient flows (eager inference, or inside the custom op). The kernel reads the conv weight
    and (with ``bn``, :func:`~adatriton.ops.batchnorm.eval_stats`) the BatchNorm's tensors in place, at this launch:
    nothing derived from them is cached, so no edit of the module (``.data`` writes included) can leave a stale
    copy, and no extra launch packs or folds anything. ``shift`` is the conv bias when ``bn`` is given.
    """
    rows = values.shape[0] if index is None else index.shape[0]
    cout, cin = weight.shape[0], values.shape[1]
    taps = weight.shape[-1] * weight.shape[-2]
    # The config of a bucket of shapes does not change while nothing is tuned: remember it here instead of asking
    # the autotune cache (key formatting, file lookup) on every launch (~25 µs). Keyed like the cache's buckets,
    # plus the cache directory, so a test or tool that moves the cache gets fresh answers.

    def launch(config):
        return conv_kernels.conv_elements(
            values, index, weight, taps=taps, groups=groups, scale=scale, shift=shift, bn=bn,
            residual=residual, act=act, config=config,
        )  # fmt: skip

    memo_key = _memo_key(values, index, weight, groups)
    config = None if autotune.is_tuning() else _CONFIGS.get(memo_key)
    if config is None:
        config = autotune.select_config(
            rows=rows,
            cin_g=cin // groups,
            cout_g=cout // groups,
            taps=taps,
            groups=groups,
            dtype=values.dtype,
            gather=index is not None,
            device=values.device,
            launch=launch,
        )
        _CONFIGS[memo_key] = config
        _configs_written[0] += 1
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
    # triton_conv's epilogue (scale, residual, activation): conv_bn_act fuses only when no gradient is needed
    ctx.epilogue = len(inputs) > 5 and (inputs[5] is not None or inputs[6] is not None or inputs[7])


def _conv_backward(ctx, grad):
    values, weight, bias, index = ctx.saved_tensors
    if ctx.epilogue:
        raise RuntimeError("the fused Triton conv (BatchNorm / residual / activation epilogue) has no backward")
    if index is None:  # a plain 1x1 conv on the Triton path: every element reads itself
        index = torch.arange(len(values), device=values.device)[:, None]
    index = index.long()  # the Triton path's tables are int32
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
    act: int,
) -> Tensor:
    """The fused Triton conv: ``act(scale * conv(values) + bias + residual)``, one launch (``bias`` is the shift;
    ``act`` the activation's code, :data:`adatriton.kernels.conv.ACTIVATIONS`)."""
    return _launch_triton(values, index, weight, groups, scale, bias, residual, act)


@_triton_conv.register_fake
def _(values, weight, bias, index, groups, scale, residual, act):
    # shape[0], not len(): len() of a traced (symbolic) row count would specialise it to an int
    return values.new_empty(values.shape[0] if index is None else index.shape[0], weight.shape[0])


_triton_conv.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
    outside the grid (docs/semantics.md §4 at odd sizes). A 1x1 conv is ``y_e = W x_e + b``. Under
    :func:`torch.autocast` the inputs are cast as for ``F.conv2d``.

    Args:
        x: input map, ``(E, Cin)`` values.
        weight: ``(Cout, Cin / groups, k, k)``, ``k`` odd.
        bias: ``(Cout,)`` or None.
        tap_spacing: ``o``, the conv's dilation in the dense network at the finest resolution (a positive int).
        groups: as in :func:`torch.nn.functional.conv2d`.
        downsample: also perform the next adaptive downsampling step (top-left variant): the conv is evaluated
            only at the elements that survive it, giving the next stage's map (a strided conv's fast path).
        backend: ``"torch"``, ``"dense"``, ``"triton"`` or ``"auto"`` (per-layer choice,
            :mod:`adatriton.ops.dispatch`); None resolves through :func:`adatriton.ops.dispatch.select`.

    Returns:
        ``(E_out, Cout)`` map on ``x``'s layout, or on the next stage's layout with ``downsample``.
    """
    expect_map(x, "conv2d")
    return conv_bn_act(x, weight, bias, tap_spacing=tap_spacing, groups=groups, downsample=downsample, backend=backend)


def _conv_values(
    x: MultiResMap,
    weight: Tensor,
    bias: Tensor | None,
    tap_spacing: int,
    groups: int,
    downsample: bool,
    name: str,
    grad: bool,
    stats: EvalStats | None = None,
    residual: Tensor | None = None,
    act: int = 0,
) -> Tensor:
    """The conv's output values on the backend ``name``, with the epilogue ``act(bn(.) + residual)`` fused in
    (``act``: the activation's code, :data:`adatriton.kernels.conv.ACTIVATIONS`).

    The one place that branches on the backend. With ``grad`` (a gradient flows) there is no epilogue (``stats``,
    ``residual`` and ``act`` are left out) and every path is differentiable.
    """
    k = weight.shape[-1]
    if name == "triton":
        _check_triton(x.values)
        index = x.layout.kernel_table(k, tap_spacing, downsample)
        values = x.values.contiguous()
        residual = None if residual is None else residual.contiguous()
        if grad or torch.compiler.is_compiling():  # one opaque op with a backward; the fold is a few graph ops
            scale, shift = (None, bias) if stats is None else folded_bn(stats, bias)
            return _triton_conv(values, weight, shift, index, groups, scale, residual, act)
        # eager inference: one launch without the custom op's dispatch, BatchNorm applied from its own tensors
        return _launch_triton(values, index, weight, groups, None, bias, residual, act, stats)
    scale, shift = (None, bias) if stats is None else folded_bn(stats, bias, x.dtype)
    if name == "dense" and k > 1:  # a 1x1 conv never reads neighbours: the GEMM below on every backend
        w = weight if scale is None else weight * scale.to(weight.dtype).view(-1, 1, 1, 1)
        out = _conv_dense(x, w, None if shift is None else shift.to(x.dtype), tap_spacing, groups, downsample)
        return _fused_gemm_epilogue(out, None, residual, act)
    index = x.layout.kernel_table(k, tap_spacing, downsample, compact=False)
    return _conv_torch_fused(x, weight, scale, shift, residual, act, index, groups, grad)


# ---------------------------------------------------------------------------------------------------- eager plans
# An eager inference conv on the triton backend, called again with the same objects (the module's weight, bias and
# BatchNorm, an input on the same layout: every conv of a forward with a reused level map), is the earlier call with
# other values. Its plan holds what the checks, the dispatcher and the config lookup decided, and the kernel's
# remembered launch (conv_kernels.BoundLaunch); a call that matches it launches at once (_replay), after checking
# everything those decisions read: identities, the shapes, strides, dtypes and devices of the tensors, grad mode,
# autocast, the requested backend, the tuning settings and the config memo. Anything else takes the full path, whose
# checks raise for bad input as before: no input that the full path refuses matches a plan. The plans of a layout
# live as long as the layout (its level map's tables); nothing derived from a tensor's data is kept.


class _EagerConv:
    """The remembered decisions of one eager triton :func:`conv_bn_act` call (see the comment above)."""

    __slots__ = (
        "weight", "bias", "bn", "values_shape", "values_stride", "dtype", "device", "weight_shape", "weight_stride",
        "bias_meta", "residual_meta", "bn_dtypes", "device_type", "index", "memo_key", "config", "configs_written",
        "cache_dir", "bound",
    )  # fmt: skip

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


#: id(layout) -> (weak reference to the layout, {call key: plan, or None for a call seen once}).
_EAGER: dict[int, tuple[weakref.ref, dict[tuple, _EagerConv | None]]] = {}
#: Plans per layout at most (distinct convs applied to one layout); beyond, that layout's plans are dropped.
MAX_EAGER_PLANS = 1024
_eager_enabled = True


@contextlib.contextmanager
def eager_plans(enabled: bool) -> Iterator[None]:
    """Whether :func:`conv_bn_act` replays remembered eager plans inside the block (default: on), process-wide: a
    switch to measure or rule them out (``python -m bench host`` times both). Off, every call takes the full path
    (whose launch :mod:`adatriton.kernels.conv` may still remember)."""
    global _eager_enabled
    before, _eager_enabled = _eager_enabled, bool(enabled)
    try:
        yield
    finally:
        _eager_enabled = before


def _plain_call(relu, activation, tap_spacing, groups, downsample) -> bool:
    """Whether the call's flags have the exact types a plan is keyed on: a bool or float spacing is an error on the
    full path that an equal key would hide, and an unhashable flag must reach the full path, not the key."""
    return (
        type(tap_spacing) is int
        and type(groups) is int
        and type(relu) is bool
        and type(downsample) is bool
        and (activation is None or type(activation) is str)
    )


def _eager_key(weight, bias, bn, relu, activation, residual, tap_spacing, groups, downsample, backend) -> tuple:
    return id(weight), id(bias), id(bn), relu, activation, residual is None, tap_spacing, groups, downsample, backend


def _stats_of(bn: nn.Module) -> EvalStats | None:
    """:func:`~adatriton.ops.batchnorm.eval_stats` read straight from the module's tables where its tensors sit in
    the usual ones (nn.Module keeps a name in at most one table, so they are what ``eval_stats`` reads); else
    ``eval_stats`` itself."""
    if bn.training:
        return None
    params, buffers = bn._parameters, bn._buffers
    try:
        weight, bias, mean, var = params["weight"], params["bias"], buffers["running_mean"], buffers["running_var"]
    except KeyError:
        return eval_stats(bn)
    if mean is None or var is None:
        return None
    return weight, bias, mean, var, bn.eps


class _Settings:
    """What the eager plans' checks read from the scoped settings and the environment, under one
    :func:`~adatriton.runtime.context.settings_token` (see :func:`_current_settings`)."""

    __slots__ = ("token", "recording", "interpreter", "tuning", "cache_dir", "requested")

    def __init__(self, token: tuple | None):
        self.token = token
        self.recording = dispatch.is_recording()
        # triton_runs_on for the CPU, the only other device type a plan is made on
        self.interpreter = getenv("TRITON_INTERPRET", "0") not in ("", "0")
        self.tuning = autotune.is_tuning()
        self.cache_dir = getenv(autotune.CACHE_DIR_ENV)
        self.requested: dict[str | None, str] = {}  # backend argument -> requested_backend(argument)[0]


#: The settings of the last replay made under a settings token (inside a forward's environment snapshot).
_settings: list[_Settings | None] = [None]


def _current_settings() -> _Settings:
    """The settings now: read again unless the scoped settings and the environment snapshot are the very objects
    they were read under (:func:`~adatriton.runtime.context.same_settings`): once per forward of a model (its
    snapshot), not once per conv. Shared by threads: another context's stacks are other objects."""
    token = settings_token()
    last = _settings[0]
    if last is not None and same_settings(token, last.token):
        return last
    settings = _Settings(token)
    if token is not None:
        _settings[0] = settings
    return settings


def _forget_layout(key: int, ref: weakref.ref) -> None:
    entry = _EAGER.get(key)
    if entry is not None and entry[0] is ref:
        del _EAGER[key]


def _replay(
    x: MultiResMap,
    weight: Tensor,
    bias: Tensor | None,
    bn: nn.Module | None,
    relu: bool,
    activation: str | None,
    residual: MultiResMap | None,
    tap_spacing: int,
    groups: int,
    downsample: bool,
    backend: str | None,
) -> MultiResMap | None:
    """:func:`conv_bn_act`'s result through a remembered plan, or None where there is none or it does not hold."""
    # Not while compiling: traced code takes the custom op, and Dynamo would trace this lookup.
    if not _eager_enabled or torch.compiler.is_compiling():
        return None
    if not _plain_call(relu, activation, tap_spacing, groups, downsample):
        return None
    if not isinstance(x, MultiResMap) or (backend is not None and type(backend) is not str):
        return None
    layout = x.layout
    entry = _EAGER.get(id(layout))
    if entry is None or entry[0]() is not layout:
        return None
    # (_eager_key's tuple, built here: a call less on every conv)
    plan = entry[1].get(
        (id(weight), id(bias), id(bn), relu, activation, residual is None, tap_spacing, groups, downsample, backend)
    )
    # the ids in the key are checked against the objects: an id can be reused once its object is gone
    if (
        plan is None
        or plan.weight() is not weight
        or (bias is not None and plan.bias() is not bias)
        or (bn is not None and plan.bn() is not bn)
        or torch.is_autocast_enabled(plan.device_type)
    ):
        return None
    # what check_conv_args and conv_elements' checks read of the values and the weight (one dtype and device for
    # both: the full path refuses others)
    values, dtype, device = x.values, plan.dtype, plan.device
    if values.stride() != plan.values_stride or values.shape != plan.values_shape or values.dtype is not dtype:
        return None
    if weight.stride() != plan.weight_stride or weight.shape != plan.weight_shape or weight.dtype is not dtype:
        return None
    if values.device != device or weight.device != device:
        return None
    if bias is not None and (bias.shape, bias.stride(), bias.dtype, bias.device) != plan.bias_meta:
        return None
    out_layout = layout.next() if downsample else layout
    res = None
    if residual is not None:
        if not isinstance(residual, MultiResMap) or residual.layout is not out_layout:
            return None
        res = residual.values
        if (res.shape, res.stride(), res.dtype) != plan.residual_meta:
            return None
    stats = None
    if bn is not None:
        stats = _stats_of(bn)
        if stats is None:
            return None
        bn_w, bn_b, mean, var, _ = stats
        w_dtype, b_dtype, mean_dtype, var_dtype = plan.bn_dtypes
        if mean.dtype is not mean_dtype or var.dtype is not var_dtype:
            return None
        if (None if bn_w is None else bn_w.dtype) is not w_dtype:
            return None
        if (None if bn_b is None else bn_b.dtype) is not b_dtype:
            return None
    if torch.is_grad_enabled() and _needs_grad(values, weight, bias, *(stats[:2] if stats else ()), res):
        return None
    settings = _current_settings()
    # dispatch.fixed_backend(weight, backend) == "triton", from the settings read once per forward
    name = dispatch.forced_backend(weight)
    if name is None:
        name = settings.requested.get(backend)
        if name is None:
            name = settings.requested[backend] = requested_backend(backend)[0]
    if name != "triton" or settings.recording:
        return None
    if (plan.device_type == "cpu" and not settings.interpreter) or settings.tuning:
        return None
    if settings.cache_dir != plan.cache_dir:
        return None
    if _configs_written[0] != plan.configs_written and _CONFIGS.get(plan.memo_key) is not plan.config:
        return None
    out = plan.bound.launch(values, plan.index, weight, None, bias, stats, res)
    return None if out is None else MultiResMap.prechecked(out, out_layout)


def _remember_eager(
    x: MultiResMap,
    weight: Tensor,
    bias: Tensor | None,
    bn: nn.Module | None,
    stats: EvalStats | None,
    relu: bool,
    activation: str | None,
    act: int,
    residual: MultiResMap | None,
    tap_spacing: int,
    groups: int,
    downsample: bool,
    backend: str | None,
) -> None:
    """After a fused eager launch on the triton backend (the full path of :func:`conv_bn_act`, its checks passed):
    remember its plan, where it can be replayed (a forced backend, contiguous values, no autocast, no tuning, a
    launch the kernel remembered). A call is planned the second time it is seen: the layouts of a map used once
    (a new map per forward) then cost a dictionary entry per conv, not a plan."""
    if not _eager_enabled or torch.compiler.is_compiling():
        return
    if not _plain_call(relu, activation, tap_spacing, groups, downsample):
        return
    if backend is not None and type(backend) is not str:
        return
    layout = x.layout
    key = id(layout)
    entry = _EAGER.get(key)
    if entry is None or entry[0]() is not layout:
        entry = _EAGER[key] = (weakref.ref(layout, functools.partial(_forget_layout, key)), {})
    plans = entry[1]
    # keyed on the call's own relu / activation (the full path validated them), launched with their code ``act``
    call = _eager_key(weight, bias, bn, relu, activation, residual, tap_spacing, groups, downsample, backend)
    if call not in plans:
        if len(plans) >= MAX_EAGER_PLANS:
            plans.clear()
        plans[call] = None
        return
    values = x.values
    device = values.device
    res = None if residual is None else residual.values
    if (
        torch.is_autocast_enabled(device.type)
        or autotune.is_tuning()
        or dispatch.fixed_backend(weight, backend) != "triton"
        or not values.is_contiguous()
        or (res is not None and not res.is_contiguous())
    ):
        return
    index = layout.kernel_table(weight.shape[-1], tap_spacing, downsample)
    memo_key = _memo_key(values, index, weight, groups)
    configs_written = _configs_written[0]
    config = _CONFIGS.get(memo_key)
    if config is None:
        return
    bound = conv_kernels.launch_plan(
        values, index, weight, taps=weight.shape[-1] * weight.shape[-2], groups=groups, shift=bias, bn=stats,
        residual=res, act=act, config=config,
    )  # fmt: skip
    if bound is None:
        return
    bn_dtypes = None
    if stats is not None:
        bn_w, bn_b, mean, var, _ = stats
        bn_dtypes = (None if bn_w is None else bn_w.dtype, None if bn_b is None else bn_b.dtype, mean.dtype, var.dtype)
    plans[call] = _EagerConv(
        weight=weakref.ref(weight),
        bias=None if bias is None else weakref.ref(bias),
        bn=None if bn is None else weakref.ref(bn),
        values_shape=values.shape,
        values_stride=values.stride(),
        dtype=values.dtype,
        device=device,
        weight_shape=weight.shape,
        weight_stride=weight.stride(),
        bias_meta=None if bias is None else (bias.shape, bias.stride(), bias.dtype, bias.device),
        residual_meta=None if res is None else (res.shape, res.stride(), res.dtype),
        bn_dtypes=bn_dtypes,
        device_type=device.type,
        index=index,
        memo_key=memo_key,
        config=config,
        configs_written=configs_written,
        cache_dir=memo_key[-1],
        bound=bound,
    )


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
    activation: str | None = None,
) -> MultiResMap:
    """``act(bn(conv2d(x)) + residual)``: a ResNet conv-BN(-add)-ReLU, or a MobileNet / EfficientNet conv-BN-act;
    :func:`conv2d` is this op without them.

    In eval mode with no gradient needed the epilogue is fused: on the triton backend one kernel launch (bias and
    BatchNorm as a per-channel scale and shift, the residual add, the activation and the cast in the epilogue); on
    the torch and dense backends BatchNorm's scale goes into the GEMM / conv weight and its shift into the bias, and
    the residual add and the activation run in place on the output. Otherwise (training, or any of the tensors needs
    a gradient, BatchNorm's affine parameters included) the ops run one after the other. Same result either way:
    the activation is ``F.relu`` / ``F.relu6`` / ``F.hardswish`` / ``F.silu`` applied last (on the triton backend
    computed in float32 before the cast, as the rest of the epilogue).

    Args:
        x, weight, bias, tap_spacing, groups, downsample, backend: as in :func:`conv2d`.
        bn: BatchNorm applied to the conv output, or None.
        relu: apply ReLU last: the spelling of ``activation="relu"`` (both may be given if they agree).
        residual: map on the output layout added after the BatchNorm.
        activation: the activation applied last: None, ``"relu"``, ``"relu6"``, ``"hardswish"`` or ``"silu"``.

    Raises:
        ValueError: an unknown ``activation``, or ``relu=True`` with another one (besides :func:`conv2d`'s).
    """
    replayed = _replay(x, weight, bias, bn, relu, activation, residual, tap_spacing, groups, downsample, backend)
    if replayed is not None:
        return replayed
    expect_map(x, "conv_bn_act")
    if residual is not None:
        expect_map(residual, "conv_bn_act", "residual")
    x, weight, bias = autocast_conv_inputs(x, weight, bias)
    check_conv_args(x, weight, bias, groups, tap_spacing, "conv_bn_act")
    name_of_act = activation_name(activation, relu)
    name = dispatch.select(x, weight, tap_spacing, groups, downsample, backend)
    out_layout = x.layout.next() if downsample else x.layout
    stats = None if bn is None else eval_stats(bn)
    bn_affine = (None, None) if stats is None else stats[:2]
    res = None if residual is None else residual.values
    if (bn is not None and stats is None) or _needs_grad(x.values, weight, bias, *bn_affine, res):
        out = _conv_values(x, weight, bias, tap_spacing, groups, downsample, name, grad=True)
        return bn_add_act(MultiResMap(out, out_layout), bn, residual=residual, activation=name_of_act)
    if residual is not None and not residual.layout.same_as(out_layout):
        raise ValueError(f"residual has layout {residual.layout}, the conv output {out_layout}")
    act = conv_kernels.ACTIVATIONS.index(name_of_act)
    out = _conv_values(x, weight, bias, tap_spacing, groups, downsample, name, False, stats, res, act)
    if name == "triton":
        # keyed on the call's own (relu, activation) spelling, as _replay sees it
        _remember_eager(
            x, weight, bias, bn, stats, relu, activation, act, residual, tap_spacing, groups, downsample, backend
        )
    return MultiResMap(out, out_layout)
