"""Densify (docs/semantics.md §2): every finest-grid pixel gets the vector of the element that covers it.

:meth:`MultiResMap.densify <adatriton.core.multires.MultiResMap.densify>` computes it on every backend through
:func:`adatriton.core.multires.densify_values`, next to which the Triton scatter kernel is registered as the custom
op ``adatriton::densify``.
"""

from __future__ import annotations

from torch import Tensor

from ..core.multires import MultiResMap, expect_map

__all__ = ["densify"]


def densify(x: MultiResMap) -> Tensor:
    """``(N, C, Hf, Wf)`` dense map of a :class:`MultiResMap`, each element repeated over its block (docs/semantics.md
    §2)."""
    expect_map(x, "densify")
    return x.densify()
