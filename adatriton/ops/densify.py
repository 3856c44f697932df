"""Densify (docs/semantics.md §2): every finest-grid pixel gets the vector of the element that covers it.

The reference is :meth:`MultiResMap.densify <adatriton.core.multires.MultiResMap.densify>` on the torch backend (an
``index_select`` over the layout's ``id_map``); the Triton scatter kernel is registered here as the custom op
``adatriton::densify`` (with a fake implementation for torch.compile and an autograd formula), which the map's
``densify`` calls on the triton backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.multires import MultiResMap
from ..kernels import densify as densify_kernels

__all__ = ["densify"]


def densify(x: MultiResMap) -> Tensor:
    """``(N, C, Hf, Wf)`` dense map of a :class:`MultiResMap`, each element repeated over its block (docs/semantics.md
    §2)."""
    if not isinstance(x, MultiResMap):
        raise TypeError(f"densify expects a MultiResMap, got {type(x).__name__}")
    return x.densify()


@torch.library.custom_op("adatriton::densify", mutates_args=())
def _densify_triton(values: Tensor, ids: Tensor) -> Tensor:
    """The Triton densify kernel as one op for torch.compile: ``(E, C)`` values, ``(N, H, W)`` ids -> channels-last
    ``(N, C, H, W)``."""
    return densify_kernels.densify_elements(values, ids)


@_densify_triton.register_fake
def _(values, ids):
    n, h, w = ids.shape
    return values.new_empty(n, h, w, values.shape[1]).permute(0, 3, 1, 2)  # channels-last, as the kernel writes


def _densify_backward(ctx, grad):
    ids = ctx.saved_tensors[0]
    e, c = ctx.values_shape
    grad_values = grad.new_zeros(e + 1, c)  # row E collects the pixels that read zero
    grad_values.index_add_(0, ids.reshape(-1), grad.permute(0, 2, 3, 1).reshape(-1, c))
    return grad_values[:e], None


def _densify_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.values_shape = tuple(inputs[0].shape)


_densify_triton.register_autograd(_densify_backward, setup_context=_densify_setup)
