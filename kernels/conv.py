"""Implicit-GEMM convolution over the elements of a multi-resolution map, with the mask lookup fused in.

One program computes a tile of ``BLOCK_M`` output elements x ``BLOCK_N`` output channels. Its reduction runs
over (tap, input-channel block): for tap ``t`` it loads the ``BLOCK_M`` source rows ``index[m, t]`` (the element
that tap reads, from the layout's tap table; ``>= num_rows`` reads zero) straight from the ``(E, Cin)`` values,
so no im2col buffer and no gathered copy is ever written. ``tl.dot`` accumulates in fp32. The epilogue applies
a per-channel scale and shift (bias and eval-mode BatchNorm folded), a residual add, ReLU and the cast to the
output dtype, so a bottleneck's conv-BN(-add)-ReLU is one launch.

The same kernel serves every conv of docs/semantics.md §3: k x k with any tap spacing (the tap table encodes it), the
downsampling conv evaluated only at the surviving elements (the table is centred there), the strided shortcut
(a 1-tap table of top-left sources: subsample + 1x1 in one pass) and plain 1x1 convs (``GATHER=False``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["ConvConfig", "conv_configs", "default_config", "prune_configs", "conv_elements", "dot_precision"]


class ConvConfig(tuple):
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps)`` of one launch; hashable and JSON-friendly."""

    __slots__ = ()
    fields = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_stages", "num_warps")

    def __new__(cls, block_m: int, block_n: int, block_k: int, num_stages: int, num_warps: int):
        return super().__new__(cls, (int(block_m), int(block_n), int(block_k), int(num_stages), int(num_warps)))

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.fields, self))

    @property
    def meta(self) -> dict[str, int]:
        """The block sizes, as constexpr keyword arguments."""
        return dict(zip(self.fields[:3], self[:3]))

    def __repr__(self) -> str:
        return "ConvConfig({})".format(", ".join(f"{k}={v}" for k, v in self.as_dict().items()))


def conv_configs() -> list[ConvConfig]:
    """The implicit-GEMM search space (after Inductor's conv templates): elements x channels x reduction tiles.

    BLOCK_M 32-256 elements, BLOCK_N 32-256 channels, BLOCK_K 16-128, 2-5 stages, 4-8 warps. 128x256 and 256x128
    tiles are left out: their fp32 accumulator alone needs 128 registers per thread at 8 warps, and ptxas spilled
    180-490 bytes for them on sm_90 (tests/test_kernels_aot.py reports registers and spills per config).
    """
    space = [
        (32, 32, 32, 2, 4),
        (64, 32, 32, 3, 4),
        (64, 64, 32, 3, 4),
        (64, 64, 64, 3, 4),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (128, 64, 64, 3, 8),
        (128, 128, 32, 4, 8),
        (128, 128, 64, 3, 8),
        (256, 64, 32, 4, 8),
        (64, 256, 32, 4, 8),
        (64, 64, 128, 2, 4),
        (128, 128, 16, 5, 8),
    ]
    return [ConvConfig(*c) for c in space]


def prune_configs(configs: list[ConvConfig], rows: int, cin: int, cout: int) -> list[ConvConfig]:
    """Drop configs whose tiles are much larger than the problem (they only waste work); never returns none."""
    m_cap = max(32, triton.next_power_of_2(max(rows, 1)))
    n_cap = max(32, triton.next_power_of_2(cout))
    k_cap = max(16, triton.next_power_of_2(cin))
    kept = [c for c in configs if c[0] <= m_cap and c[1] <= n_cap and c[2] <= k_cap]
    return kept or [min(configs, key=lambda c: c[0] * c[1] * c[2])]


def default_config(rows: int, cin: int, cout: int) -> ConvConfig:
    """The untuned config: 64 x 64 x 32 tiles, 3 stages, 4 warps, shrunk to small problems (autotuning replaces it).

    Moderate on purpose: 128 x 128 x 32 at 8 warps sat at 255 registers and spilled when the channel count is not a
    multiple of 16; 64 x 64 x 32 needs ~120 registers on sm_80 and sm_90.
    """
    bm = min(64, max(32, triton.next_power_of_2(rows)))
    bn = min(64, max(32, triton.next_power_of_2(cout)))
    bk = min(32, max(16, triton.next_power_of_2(cin)))
    return ConvConfig(bm, bn, bk, 3, 4)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 uses TF32 only when cuDNN's convolutions may (``torch.backends.cudnn.allow_tf32``), so comparisons with
    cuDNN are fair; half types multiply exactly in the tensor cores anyway."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"


