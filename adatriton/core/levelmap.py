"""Level maps (docs/semantics.md §1, §4).

A :class:`LevelMap` is a validated integer tensor ``(N, Hf, Wf)`` on the finest grid. From it, one
:class:`~adatriton.core.layout.Layout` per stage ``j`` (``j`` adaptive downsamplings done) enumerates the elements
and holds every index table the ops need; layouts are built once, on the level map's device, and cached on the level
map, so every layer of a stage reuses them.
"""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from ..runtime.host import to_host
from .export import LevelMapExportError, TracedCounts, count_sizes, dynamic_counts, explain_export_failure, is_traced
from .layout import Layout, block_sums, ceil_div
from .strides import default_tile, num_levels_of

__all__ = ["MAX_LEVELS", "LevelMap", "LevelMapError", "LevelMapDtypeError", "LevelMapExportError"]

#: The largest ``K`` a level map takes: blocks of up to 2^12 = 4096 finest-grid pixels per side (the conversions in
#: use have K <= 3); beyond it a block is larger than any image.
MAX_LEVELS = 12


class LevelMapError(ValueError):
    """A level map breaks docs/semantics.md §1 (shape, value range, alignment, device)."""


class LevelMapDtypeError(LevelMapError, TypeError):
    """A level map is not an integer tensor (a ``ValueError`` and a ``TypeError``)."""


