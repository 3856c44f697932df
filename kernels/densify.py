"""Densify (docs/semantics.md §2): scatter every element's vector over its block of the finest grid.

Each program handles ``BLOCK_P`` finest-grid pixels x ``BLOCK_C`` channels: it reads the pixel -> element table
(``id_map``; ids ``>= num_src`` are outside the image and read zero) and copies the element's channels to the
output, channels-last ``(N, H, W, C)`` or NCHW as the head needs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["DensifyConfig", "densify_configs", "densify_elements"]


class DensifyConfig(tuple):
    """``(BLOCK_P, BLOCK_C, num_warps)``."""

    __slots__ = ()
    fields = ("BLOCK_P", "BLOCK_C", "num_warps")

    def __new__(cls, block_p: int, block_c: int, num_warps: int):
        return super().__new__(cls, (int(block_p), int(block_c), int(num_warps)))


def densify_configs() -> list[DensifyConfig]:
    """Tiles for the copy: wide channel blocks keep channels-last stores coalesced."""
    return [DensifyConfig(32, 64, 4), DensifyConfig(64, 64, 4), DensifyConfig(64, 128, 8), DensifyConfig(16, 256, 4)]


@triton.jit
def _densify_kernel(
    values_ptr,
    ids_ptr,
    out_ptr,
    pixels,
    width,
    hw,
    channels,
    num_src,
    stride_v,
    stride_in,
    stride_iy,
    stride_on,
    stride_oc,
    stride_oy,
    stride_ox,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = offs_p < pixels
    c_ok = offs_c < channels
    n = offs_p // hw
    y = (offs_p % hw) // width
    x = offs_p % width
    ids = tl.load(ids_ptr + n.to(tl.int64) * stride_in + y * stride_iy + x, mask=p_ok, other=num_src)
    ok = (p_ok & (ids < num_src))[:, None] & c_ok[None, :]
    vals = tl.load(values_ptr + ids.to(tl.int64)[:, None] * stride_v + offs_c[None, :], mask=ok, other=0.0)
    dst = n.to(tl.int64) * stride_on + y * stride_oy + x * stride_ox
    tl.store(
        out_ptr + dst[:, None] + offs_c[None, :].to(tl.int64) * stride_oc, vals, mask=p_ok[:, None] & c_ok[None, :]
    )


def densify_elements(
    values: Tensor, id_map: Tensor, channels_last: bool = True, config: DensifyConfig | None = None
) -> Tensor:
    """``out[n, :, y, x] = values[id_map[n, y, x]]`` (zero where the id is ``>= E``).

    Args:
        values: ``(E, C)`` element vectors, channels contiguous.
        id_map: ``(N, H, W)`` int64 pixel -> element table whose last dimension is contiguous (a crop of the
            padded table is fine).
        channels_last: memory format of the result (NCHW-contiguous otherwise).
        config: tile config; default the first of :func:`densify_configs`.

    Returns:
        ``(N, C, H, W)`` tensor.
    """
    if values.dim() != 2 or values.stride(1) != 1:
        raise ValueError(f"values must be (E, C) with contiguous channels, got shape {tuple(values.shape)}")
    if id_map.dim() != 3 or id_map.dtype != torch.int64 or id_map.stride(2) != 1:
        raise ValueError(
            f"id_map must be int64 (N, H, W) with contiguous rows, got {id_map.dtype} {tuple(id_map.shape)}"
        )
    e, c = values.shape
    n, h, w = id_map.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(n, c, h, w, dtype=values.dtype, device=values.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    config = config or densify_configs()[0]
    grid = (triton.cdiv(n * h * w, config[0]), triton.cdiv(c, config[1]))
    _densify_kernel[grid](
        values,
        id_map,
        out,
        n * h * w,
        w,
        h * w,
        c,
        e,
        values.stride(0),
        id_map.stride(0),
        id_map.stride(1),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        out.stride(3),
        BLOCK_P=config[0],
        BLOCK_C=config[1],
        num_warps=config[2],
    )
    return out