@triton.jit
def _conv_elements_kernel(
    x_ptr,
    index_ptr,
    w_ptr,
    scale_ptr,
    shift_ptr,
    res_ptr,
    out_ptr,
    rows,
    num_src,
    cin_g,
    cout_g,
    stride_x,
    stride_res,
    stride_out,
    TAPS: tl.constexpr,
    GATHER: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    HAS_RES: tl.constexpr,
    RELU: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < rows
    n_ok = offs_n < cout_g
    x_group = x_ptr + group * cin_g
    w_group = w_ptr + group * TAPS * cin_g * cout_g  # weights: (groups, TAPS * cin_g, cout_g), row-major
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_blocks = tl.cdiv(cin_g, BLOCK_K)
    # One flat loop over (tap, channel block), so the compiler software-pipelines the loads across taps too.
    for it in range(0, TAPS * k_blocks):
        t = it // k_blocks
        offs_k = (it - t * k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
        if GATHER:
            # The fused mask lookup: which element this tap reads; num_src means "outside, read zero".
            src = tl.load(index_ptr + offs_m.to(tl.int64) * TAPS + t, mask=m_ok, other=num_src)
        else:
            src = offs_m
        src_ok = m_ok & (src < num_src)
        k_ok = offs_k < cin_g
        a = tl.load(
            x_group + src.to(tl.int64)[:, None] * stride_x + offs_k[None, :],
            mask=src_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        b = tl.load(
            w_group + (t * cin_g + offs_k)[:, None] * cout_g + offs_n[None, :],
            mask=k_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        if UPCAST:  # the interpreter computes bf16 products wrongly: multiply in fp32 there
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    chan = group * cout_g + offs_n
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + chan, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SHIFT:
        acc = acc + tl.load(shift_ptr + chan, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_mask = m_ok[:, None] & n_ok[None, :]
    rows64 = offs_m.to(tl.int64)[:, None]
    if HAS_RES:
        acc = acc + tl.load(res_ptr + rows64 * stride_res + chan[None, :], mask=out_mask, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(out_ptr + rows64 * stride_out + chan[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def pack_weight(weight: Tensor, groups: int) -> Tensor:
    """``(Cout, Cin/g, k, k)`` -> ``(g, k*k*Cin/g, Cout/g)`` contiguous, tap-major like the tap tables."""
    cout, cin_g, k, _ = weight.shape
    w = weight.reshape(groups, cout // groups, cin_g, k * k)
    return w.permute(0, 3, 2, 1).reshape(groups, k * k * cin_g, cout // groups).contiguous()


def conv_elements(
    values: Tensor,
    index: Tensor | None,
    packed_weight: Tensor,
    *,
    taps: int,
    groups: int = 1,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    residual: Tensor | None = None,
    relu: bool = False,
    out_dtype: torch.dtype | None = None,
    config: ConvConfig | None = None,
) -> Tensor:
    """Launch the fused conv: ``out[m] = act(scale * sum_t W_t x[index[m, t]] + shift + residual[m])``.

    Args:
        values: ``(E_in, Cin)`` input elements, channels contiguous (fp32, fp16 or bf16).
        index: ``(M, taps)`` int64 tap table (entries ``>= E_in`` read zero), or None for ``out[m] <- x[m]``
            (a 1x1 conv, ``M = E_in``).
        packed_weight: :func:`pack_weight` output, ``(groups, taps * Cin/g, Cout/g)``, same dtype as values.
        taps: number of taps ``k*k``.
        groups: conv groups.
        scale, shift: optional ``(Cout,)`` per-channel epilogue (fp32 recommended).
        residual: optional ``(M, Cout)`` tensor added before the activation.
        relu: apply ReLU last.
        out_dtype: output dtype (default: the input's).
        config: tile config; default :func:`default_config`.

    Returns:
        ``(M, Cout)`` tensor.
    """
    if values.dim() != 2 or values.stride(1) != 1:
        raise ValueError(f"values must be (E, Cin) with contiguous channels, got shape {tuple(values.shape)}")
    if values.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the triton backend computes in fp32, fp16 or bf16, got {values.dtype}")
    e_in, cin = values.shape
    g, k_total, cout_g = packed_weight.shape
    cin_g = cin // groups
    if g != groups or k_total != taps * cin_g or packed_weight.dtype != values.dtype:
        raise ValueError(
            f"packed weight {tuple(packed_weight.shape)} {packed_weight.dtype} does not fit {taps} taps x {cin} "
            f"{values.dtype} channels in {groups} groups"
        )
    if index is not None:
        if index.dim() != 2 or index.shape[1] != taps or index.dtype != torch.int64:
            raise ValueError(f"index must be int64 (M, {taps}), got {index.dtype} {tuple(index.shape)}")
        index = index.contiguous()
    rows = e_in if index is None else index.shape[0]
    cout = cout_g * groups
    out = torch.empty(rows, cout, dtype=out_dtype or values.dtype, device=values.device)
    if rows == 0:
        return out
    if residual is not None and (residual.shape != (rows, cout) or residual.stride(1) != 1):
        raise ValueError(f"residual must be ({rows}, {cout}) with contiguous channels, got {tuple(residual.shape)}")
    config = config or default_config(rows, cin_g, cout_g)
    dummy = out  # never read: the matching HAS_* flag is off
    grid = (triton.cdiv(rows, config[0]), triton.cdiv(cout_g, config[1]), groups)
    _conv_elements_kernel[grid](
        values,
        dummy if index is None else index,
        packed_weight,
        dummy if scale is None else scale.contiguous(),
        dummy if shift is None else shift.contiguous(),
        dummy if residual is None else residual,
        out,
        rows,
        e_in,
        cin_g,
        cout_g,
        values.stride(0),
        0 if residual is None else residual.stride(0),
        out.stride(0),
        TAPS=taps,
        GATHER=index is not None,
        HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None,
        HAS_RES=residual is not None,
        RELU=relu,
        UPCAST=interpreting() and values.dtype == torch.bfloat16,
        DOT_PRECISION=dot_precision(values.dtype),
        num_warps=config[4],
        num_stages=config[3],
        **config.meta,
    )
    return out