class LevelMap:
    """A validated level map on the finest grid (docs/semantics.md §1, §4).

    Args:
        levels: integer tensor ``(N, Hf, Wf)``; ``levels[n, y, x] = v`` downsamples that location ``v`` times.
        num_levels: ``K``, the number of adaptive downsamplings (an int or a conversion name like ``"8->32"``).
            Values must lie in ``0..K``.

    Raises:
        LevelMapError: (a ``ValueError``) for a wrong shape, an out-of-range value (naming the first offending
            pixel) or a misaligned map (naming the first offending block). A non-integer tensor raises
            :class:`LevelMapDtypeError`, which is both a ``ValueError`` and a ``TypeError``.

    Sizes that are not multiples of ``2^K`` follow docs/semantics.md §4: alignment is judged on blocks clipped to the
    grid.
    """

    def __init__(self, levels: Tensor, num_levels: int | str):
        if not isinstance(levels, Tensor):
            raise LevelMapDtypeError(
                f"level map must be a torch.Tensor of integer levels (N, Hf, Wf), got {type(levels).__name__}"
            )
        if levels.dtype == torch.bool or levels.is_floating_point() or levels.is_complex():
            hint = " (a boolean keep-mask goes through LevelMap.from_keep_mask)" if levels.dtype == torch.bool else ""
            raise LevelMapDtypeError(f"level map must have an integer dtype, got {levels.dtype}{hint}")
        if levels.dim() != 3:
            raise LevelMapError(f"level map must have shape (N, Hf, Wf), got {tuple(levels.shape)}")
        if levels.numel() == 0:
            raise LevelMapError(f"level map must not be empty, got shape {tuple(levels.shape)}")
        if levels.device.type == "meta":
            raise LevelMapError(
                "level map is on the meta device, which holds no values; pass it on the CPU or a GPU (it is small)"
            )
        self.num_levels = num_levels_of(num_levels)
        if self.num_levels > MAX_LEVELS:
            raise LevelMapError(
                f"num_levels must be at most {MAX_LEVELS} (blocks of 2^K pixels on the finest grid), "
                f"got {self.num_levels}"
            )
        # An own copy, never handed out (``levels`` returns a copy): the element counts and the layouts cached on this
        # map must not change when anyone edits a tensor in place.
        self._levels = levels.to(torch.long, copy=True)
        self._stage_counts = self._validate_and_count()
        self._layouts: dict[int, Layout] = {}
        self._count_sizes = count_sizes(self._stage_counts)  # what torch.compile reads the counts from

    # ------------------------------------------------------------------ validation
    @explain_export_failure
    def _validate_and_count(self) -> list[list[int]]:
        """Check docs/semantics.md §1 and count the elements of every level at every stage, with one host sync.

        Returns:
            ``counts[j][v]``: elements of level ``v`` after ``j`` downsamplings (``v <= j``), what the layouts need
            to size their tables without reading the device again.
        """
        lv, k = self._levels, self.num_levels
        flags = [((lv < 0) | (lv > k)).any()]
        for v in range(1, k + 1):
            flags.append(self._mixed_blocks(v).any())
        counts = []
        for j in range(k + 1):
            for v in range(j + 1):
                top_left = lv[:, :: 1 << v, :: 1 << v]  # every cell with a real pixel, docs/semantics.md §4
                counts.append((top_left == v).sum() if v < j else (top_left >= j).sum())
        values = to_host(torch.stack([*(f.long() for f in flags), *counts]))  # the one host sync per map
        if values[0]:
            self._raise_out_of_range()
        for v in range(1, k + 1):
            if values[v]:
                self._raise_misaligned(v)
        it = iter(values[k + 1 :])
        return [[next(it) for _ in range(j + 1)] for j in range(k + 1)]

    def _mixed_blocks(self, v: int) -> Tensor:
        """``(N, hb, wb)``: aligned ``2^v`` blocks (clipped to the grid) that mix levels ``>= v`` and ``< v``."""
        s, (_, h, w) = 1 << v, self._levels.shape
        at_least = block_sums((self._levels >= v).long(), s)
        # Real pixels per clipped block, from the block's row and column extents (no ones-tensor of the grid).
        rows = (h - torch.arange(at_least.shape[1], device=self.device) * s).clamp(max=s)
        cols = (w - torch.arange(at_least.shape[2], device=self.device) * s).clamp(max=s)
        return (at_least > 0) & (at_least < rows[:, None] * cols[None, :])

    def _raise_out_of_range(self) -> None:
        lv, k = self._levels, self.num_levels
        n, y, x = (int(i) for i in ((lv < 0) | (lv > k)).nonzero()[0])
        raise LevelMapError(
            f"level map value {int(lv[n, y, x])} at sample {n}, pixel (row {y}, col {x}) is outside 0..{k}"
        )

    def _raise_misaligned(self, v: int) -> None:
        s, lv = 1 << v, self._levels
        n, by, bx = (int(i) for i in self._mixed_blocks(v).nonzero()[0])
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
        """Level map from a binary keep-mask on the finest grid (docs/semantics.md §6, first item).

        Every aligned ``block x block`` tile holding any nonzero value gets level 0, every other tile level ``K``.

        Args:
            keep: ``(N, Hf, Wf)`` bool or 0/1 integer tensor, nonzero = informative (threshold probabilities
                first: a float mask raises :class:`LevelMapDtypeError`).
            conversion: ``"8->32"`` (K=2), ``"8->16"`` / ``"16->32"`` (K=1), or an int K.
            block: tile size, a multiple of ``2^K``; None: :func:`~adatriton.core.strides.default_tile` of the
                conversion (the authors' tiles: 4 at OS8, 2 for ``"16->32"``; 8 for ``"1->8"``).

        Returns:
            A :class:`LevelMap` with levels in ``{0, K}``.
        """
        if not isinstance(keep, Tensor):
            raise LevelMapDtypeError(f"keep mask must be a tensor of shape (N, Hf, Wf), got {type(keep).__name__}")
        if keep.dim() != 3:
            raise LevelMapError(f"keep mask must be a tensor of shape (N, Hf, Wf), got {tuple(keep.shape)}")
        if keep.is_floating_point() or keep.is_complex():
            raise LevelMapDtypeError(
                f"keep mask has dtype {keep.dtype}: a keep mask must be bool or 0/1 integers; threshold "
                "probabilities first (e.g. probs > 0.5)"
            )
        if keep.dtype != torch.bool and bool(((keep != 0) & (keep != 1)).any()):
            raise LevelMapError("a keep mask must be bool or 0/1 integers; got other integer values")
        k = num_levels_of(conversion)
        block = default_tile(conversion) if block is None else int(block)
        if block < 1 or block % (1 << k):
            raise ValueError(f"block must be a positive multiple of 2^K = {1 << k}, got {block}")
        n, h, w = keep.shape
        informative = block_sums((keep != 0).long(), block) > 0
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
        hp, wp = ceil_div(height, 1 << k) << k, ceil_div(width, 1 << k) << k
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
    def levels(self) -> Tensor:
        """A copy of the map's ``(N, Hf, Wf)`` long tensor: a level map is immutable (its element counts and cached
        layouts describe the tensor it was built from), so editing the copy changes nothing; build a new
        :class:`LevelMap` from the edited tensor instead."""
        return self._levels.clone()

    @property
    def batch(self) -> int:
        return self._levels.shape[0]

    @property
    def height(self) -> int:
        return self._levels.shape[1]

    @property
    def width(self) -> int:
        return self._levels.shape[2]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._levels.shape)

    @property
    def device(self) -> torch.device:
        return self._levels.device

    @property
    def padded_size(self) -> tuple[int, int]:
        """``(Hp, Wp)``: the finest grid padded bottom/right to multiples of ``2^K`` (docs/semantics.md §4)."""
        s = 1 << self.num_levels
        return ceil_div(self.height, s) * s, ceil_div(self.width, s) * s

    def to(self, device) -> LevelMap:
        """The same map on another device (layouts are rebuilt there on demand)."""
        if torch.device(device) == self.device:
            return self
        return LevelMap(self._levels.to(device), self.num_levels)

    @classmethod
    def checked(
        cls,
        levels: LevelMap | Tensor | None,
        num_levels: int,
        needs: str,
        *,
        call: str = "forward(x, levels)",
        grid: str = "the finest grid",
        device: torch.device | str | None = None,
        what: str = "input",
        missing: type[ValueError] = ValueError,
    ) -> LevelMap:
        """The one check of the level map an adaptive network is called with, shared by every model path and the
        multiply-add counter: present, a LevelMap or an integer tensor ``(N, Hf, Wf)`` (validated by the
        constructor), with the network's ``K``, and on ``device`` when one is given. Shape checks stay with the
        caller (:meth:`check_matches`), which knows the grid.

        Args:
            levels: the map as the user passed it.
            num_levels: ``K`` of the network.
            needs: what needs the map, for the messages, e.g. ``"output_stride '8->32'"``.
            call: the call that takes the map, e.g. ``"forward(x, levels)"``.
            grid: the grid the map lives on, e.g. ``"the OS8 grid"``.
            device: the device the map must be on, or None for any.
            what: what sets that device, for the message.
            missing: the error for a missing map (a ``ValueError``; a model may name its own input error).

        Returns:
            ``levels`` itself if it is a LevelMap, else a new LevelMap of it.

        Raises:
            missing: ``levels`` is None.
            LevelMapDtypeError: not a LevelMap or an integer tensor.
            LevelMapError: another ``K``, another device, or a tensor that breaks docs/semantics.md §1.
        """
        if levels is None:
            raise missing(
                f"{needs} is adaptive (K = {num_levels}): {call} needs a level map (LevelMap or integer tensor "
                f"(N, Hf, Wf) on {grid})"
            )
        lm = levels if isinstance(levels, LevelMap) else cls(levels, num_levels)
        if lm.num_levels != num_levels:
            raise LevelMapError(f"level map has K={lm.num_levels} levels but {needs} needs K={num_levels}")
        if device is not None and lm.device != torch.device(device):
            raise LevelMapError(f"level map is on {lm.device} but the {what} is on {device}")
        return lm

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
        counts = torch.stack([(self._levels == v).sum(dim=(1, 2)) for v in range(self.num_levels + 1)], dim=1)
        counts = counts.double().cpu()
        if per_sample:
            return counts / (self.height * self.width)
        return counts.sum(0) / counts.sum()

    def element_counts(self, stage: int | None = None) -> list[int]:
        """Number of elements at each level ``0..stage`` after ``stage`` downsamplings (default: all ``K``)."""
        stage = self.num_levels if stage is None else stage
        if not 0 <= stage <= self.num_levels:
            raise ValueError(f"stage must be in 0..{self.num_levels}, got {stage}")
        return list(self._stage_counts[stage])

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
    @explain_export_failure
    def layout(self, stage: int) -> Layout:
        """The element layout after ``stage`` downsamplings (``0 <= stage <= K``), built once and cached.

        Under ``torch.compile`` without gradients, the layout is built inside the compiled graph from the levels
        tensor, with the element counts as unbacked symbols (:func:`~adatriton.core.export.count_sizes`) and
        without the cache: one graph then serves every map of the grid shape (a cached layout's int counts, or a
        cache filled by the trace, would make Dynamo guard on this map). With gradients, the counts stay ints and a
        new map recompiles: BatchNorm's native op, run whenever a gradient may flow, guards on the count (is it 0?).
        """
        if not 0 <= stage <= self.num_levels:
            raise ValueError(f"stage must be in 0..{self.num_levels}, got {stage}")
        if torch.compiler.is_dynamo_compiling() and self._count_sizes is not None and not torch.is_grad_enabled():
            return Layout(self, stage, dynamic_counts(self._count_sizes[stage]), self._levels, in_graph=True)
        cached = self._layouts.get(stage)
        if cached is None or (cached.inference_tables and torch.is_grad_enabled()):
            # Tables built under inference_mode are inference tensors, which autograd cannot save: where a gradient
            # may flow they are built again (once), so a map first used under inference_mode also serves training.
            cached = self._layouts[stage] = Layout(self, stage, self._stage_counts[stage], self._levels)
            # (Dynamo cannot ask for inference mode; a compiled graph never runs in it with gradients enabled)
            cached.inference_tables = not torch.compiler.is_dynamo_compiling() and torch.is_inference_mode_enabled()
        return cached

    # ------------------------------------------------------------------ pytree and pickling
    def _flatten(self) -> tuple[list[Tensor], int]:
        return [self._levels], self.num_levels

    def _flatten_with_keys(self) -> tuple[list[tuple[pytree.GetAttrKey, Tensor]], int]:
        return [(pytree.GetAttrKey("levels"), self._levels)], self.num_levels

    @classmethod
    def _unflatten(cls, values, num_levels: int) -> LevelMap:
        (levels,) = values
        if not is_traced(levels):
            return cls(levels, num_levels)
        # The map torch.export rebuilds from the traced tensor of a LevelMap argument is not validated again
        # (validation reads the values; the real map was validated when it was built); its counts are symbols. A
        # LevelMap, not a subclass: pytree nodes are looked up by exact type.
        lm = LevelMap.__new__(LevelMap)
        lm.num_levels, lm._levels, lm._layouts = num_levels, levels, {}
        lm._count_sizes = None  # torch.export's counts are the symbols of TracedCounts
        lm._stage_counts = TracedCounts(levels, num_levels)  # symbols, made when the traced forward builds a layout
        return lm

    def __reduce__(self):
        # Pickled as (levels, K), without the cached layouts, and rebuilt (validated) by LevelMap itself, which
        # torch.load(weights_only=True) may call: torch.export.save stores the example inputs, and export.load reads
        # them.
        return LevelMap, (self._levels, self.num_levels)


# A pytree node (leaf: the levels tensor; context: K), so torch.export takes LevelMap arguments; registered here so
# that it holds wherever LevelMap can be imported.
pytree.register_pytree_node(
    LevelMap,
    LevelMap._flatten,
    LevelMap._unflatten,
    serialized_type_name="adatriton.LevelMap",
    flatten_with_keys_fn=LevelMap._flatten_with_keys,
)
torch.serialization.add_safe_globals([LevelMap])
