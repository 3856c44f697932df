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

__all__ = [
    "conv2d",
    "conv_bn_act",
    "bn_add_act",
    "downsample",
    "softpool2d",
    "deform_conv2d",
    "batch_norm",
    "relu",
    "add",
]

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


# ---------------------------------------------------------------------------------------------------- custom ops
# The torch gather-GEMM, the Triton conv and the Triton densify are registered with torch.library, so torch.compile
# (and CUDA graphs under it) treat them as single opaque ops with known output shapes instead of tracing Python
# that launches kernels or loops over chunks. The backward of both convs is one analytic op (the Triton forward
# computes the gather-GEMM's function): it regathers the columns chunk by chunk, so no activation-sized buffer is
# saved between forward and backward.


@torch.library.custom_op("adatriton::gather_conv", mutates_args=())
def _gather_conv(values: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor, groups: int) -> Tensor:
    """``out[e] = bias + sum_t W[:, :, t] @ values[index[e, t]]`` (``index == E`` reads zero): the torch backend."""
    return _gather_gemm(values, weight, bias, index, groups)


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
    chunk = max(1, _MAX_GATHER_BYTES // max(1, taps * cin * values.element_size()))
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


def _foldable(bn: nn.Module | None) -> bool:
    """Eval-mode BatchNorm with running statistics is a per-channel affine map, foldable into the epilogue."""
    return bn is None or (not bn.training and bn.running_mean is not None and bn.running_var is not None)


def bn_add_act(
    x: MultiResMap,
    bn: nn.modules.batchnorm._BatchNorm | None = None,
    relu: bool = False,
    residual: MultiResMap | None = None,
) -> MultiResMap:
    """``act(bn(x) + residual)`` op by op: the epilogue of :func:`conv_bn_act` when it is not fused."""
    if bn is not None:
        x = batch_norm(x, bn)
    if residual is not None:
        x = x + residual
    return x.relu() if relu else x


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


def downsample(x: MultiResMap, variant: str = "top_left") -> MultiResMap:
    """One adaptive downsampling step (SPEC §3): each aligned block with ``L >= j`` merges its four elements.

    Args:
        x: map at stage ``j - 1``.
        variant: ``"top_left"`` keeps the top-left element (what a stride-2 conv or subsampling does);
            ``"max"`` takes the elementwise maximum of the sub-elements that hold real pixels (2x2 max-pooling);
            ``"softpool"`` takes their SoftPool, ``sum_i softmax_i(x) x_i`` per channel (see :func:`softpool2d`).

    Returns:
        The map at stage ``j``.
    """
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


# ---------------------------------------------------------------------------------------------------- SoftPool


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
    the map merges just its real pixels (the rule the ``"softpool"`` :func:`downsample` follows, SPEC §4).

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


# ---------------------------------------------------------------------------------------------------- deformable


def _check_aux_map(name: str, aux: MultiResMap, x: MultiResMap, channels: int) -> None:
    if not isinstance(aux, MultiResMap):
        raise TypeError(f"{name} must be a MultiResMap, got {type(aux).__name__}")
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

    with ``F = x.densify(padded=True)`` (SPEC §4) and every bilinear corner outside that grid reading zero, i.e.
    ``torchvision.ops.deform_conv2d(F, offset.densify(padded=True), W, b, padding=o*(k//2), dilation=o)`` read at
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
    k = _check_conv_args(x, weight, bias, groups)
    if groups != 1:
        raise ValueError(f"deform_conv2d supports groups=1 only, got groups={groups}")
    if tap_spacing < 1:
        raise ValueError(f"tap spacing must be >= 1, got {tap_spacing}")
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
    chunk = max(1, _MAX_GATHER_BYTES // (taps * 4 * cin * x.values.element_size()))
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
