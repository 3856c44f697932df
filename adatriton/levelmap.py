"""Level maps (SPEC §1, §4) and the per-stage element layouts built from them.

A :class:`LevelMap` is a validated integer tensor ``(N, Hf, Wf)`` on the finest grid. From it, one
:class:`Layout` per stage ``j`` (``j`` adaptive downsamplings done) enumerates the elements and holds every
index table the ops need. Tables are built once, on the level map's device, and cached on the level map, so
every layer of a stage reuses them.

Element order inside a layout: by level, then sample, row, column on that level's grid. Index tables use
``num_elements`` as the sentinel "reads zero" index: the ops append one zero row to the values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LevelMap", "Layout", "LevelMapError", "LevelMapDtypeError", "CONVERSIONS", "num_levels_of"]

#: Conversions of SPEC §1 / §7: name -> (finest output stride, number of adaptive downsamplings K).
CONVERSIONS: dict[str, tuple[int, int]] = {"8->16": (8, 1), "8->32": (8, 2), "16->32": (16, 1), "1->8": (1, 3)}


class LevelMapError(ValueError):
    """A level map breaks SPEC §1 (shape, value range, alignment, device)."""


class LevelMapDtypeError(LevelMapError, TypeError):
    """A level map is not an integer tensor (a ``ValueError`` and a ``TypeError``)."""


def num_levels_of(conversion: str | int) -> int:
    """Number of adaptive downsamplings ``K`` of a conversion name such as ``"8->32"`` (ints pass through)."""
    if isinstance(conversion, int) and not isinstance(conversion, bool):
        if conversion < 0:
            raise ValueError(f"number of levels must be >= 0, got {conversion}")
        return conversion
    key = str(conversion).replace("→", "->").replace(" ", "")
    if key not in CONVERSIONS:
        raise ValueError(f"unknown conversion {conversion!r}; expected one of {sorted(CONVERSIONS)} or an int K")
    return CONVERSIONS[key][1]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _block_sums(x: Tensor, block: int) -> Tensor:
    """Sum of ``x (N, H, W)`` over aligned ``block x block`` tiles; the grid is zero-padded bottom/right."""
    n, h, w = x.shape
    hb, wb = _ceil_div(h, block), _ceil_div(w, block)
    padded = x.new_zeros(n, hb * block, wb * block)
    padded[:, :h, :w] = x
    return padded.view(n, hb, block, wb, block).sum(dim=(2, 4))


class LevelMap:
    """A validated level map on the finest grid (SPEC §1, §4).

    Args:
        levels: integer tensor ``(N, Hf, Wf)``; ``levels[n, y, x] = v`` downsamples that location ``v`` times.
        num_levels: ``K``, the number of adaptive downsamplings (an int or a conversion name like ``"8->32"``).
            Values must lie in ``0..K``.

    Raises:
        LevelMapError: (a ``ValueError``) for a wrong shape, an out-of-range value (naming the first offending
            pixel) or a misaligned map (naming the first offending block). A non-integer tensor raises
            :class:`LevelMapDtypeError`, which is both a ``ValueError`` and a ``TypeError``.

    Sizes that are not multiples of ``2^K`` follow SPEC §4: alignment is judged on blocks clipped to the grid.
    """

    def __init__(self, levels: Tensor, num_levels: int | str):
        if not isinstance(levels, Tensor):
            raise LevelMapDtypeError(f"level map must be a torch.Tensor, got {type(levels).__name__}")
        if levels.dtype == torch.bool or levels.is_floating_point() or levels.is_complex():
            hint = " (a boolean keep-mask goes through LevelMap.from_keep_mask)" if levels.dtype == torch.bool else ""
            raise LevelMapDtypeError(f"level map must have an integer dtype, got {levels.dtype}{hint}")
        if levels.dim() != 3:
            raise LevelMapError(f"level map must have shape (N, Hf, Wf), got {tuple(levels.shape)}")
        if levels.numel() == 0:
            raise LevelMapError(f"level map must not be empty, got shape {tuple(levels.shape)}")
        self.num_levels = num_levels_of(num_levels)
        self.levels = levels.long()
        self._validate()
        self._layouts: dict[int, Layout] = {}
        self._fractions: Tensor | None = None

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        lv, k = self.levels, self.num_levels
        bad = (lv < 0) | (lv > k)
        if bool(bad.any()):
            n, y, x = (int(i) for i in bad.nonzero()[0])
            raise LevelMapError(
                f"level map value {int(lv[n, y, x])} at sample {n}, pixel (row {y}, col {x}) is outside 0..{k}"
            )
        real = torch.ones_like(lv)
        for v in range(1, k + 1):
            s = 1 << v
            at_least = _block_sums((lv >= v).long(), s)
            size = _block_sums(real, s)
            mixed = (at_least > 0) & (at_least < size)
            if bool(mixed.any()):
                n, by, bx = (int(i) for i in mixed.nonzero()[0])
                y0, x0 = by * s, bx * s
                y1, x1 = min(y0 + s, self.height) - 1, min(x0 + s, self.width) - 1
                block = lv[n, y0 : y1 + 1, x0 : x1 + 1]
                raise LevelMapError(
                    f"level map is not aligned: sample {n}, {s}x{s} block rows {y0}..{y1}, cols {x0}..{x1} mixes "
                    f"levels >= {v} and < {v} (values {sorted(set(block.flatten().tolist()))}); "
                    f"every region at level >= {v} must be a union of aligned {s}x{s} blocks"
                )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_keep_mask(cls, keep: Tensor, conversion: str | int = "8->32", block: int | None = None) -> LevelMap:
        """Level map from a binary keep-mask on the finest grid (SPEC §6, first item).

        Every aligned ``block x block`` tile holding any nonzero value gets level 0, every other tile level ``K``.

        Args:
            keep: ``(N, Hf, Wf)`` tensor, nonzero = informative (bool, integer or float).
            conversion: ``"8->32"`` (K=2), ``"8->16"`` / ``"16->32"`` (K=1), or an int K.
            block: tile size, a multiple of ``2^K``; defaults to 4 (the paper's granularity at OS8), or ``2^K``
                when that is larger.

        Returns:
            A :class:`LevelMap` with levels in ``{0, K}``.
        """
        if not isinstance(keep, Tensor) or keep.dim() != 3:
            shape = tuple(keep.shape) if isinstance(keep, Tensor) else type(keep).__name__
            raise LevelMapError(f"keep mask must be a tensor of shape (N, Hf, Wf), got {shape}")
        k = num_levels_of(conversion)
        block = max(4, 1 << k) if block is None else int(block)
        if block < 1 or block % (1 << k):
            raise ValueError(f"block must be a positive multiple of 2^K = {1 << k}, got {block}")
        n, h, w = keep.shape
        informative = _block_sums((keep != 0).long(), block) > 0
        tiles = torch.where(informative, 0, k)
        levels = tiles.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :h, :w]
        return cls(levels.contiguous(), k)

    @classmethod
    def uniform(cls, batch: int, height: int, width: int, level: int, num_levels: int | str, device=None) -> LevelMap:
        """A level map with every location at ``level``."""
        return cls(torch.full((batch, height, width), level, dtype=torch.long, device=device), num_levels)

    @classmethod
    def random(
        cls,
        batch: int,
        height: int,
        width: int,
        num_levels: int | str,
        probs: tuple[float, ...] | None = None,
        generator: torch.Generator | None = None,
        device=None,
    ) -> LevelMap:
        """A random aligned level map mixing all levels, different for every sample.

        Each aligned ``2^K`` block is kept coarse with probability ``probs[K]``, else split in four; recursively
        down to level 0 (``probs`` are per-level stopping probabilities, default uniform). For tests and demos;
        realistic, clustered masks come from :mod:`adatriton.masks` sources.
        """
        k = num_levels_of(num_levels)
        if probs is None:
            probs = tuple(1.0 / (v + 1) for v in range(k + 1))  # each level gets ~1/(K+1) of the area
        if len(probs) != k + 1:
            raise ValueError(f"probs needs {k + 1} entries (one per level), got {len(probs)}")
        hp, wp = _ceil_div(height, 1 << k) << k, _ceil_div(width, 1 << k) << k
        levels = torch.zeros(batch, hp, wp, dtype=torch.long)
        decided = torch.zeros(batch, hp, wp, dtype=torch.bool)
        for v in range(k, 0, -1):
            s = 1 << v
            draw = torch.rand(batch, hp // s, wp // s, generator=generator) < probs[v]
            draw = draw.repeat_interleave(s, 1).repeat_interleave(s, 2) & ~decided
            levels[draw] = v
            decided |= draw
        return cls(levels[:, :height, :width].contiguous().to(device), k)

    # ------------------------------------------------------------------ properties
    @property
    def batch(self) -> int:
        return self.levels.shape[0]

    @property
    def height(self) -> int:
        return self.levels.shape[1]

    @property
    def width(self) -> int:
        return self.levels.shape[2]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.levels.shape)

    @property
    def device(self) -> torch.device:
        return self.levels.device

    @property
    def padded_size(self) -> tuple[int, int]:
        """``(Hp, Wp)``: the finest grid padded bottom/right to multiples of ``2^K`` (SPEC §4)."""
        s = 1 << self.num_levels
        return _ceil_div(self.height, s) * s, _ceil_div(self.width, s) * s

    def to(self, device) -> LevelMap:
        """The same map on another device (layouts are rebuilt there on demand)."""
        if torch.device(device) == self.device:
            return self
        return LevelMap(self.levels.to(device), self.num_levels)

    def check_matches(self, batch: int, height: int, width: int, device: torch.device, what: str = "features") -> None:
        """Raise :class:`LevelMapError` unless the map fits ``what`` of batch/size/device given."""
        if self.shape != (batch, height, width):
            raise LevelMapError(
                f"level map has shape {self.shape} but the {what} need (N, Hf, Wf) = {(batch, height, width)}"
            )
        if torch.device(device) != self.device:
            raise LevelMapError(f"level map is on {self.device} but the {what} are on {device}")

    # ------------------------------------------------------------------ statistics
    def fractions(self, per_sample: bool = False) -> Tensor:
        """Fraction of the finest grid's area at each level.

        Returns:
            float64 tensor ``(K + 1,)``, or ``(N, K + 1)`` with ``per_sample``; rows sum to one.
        """
        counts = torch.stack([(self.levels == v).sum(dim=(1, 2)) for v in range(self.num_levels + 1)], dim=1)
        counts = counts.double().cpu()
        if per_sample:
            return counts / (self.height * self.width)
        return counts.sum(0) / counts.sum()

    def element_counts(self, stage: int | None = None) -> list[int]:
        """Number of elements at each level ``0..stage`` after ``stage`` downsamplings (default: all ``K``)."""
        return list(self.layout(self.num_levels if stage is None else stage).counts)

    def stats(self) -> dict[str, object]:
        """Summary: level fractions and element counts per stage (for logs and reports)."""
        return {
            "shape": self.shape,
            "num_levels": self.num_levels,
            "fractions": [round(f, 6) for f in self.fractions().tolist()],
            "elements_per_stage": [self.element_counts(j) for j in range(self.num_levels + 1)],
        }

    def __repr__(self) -> str:
        fr = ", ".join(f"{f:.3f}" for f in self.fractions().tolist())
        return f"LevelMap(shape={self.shape}, K={self.num_levels}, fractions=[{fr}], device={self.device})"

    # ------------------------------------------------------------------ layouts
    def layout(self, stage: int) -> Layout:
        """The element layout after ``stage`` downsamplings (``0 <= stage <= K``), built once and cached."""
        if not 0 <= stage <= self.num_levels:
            raise ValueError(f"stage must be in 0..{self.num_levels}, got {stage}")
        if stage not in self._layouts:
            self._layouts[stage] = Layout(self, stage)
        return self._layouts[stage]


@dataclass(frozen=True)
class _TapKey:
    kernel: int
    tap_spacing: int
    downsample: bool


class Layout:
    """The elements of a level map after ``stage`` downsamplings, and the index tables over them.

    Attributes:
        levelmap: the :class:`LevelMap`.
        stage: ``j``, the number of downsamplings done; levels ``0..j`` exist.
        counts: elements per level ``0..j``; ``offsets`` their start in the element order.
        num_elements: ``E``, total; also the sentinel index that reads zero.
        cell_index: per level ``v``, ``(N, ceil(Hf/2^v), ceil(Wf/2^v))`` element index of each cell, or ``E``.
        batch_index, rows, cols: ``(E,)`` sample and top-left cell of each element on its own level's grid.
        element_level: ``(E,)`` level of each element.
        centre_y, centre_x: ``(E,)`` centre ``c(e)`` on the (padded) finest grid.
        id_map: ``(N, Hp, Wp)`` element covering each pixel of the padded finest grid, or ``E`` (reads zero).
    """

    def __init__(self, levelmap: LevelMap, stage: int):
        self.levelmap, self.stage = levelmap, stage
        lv, dev = levelmap.levels, levelmap.device
        n, h, w = levelmap.shape
        hp, wp = levelmap.padded_size
        masks, counts = [], []
        for v in range(stage + 1):
            s = 1 << v
            top_left = lv[:, ::s, ::s]  # (N, ceil(H/s), ceil(W/s)): every cell with a real pixel, SPEC §4
            masks.append(top_left == v if v < stage else top_left >= stage)
            counts.append(int(masks[-1].sum()))
        self.counts = tuple(counts)
        self.offsets = tuple(int(sum(counts[:v])) for v in range(stage + 1))
        self.num_elements = e = int(sum(counts))
        self.cell_index: list[Tensor] = []
        batch_index, rows, cols, level, cy, cx = [], [], [], [], [], []
        self.id_map = torch.full((n, hp, wp), e, dtype=torch.long, device=dev)
        for v, mask in enumerate(masks):
            s = 1 << v
            idx = torch.full(mask.shape, e, dtype=torch.long, device=dev)
            idx[mask] = torch.arange(self.offsets[v], self.offsets[v] + counts[v], device=dev)
            self.cell_index.append(idx)
            b, qy, qx = mask.nonzero(as_tuple=True)
            batch_index.append(b)
            rows.append(qy)
            cols.append(qx)
            level.append(torch.full_like(b, v))
            cy.append(qy * s + s // 2)
            cx.append(qx * s + s // 2)
            up = idx.repeat_interleave(s, 1).repeat_interleave(s, 2)
            view = self.id_map[:, : up.shape[1], : up.shape[2]]
            torch.minimum(view, up, out=view)  # levels cover disjoint pixels; E marks "not covered"
        self.batch_index = torch.cat(batch_index)
        self.rows, self.cols = torch.cat(rows), torch.cat(cols)
        self.element_level = torch.cat(level)
        self.centre_y, self.centre_x = torch.cat(cy), torch.cat(cx)
        self._taps: dict[_TapKey, Tensor] = {}
        self._down: dict[str, Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.levelmap.device

    def level_slice(self, level: int) -> slice:
        """Rows of the values that hold the elements of ``level``."""
        return slice(self.offsets[level], self.offsets[level] + self.counts[level])

    def same_as(self, other: Layout) -> bool:
        return self is other or (self.levelmap is other.levelmap and self.stage == other.stage)

    # ------------------------------------------------------------------ downsampling
    def next(self) -> Layout:
        if self.stage >= self.levelmap.num_levels:
            raise ValueError(f"no downsampling left: stage {self.stage} is the last of K={self.levelmap.num_levels}")
        return self.levelmap.layout(self.stage + 1)

    def downsample_sources(self, variant: str = "top_left") -> Tensor:
        """Indices into this layout's elements that make each element of the next stage.

        Returns:
            ``top_left``: ``(E_next,)``; ``max``: ``(E_next, 4)`` with the sentinel ``E`` where a sub-block holds
            no real pixel (SPEC §4).
        """
        if variant not in ("top_left", "max"):
            raise ValueError(f"downsampling variant must be 'top_left' or 'max', got {variant!r}")
        if variant not in self._down:
            nxt, j = self.next(), self.stage + 1
            parts = []
            for v in range(j + 1):
                sl = nxt.level_slice(v)
                b, qy, qx = nxt.batch_index[sl], nxt.rows[sl], nxt.cols[sl]
                if v < j:  # unchanged elements, found at the same cell of the same level
                    src = self.cell_index[v][b, qy, qx]
                    parts.append(src if variant == "top_left" else src[:, None].expand(-1, 4))
                    continue
                grid = self.cell_index[j - 1]
                if variant == "top_left":
                    parts.append(grid[b, 2 * qy, 2 * qx])
                    continue
                quad = []
                for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
                    y, x = 2 * qy + dy, 2 * qx + dx
                    inside = (y < grid.shape[1]) & (x < grid.shape[2])
                    got = grid[b, y.clamp(max=grid.shape[1] - 1), x.clamp(max=grid.shape[2] - 1)]
                    quad.append(torch.where(inside, got, self.num_elements))
                parts.append(torch.stack(quad, 1))
            self._down[variant] = torch.cat(parts)
        return self._down[variant]

    # ------------------------------------------------------------------ convolution taps
    def tap_index(self, kernel: int, tap_spacing: int, downsample: bool = False) -> Tensor:
        """Element read by every tap of a ``kernel x kernel`` conv with the given tap spacing (SPEC §3).

        Args:
            kernel: odd kernel size ``k``.
            tap_spacing: ``o``, the spacing of taps on the finest grid.
            downsample: centre the conv at the elements that survive the next downsampling step (the top-left
                sub-element of each merged block), i.e. produce the next stage's elements directly.

        Returns:
            ``(E_out, k*k)`` long tensor of indices into this layout's elements, ``E`` for taps that read zero;
            taps in the row-major order of ``weight[:, :, i, j]``.
        """
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel size must be odd and positive, got {kernel}")
        if tap_spacing < 1:
            raise ValueError(f"tap spacing must be >= 1, got {tap_spacing}")
        key = _TapKey(kernel, tap_spacing, downsample)
        if key not in self._taps:
            b, cy, cx = self.batch_index, self.centre_y, self.centre_x
            if downsample:
                src = self.downsample_sources("top_left")
                b, cy, cx = b[src], cy[src], cx[src]
            hp, wp = self.id_map.shape[1:]
            offs = (torch.arange(kernel, device=self.device) - kernel // 2) * tap_spacing
            ty = cy[:, None, None] + offs[None, :, None]
            tx = cx[:, None, None] + offs[None, None, :]
            inside = (ty >= 0) & (ty < hp) & (tx >= 0) & (tx < wp)
            got = self.id_map[b[:, None, None], ty.clamp(0, hp - 1), tx.clamp(0, wp - 1)]
            self._taps[key] = torch.where(inside, got, self.num_elements).reshape(len(b), kernel * kernel)
        return self._taps[key]

    def __repr__(self) -> str:
        return f"Layout(stage={self.stage}, counts={self.counts}, levelmap={self.levelmap.shape})"
