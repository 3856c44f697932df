"""The multi-resolution feature map (docs/semantics.md §2): one vector per element, its elementwise ops and its dense
view.

The dense view is computed here on every backend: the reference gathers with an ``index_select`` over the layout's
``id_map``; the triton backend scatters with the densify kernel, registered here (the lowest layer that can hold it)
as the custom op ``adatriton::densify`` (with a fake implementation for torch.compile and an autograd formula).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..kernels import densify as densify_kernels
from ..runtime.backend import resolve_backend, triton_runs_on
from .layout import Layout
from .levelmap import LevelMap

__all__ = ["MultiResMap", "densify_values", "expect_map"]


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


def densify_values(values: Tensor, ids: Tensor, backend: str) -> Tensor:
    """``(N, C, H, W)`` channels-last map with pixel ``p`` holding ``values[ids[p]]`` (``ids == E``: zero).

    Args:
        values: ``(E, C)`` element values.
        ids: ``(N, H, W)`` element of every pixel, ``E`` where no element covers it.
        backend: ``"triton"`` scatters with the densify kernel (the custom op ``adatriton::densify``; the caller
            checks that it can run); any other gathers with an ``index_select``, the reference.
    """
    if backend == "triton":
        return torch.ops.adatriton.densify(values.contiguous(), ids)
    src = torch.cat([values, values.new_zeros(1, values.shape[1])])
    n, h, w = ids.shape
    return src.index_select(0, ids.reshape(-1)).view(n, h, w, values.shape[1]).permute(0, 3, 1, 2)


def expect_map(value: object, op: str, name: str = "x") -> None:
    """The check every op on maps runs on its map arguments first, so that a plain tensor (or anything else) gets a
    ``TypeError`` that says what the op expects, not an ``AttributeError`` from inside it.

    Args:
        value: the argument.
        op: the op's name, for the message.
        name: the argument's name; named in the message unless it is the input ``x``.

    Raises:
        TypeError: ``value`` is not a :class:`MultiResMap`, e.g. "conv2d expects a MultiResMap, got Tensor".
    """
    if not isinstance(value, MultiResMap):
        arg = "" if name == "x" else f" as {name}"
        raise TypeError(f"{op} expects a MultiResMap{arg}, got {type(value).__name__}")


class MultiResMap:
    """Features of a multi-resolution map: one ``C``-vector per element of a :class:`Layout`.

    Args:
        values: ``(E, C)`` tensor, row ``i`` is element ``i`` of ``layout`` (ordered by level, sample, row, col).
        layout: the element layout (a level map at a stage).

    Elementwise ops act on ``values`` directly (every element counts once); convolutions and downsampling live
    in :mod:`adatriton.ops`.
    """

    __slots__ = ("values", "layout")

    def __init__(self, values: Tensor, layout: Layout):
        if not isinstance(values, Tensor) or not isinstance(layout, Layout):
            raise TypeError(
                f"MultiResMap takes values (a torch.Tensor (E, C)) and a Layout, got {type(values).__name__} and "
                f"{type(layout).__name__}"
            )
        if values.dim() != 2 or values.shape[0] != layout.num_elements:
            raise ValueError(
                f"values must have shape (E, C) with E = {layout.num_elements} elements, got {tuple(values.shape)}"
            )
        if values.device != layout.device:
            raise ValueError(f"values are on {values.device} but the level map is on {layout.device}")
        self.values, self.layout = values, layout

    @classmethod
    def prechecked(cls, values: Tensor, layout: Layout) -> MultiResMap:
        """``MultiResMap(values, layout)`` without the constructor's checks, for ``values`` made to fit ``layout``
        (``(E, C)`` rows on its device) by code whose inputs passed them: a replayed conv's output
        (:mod:`adatriton.ops.conv`), allocated with the sizes of a call that was checked. The checks cost a tenth
        of a replayed conv's host time."""
        new = object.__new__(cls)
        new.values, new.layout = values, layout
        return new

    @classmethod
    def from_dense(cls, x: Tensor, levels: LevelMap) -> MultiResMap:
        """Enter the adaptive part: a dense ``(N, C, Hf, Wf)`` map, every pixel a level-0 element (stage 0).

        The values are contiguous ``(E, C)`` rows: a view of a channels-last ``x``, else one copy.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor (N, C, Hf, Wf), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected a dense feature map (N, C, Hf, Wf), got shape {tuple(x.shape)}")
        if not isinstance(levels, LevelMap):
            raise TypeError(f"expected a LevelMap (N, Hf, Wf), got {type(levels).__name__}")
        n, c, h, w = x.shape
        levels.check_matches(n, h, w, x.device)
        return cls(x.permute(0, 2, 3, 1).contiguous().view(n * h * w, c), levels.layout(0))

    # ------------------------------------------------------------------ properties
    @property
    def levelmap(self) -> LevelMap:
        return self.layout.levelmap

    @property
    def stage(self) -> int:
        return self.layout.stage

    @property
    def channels(self) -> int:
        return self.values.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def level_values(self, level: int) -> Tensor:
        """``(E_level, C)`` view of the elements at ``level``."""
        return self.values[self.layout.level_slice(level)]

    def __repr__(self) -> str:
        return (
            f"MultiResMap(C={self.channels}, stage={self.stage}, elements={self.layout.counts}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # ------------------------------------------------------------------ elementwise
    def with_values(self, values: Tensor) -> MultiResMap:
        return MultiResMap(values, self.layout)

    def map(self, fn: Callable[[Tensor], Tensor]) -> MultiResMap:
        """Apply an elementwise function (ReLU, any activation, scaling) to every element's vector."""
        return self.with_values(fn(self.values))

    def relu(self) -> MultiResMap:
        return self.with_values(torch.relu(self.values))

    def _check_same_layout(self, other: MultiResMap) -> None:
        if not self.layout.same_as(other.layout):
            raise ValueError(f"maps have different layouts: {self.layout} vs {other.layout}")
        if self.values.shape != other.values.shape:
            raise ValueError(f"maps have different shapes: {tuple(self.values.shape)} vs {tuple(other.values.shape)}")

    def __add__(self, other: MultiResMap | Tensor | float) -> MultiResMap:
        if isinstance(other, MultiResMap):
            self._check_same_layout(other)
            return self.with_values(self.values + other.values)
        return self.with_values(self.values + other)

    __radd__ = __add__

    def __mul__(self, other: MultiResMap | Tensor | float) -> MultiResMap:
        if isinstance(other, MultiResMap):
            self._check_same_layout(other)
            return self.with_values(self.values * other.values)
        return self.with_values(self.values * other)

    __rmul__ = __mul__

    # ------------------------------------------------------------------ dense views
    def densify(self, padded: bool = False, backend: str | None = None) -> Tensor:
        """``(N, C, Hf, Wf)`` map with every pixel holding its element's vector (docs/semantics.md §2).

        Args:
            padded: return the ``(N, C, Hp, Wp)`` grid padded to multiples of ``2^K`` (docs/semantics.md §4): padded
            pixels
                hold the element of their block where that block is an element at level >= 1, else zero.
            backend: ``"triton"`` scatters with the densify kernel (where it can run); the other backends gather
                with an ``index_select``, the reference (:func:`densify_values`).

        The result is channels-last (a fresh tensor).
        """
        lay = self.layout
        ids = lay.id_map
        if not padded:
            ids = ids[:, : lay.levelmap.height, : lay.levelmap.width]
        triton = resolve_backend(backend, self.device) == "triton" and triton_runs_on(self.device)
        return densify_values(self.values, ids, "triton" if triton else "torch")
