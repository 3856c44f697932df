"""The elements of a level map after ``stage`` downsamplings, and the index tables over them.

Element order inside a layout: by level, then sample, row, column on that level's grid. Index tables use
``num_elements`` as the sentinel "reads zero" index: the ops append one zero row to the values.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from .export import fits_int32

if TYPE_CHECKING:
    from .levelmap import LevelMap

__all__ = ["Layout", "TileGroup", "block_sums", "ceil_div"]


#: The smallest tile side of :meth:`Layout.tile_tables` (lattice points), unless the lattice is smaller.
MIN_TILE = 8
#: The cost of gathering one input row of a tile's window, in the units of :meth:`Layout.tile_tables`'s
#: ``output_cost``: a write and a read of a fresh buffer, which (page faults included) the measured CPU timings put
#: well above the in-cache copy.
GATHER_COST = 16


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def block_sums(x: Tensor, block: int) -> Tensor:
    """Sum of ``x (N, H, W)`` over aligned ``block x block`` tiles, clipped at the bottom/right border.

    Returns:
        ``(N, ceil(H / block), ceil(W / block))``. A tile side larger than the grid is clipped to it first, so the
        work stays O(N H W) whatever ``block`` is.
    """
    n, h, w = x.shape
    bh, bw = min(block, h), min(block, w)  # one tile spans the whole axis: the same sums without the padding
    hb, wb = ceil_div(h, bh), ceil_div(w, bw)
    if hb * bh != h or wb * bw != w:
        x = torch.nn.functional.pad(x, (0, wb * bw - w, 0, hb * bh - h))
    return x.reshape(n, hb, bh, wb, bw).sum(dim=(2, 4))


class TileGroup(NamedTuple):
    """The output rows of a conv whose centres lie on one lattice ``r + g * m`` of the padded finest grid, computed
    as an ordinary conv over tiles of that lattice (see :meth:`Layout.tile_tables`).

    Attributes:
        start, stop: the output rows (a contiguous range of the conv's outputs).
        dilation: the conv's tap spacing in lattice steps, ``o / g``.
        window: ``(tiles, Ty + 2P, Tx + 2P)`` element read at every lattice point of each tile's input window
            (``P = dilation * (k // 2)``), the sentinel ``E`` (reads zero) outside the padded grid and where no
            element covers a pixel.
        pick: ``(stop - start,)`` position of each output row among the ``tiles * Ty * Tx`` outputs of the tiles.
    """

    start: int
    stop: int
    dilation: int
    window: Tensor
    pick: Tensor


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

    def __init__(self, levels: LevelMap, stage: int, counts: list[int], values: Tensor, in_graph: bool = False):
        """Build the tables without host syncs: ``counts`` (elements per level, from the level map's one sync)
        sizes them, and a cumulative sum numbers the cells of each level.

        ``values`` is the level map's own ``(N, Hf, Wf)`` tensor (:attr:`LevelMap.levels` hands out copies, and a
        copy per layout would be one more op in a traced forward); :meth:`LevelMap.layout` passes it. ``in_graph``:
        built inside a compiled graph, with symbolic counts and not cached on the level map.
        """
        self.levelmap, self.stage = levels, stage
        lv, dev = values, levels.device
        n, h, w = levels.shape
        hp, wp = levels.padded_size
        self.counts = tuple(counts)  # ints, or symbolic sizes while torch.export traces
        self.offsets = tuple(sum(self.counts[:v]) for v in range(stage + 1))
        self.num_elements = e = sum(self.counts)
        self.cell_index: list[Tensor] = []
        batch_index, rows, cols, level, cy, cx = [], [], [], [], [], []
        self.id_map = torch.full((n, hp, wp), e, dtype=torch.long, device=dev)
        for v in range(stage + 1):
            s = 1 << v
            top_left = lv[:, ::s, ::s]  # (N, ceil(H/s), ceil(W/s)): every cell with a real pixel, docs/semantics.md §4
            mask = top_left == v if v < stage else top_left >= stage
            # Element number of each cell in (sample, row, col) order: a running count, no boolean indexing.
            number = mask.flatten().cumsum(0).view(mask.shape) - 1 + self.offsets[v]
            idx = torch.where(mask, number, e)
            self.cell_index.append(idx)
            b, qy, qx = torch.nonzero_static(mask, size=self.counts[v]).unbind(1)  # sized: no sync
            batch_index.append(b)
            rows.append(qy)
            cols.append(qx)
            level.append(torch.full_like(b, v))
            cy.append(qy * s + s // 2)
            cx.append(qx * s + s // 2)
            up = idx.repeat_interleave(s, 1).repeat_interleave(s, 2)
            view = self.id_map[:, : up.shape[1], : up.shape[2]]
            # levels cover disjoint pixels; E marks "not covered". An assignment, not out=view: Dynamo takes no
            # non-contiguous out= tensor (the view of an unpadded grid), and layouts are built inside compiled graphs.
            view.copy_(torch.minimum(view, up))
        self.batch_index = torch.cat(batch_index)
        self.rows, self.cols = torch.cat(rows), torch.cat(cols)
        self.element_level = torch.cat(level)
        self.centre_y, self.centre_x = torch.cat(cy), torch.cat(cx)
        self._taps: dict[tuple[int, int, bool], Tensor] = {}
        self._kernel_tables: dict[tuple[int, int, bool], Tensor | None] = {}
        self._tiles: dict[tuple[int, int, bool, int], tuple[TileGroup, ...]] = {}
        self._down: dict[str, Tensor] = {}
        self.in_graph, self._next = in_graph, None
        self.inference_tables = False  # built under torch.inference_mode (set by LevelMap.layout)

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
        if not self.in_graph:
            return self.levelmap.layout(self.stage + 1)
        if self._next is None:
            # Remembered here: inside a compiled graph the level map caches no layouts (LevelMap.layout), so every
            # layer that steps down from this layout shares one next layout and its tables.
            self._next = self.levelmap.layout(self.stage + 1)
        return self._next

    def downsample_sources(self, variant: str = "top_left") -> Tensor:
        """Indices into this layout's elements that make each element of the next stage.

        Returns:
            ``top_left``: ``(E_next,)``; ``max``: ``(E_next, 4)`` with the sentinel ``E`` where a sub-block holds
            no real pixel (docs/semantics.md §4).
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
        """Element read by every tap of a ``kernel x kernel`` conv with the given tap spacing (docs/semantics.md §3).

        Args:
            kernel: odd kernel size ``k``.
            tap_spacing: ``o``, the spacing of taps on the finest grid.
            downsample: centre the conv at the elements that survive the next downsampling step (the top-left
                sub-element of each merged block), i.e. produce the next stage's elements directly.

        Returns:
            ``(E_out, k*k)`` long tensor of indices into this layout's elements, ``E`` for taps that read zero;
            taps in the row-major order of ``weight[:, :, i, j]``.
        """
        key = (kernel, tap_spacing, bool(downsample))
        hit = self._taps.get(key)
        if hit is not None:
            return hit
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel size must be odd and positive, got {kernel}")
        if tap_spacing < 1:
            raise ValueError(f"tap spacing must be >= 1, got {tap_spacing}")
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
        self._taps[key] = torch.where(inside, got, self.num_elements).reshape(b.shape[0], kernel * kernel)
        return self._taps[key]

    def kernel_table(
        self, kernel: int, tap_spacing: int, downsample: bool = False, compact: bool = True
    ) -> Tensor | None:
        """The row table of a conv, the one place the ops get it from: which elements each output row reads.

        Args:
            kernel, tap_spacing, downsample: as in :meth:`tap_index`.
            compact: the Triton kernel's table, int32 while the element count fits (half the bytes per tile load)
                and cached; False gives the int64 table the torch backend's index ops take.

        Returns:
            :meth:`tap_index` for ``kernel > 1``; the top-left sources ``(E_next, 1)`` for a downsampling 1x1 conv
            (subsample and GEMM in one pass); None for a plain 1x1 conv (every element reads itself).
        """
        if not compact:
            if kernel > 1:
                return self.tap_index(kernel, tap_spacing, downsample)
            return self.downsample_sources("top_left")[:, None] if downsample else None
        key = (kernel, tap_spacing, bool(downsample))
        if key in self._kernel_tables:
            return self._kernel_tables[key]
        table = self.kernel_table(kernel, tap_spacing, downsample, compact=False)
        if table is not None and fits_int32(self.num_elements):
            table = table.to(torch.int32)
        self._kernel_tables[key] = table
        return table

    def tile_tables(
        self, kernel: int, tap_spacing: int, downsample: bool = False, output_cost: int = 4
    ) -> tuple[TileGroup, ...]:
        """Tiles that compute a conv at every output element as ordinary dense convs over small windows.

        An element of level ``v`` (block side ``s = 2^v``) is centred at ``q * s + s // 2``; with ``g = gcd(s, o)``
        (``o`` the tap spacing) every one of its taps ``c + (i - k // 2) * o`` lies on the lattice ``r + g * m``
        (``r = (s // 2) % g``), ``o / g`` lattice steps apart, and a tap outside the padded grid is outside the
        lattice. So the outputs of the levels that share ``(g, r)`` are ``conv2d(F_lattice, W, dilation=o/g,
        padding=(o/g)*(k//2))`` at their lattice points, with ``F = densify(x, padded=True)`` as the dense path
        reads it (docs/semantics.md §3-4): the same sums of the same values. Only the tiles (``Ty x Tx`` lattice
        points) that hold an output are computed, each from its own input window (the tile plus a halo ``P``).

        The tile side is the power of two (at least :data:`MIN_TILE`) that minimises ``tiles * (GATHER_COST *
        window area + output_cost * tile area)``; a side that spans the lattice is one tile per sample, the dense
        conv over that lattice.

        Args:
            kernel, tap_spacing, downsample: as in :meth:`tap_index`.
            output_cost: the cost of a conv output, in the units where gathering one input row costs
                :data:`GATHER_COST`.

        Returns:
            One :class:`TileGroup` per lattice, in output row order. Built once per argument set (one host sync).
        """
        output_cost = max(1, int(output_cost))
        key = (kernel, tap_spacing, bool(downsample), output_cost)
        hit = self._tiles.get(key)
        if hit is not None:
            return hit
        hp, wp = self.id_map.shape[1:]
        b, cy, cx = self.batch_index, self.centre_y, self.centre_x
        if downsample:
            src = self.downsample_sources("top_left")
            b, cy, cx = b[src], cy[src], cx[src]
            nxt, j = self.next(), self.stage + 1
            # survivors by next-stage level: v < j - 1 keep their level, the next level-(j-1) and level-j elements
            # come from level j - 1 (docs/semantics.md §3)
            counts = [nxt.counts[v] for v in range(j - 1)] + [nxt.counts[j - 1] + nxt.counts[j]]
        else:
            counts = list(self.counts)
        halo = tap_spacing * (kernel // 2)
        lattices: list[list] = []  # [g, r, start, stop]; levels that share a lattice are adjacent in row order
        start = 0
        for v, count in enumerate(counts):
            s = 1 << v
            g = math.gcd(s, tap_spacing)
            r = (s // 2) % g
            if lattices and lattices[-1][:2] == [g, r]:
                lattices[-1][3] += count
            else:
                lattices.append([g, r, start, start + count])
            start += count
        groups = []
        for g, r, start, stop in lattices:
            if stop == start:
                continue
            d, p = tap_spacing // g, halo // g
            hg, wg = ceil_div(hp - r, g), ceil_div(wp - r, g)
            bb, my, mx = b[start:stop], (cy[start:stop] - r) // g, (cx[start:stop] - r) // g
            best = None
            side = MIN_TILE
            while True:
                ty, tx = min(side, hg), min(side, wg)
                nty, ntx = ceil_div(hg, ty), ceil_div(wg, tx)
                tile = (bb * nty + my // ty) * ntx + mx // tx
                tiles = torch.unique(tile)
                cost = len(tiles) * (GATHER_COST * (ty + 2 * p) * (tx + 2 * p) + output_cost * ty * tx)
                if best is None or cost < best[0]:
                    best = (cost, ty, tx, nty, ntx, tile, tiles)
                if side >= hg and side >= wg:
                    break
                side *= 2
            _, ty, tx, nty, ntx, tile, tiles = best
            rank = torch.searchsorted(tiles, tile)
            pick = (rank * ty + my % ty) * tx + mx % tx
            tb, t_y, t_x = tiles // (nty * ntx), (tiles // ntx) % nty, tiles % ntx
            wy = t_y[:, None] * ty - p + torch.arange(ty + 2 * p, device=tiles.device)  # lattice rows of each window
            wx = t_x[:, None] * tx - p + torch.arange(tx + 2 * p, device=tiles.device)
            inside = ((wy >= 0) & (wy < hg))[:, :, None] & ((wx >= 0) & (wx < wg))[:, None, :]
            py, px = (r + g * wy).clamp(0, hp - 1), (r + g * wx).clamp(0, wp - 1)
            window = self.id_map[tb[:, None, None], py[:, :, None], px[:, None, :]]
            window = torch.where(inside, window, self.num_elements)
            groups.append(TileGroup(start, stop, d, window, pick))
        self._tiles[key] = tuple(groups)
        return self._tiles[key]

    def __repr__(self) -> str:
        return f"Layout(stage={self.stage}, counts={self.counts}, levelmap={self.levelmap.shape})"
