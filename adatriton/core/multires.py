"""The multi-resolution feature map (docs/semantics.md §2): one vector per element, its elementwise ops and its dense
view."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..runtime.backend import resolve_backend, triton_runs_on
from .layout import Layout
from .levelmap import LevelMap

__all__ = ["MultiResMap"]


class MultiResMap:
    """Features of a multi-resolution map: one ``C``-vector per element of a :class:`Layout`.

    Args:
        values: ``(E, C)`` tensor, row ``i`` is element ``i`` of ``layout`` (ordered by level, sample, row, col).
        layout: the element layout (a level map at a stage).

    Elementwise ops act on ``values`` directly (every element counts once); convolutions and downsampling live
    in :mod:`adatriton.ops` (re-exported by :mod:`adatriton.functional`).
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
            backend: ``"triton"`` scatters with the densify kernel (the op ``adatriton::densify`` that
                :mod:`adatriton.ops.densify` registers); the other backends gather with an ``index_select``, the
                reference.

        The result is channels-last (a fresh tensor).
        """
        lay = self.layout
        ids = lay.id_map
        if not padded:
            ids = ids[:, : lay.levelmap.height, : lay.levelmap.width]
        if resolve_backend(backend, self.device) == "triton" and triton_runs_on(self.device):
            return torch.ops.adatriton.densify(self.values.contiguous(), ids)
        src = torch.cat([self.values, self.values.new_zeros(1, self.channels)])
        n, h, w = ids.shape
        return src.index_select(0, ids.reshape(-1)).view(n, h, w, self.channels).permute(0, 3, 1, 2)
