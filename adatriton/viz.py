"""Pictures of level maps: :func:`overlay` tints an image by the level of each location and draws the blocks.

A top-level module for its public name (``adatriton.viz``, imported by ``import adatriton``) that belongs to the
``analysis`` layer (tests/test_layers.py): it reads only :mod:`adatriton.core` and numpy, so it draws no plotting
library into the import, and ``tools`` (``python -m adatriton.run``) may use it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .core.levelmap import LevelMap

__all__ = ["LEVEL_COLORS", "BORDER_COLOR", "overlay"]

#: RGB tint of each level, finest first (level 0 red: where the network keeps full resolution), then orange, teal,
#: blue; a map with more levels repeats the last.
LEVEL_COLORS: tuple[tuple[int, int, int], ...] = ((230, 57, 70), (244, 162, 97), (42, 157, 143), (38, 70, 83))
#: RGB of the block borders.
BORDER_COLOR = (255, 255, 255)

# Finest strides tried when inferring the map's stride from the image size (OS1 for "1->8" up to OS64).
_STRIDES = tuple(1 << i for i in range(7))


def _rgb(image) -> np.ndarray:
    """``(H, W, 3)`` uint8 from an ``(H, W, 3)`` uint8 / float array or a ``(3, H, W)`` (or ``(1, 3, H, W)``) tensor."""
    if isinstance(image, Tensor):
        x = image.detach().cpu()
        if x.dim() == 4 and x.shape[0] == 1:
            x = x[0]
        if x.dim() == 3 and x.shape[0] == 3 and x.shape[-1] != 3:
            x = x.permute(1, 2, 0)  # CHW -> HWC
        x = x.numpy()
    else:
        x = np.asarray(image)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(
            f"image must be (H, W, 3) uint8 (or float in [0, 1]), or a (3, H, W) tensor; got shape {tuple(x.shape)}"
        )
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"image must be uint8 or float in [0, 1], got {x.dtype}")
    # Float images are RGB in [0, 1] (what the mask sources read); values outside are clipped.
    return (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _grid(levels, index: int) -> tuple[np.ndarray, int]:
    """``(Hf, Wf)`` int64 levels of sample ``index`` and ``K``."""
    if isinstance(levels, LevelMap):
        grid, k = levels.levels, levels.num_levels
    elif isinstance(levels, Tensor):
        grid = levels if levels.dim() == 3 else levels[None]
        k = None
    else:
        raise TypeError(f"levels must be a LevelMap or an integer tensor (N, Hf, Wf), got {type(levels).__name__}")
    if grid.dim() != 3:
        raise ValueError(f"levels must be (N, Hf, Wf) or (Hf, Wf), got shape {tuple(levels.shape)}")
    if not -grid.shape[0] <= index < grid.shape[0]:
        raise IndexError(f"index {index} is outside the level map's batch of {grid.shape[0]}")
    grid = grid[index].detach().to("cpu", torch.int64).numpy()
    return grid, int(grid.max(initial=0)) if k is None else k


def overlay(image, levels, index: int = 0, *, alpha: float = 0.45, borders: bool = True) -> np.ndarray:
    """An image with each location tinted by its level and the level map's blocks outlined.

    The finest stride ``s`` is the power of two (1 to 64) whose grid ``ceil(H / s) x ceil(W / s)`` is the level map's:
    finest cell ``(i, j)`` covers pixels ``s*i .. s*i + s - 1`` (docs/semantics.md §1), and a location at level
    ``v`` belongs to the aligned block of ``2^v x 2^v`` finest cells (one element of stage ``v``), whose outline is
    drawn.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in ``[0, 1]`` (numpy array or tensor), or a ``(3, H, W)`` (or
            ``(1, 3, H, W)``) float tensor in ``[0, 1]`` such as the mask sources read.
        levels: :class:`~adatriton.LevelMap` ``(N, Hf, Wf)``, or an integer tensor ``(N, Hf, Wf)`` / ``(Hf, Wf)``.
        index: the sample of a batched map to draw.
        alpha: weight of the tint, in ``[0, 1]`` (0: the image unchanged apart from the borders).
        borders: draw the block outlines (1 pixel, :data:`BORDER_COLOR`; not around blocks under 4 pixels a side).

    Returns:
        ``(H, W, 3)`` uint8 RGB: ``(1 - alpha) * image + alpha * LEVEL_COLORS[level]``, block borders on top.

    Raises:
        ValueError: no power-of-two stride maps the image onto the level map's grid, a bad shape, ``alpha`` outside
            ``[0, 1]``. TypeError: a ``levels`` or image of another type.

    Example:
        >>> levels = adatriton.masks.edges(images, "8->32", fraction=0.3)      # images (N, 3, H, W) in [0, 1]
        >>> picture = adatriton.viz.overlay(images[0], levels, index=0)         # (H, W, 3) uint8
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    rgb = _rgb(image)
    grid, k = _grid(levels, index)
    h, w = rgb.shape[:2]
    hf, wf = grid.shape
    stride = next((s for s in _STRIDES if (-(-h // s), -(-w // s)) == (hf, wf)), None)
    if stride is None:
        raise ValueError(
            f"a {h}x{w} image has no power-of-two stride with a {hf}x{wf} grid (ceil(H / s) x ceil(W / s)); pass the "
            "image the level map was made for"
        )
    pixel_cells = grid.repeat(stride, 0).repeat(stride, 1)[:h, :w]
    colors = np.array([LEVEL_COLORS[min(v, len(LEVEL_COLORS) - 1)] for v in range(k + 1)], dtype=np.float64)
    tinted = (1.0 - alpha) * rgb + alpha * colors[np.clip(pixel_cells, 0, k)]
    out = tinted.round().clip(0, 255).astype(np.uint8)
    if borders:
        # The block of a location at level v: its level and its aligned 2^v cell block; a border is drawn on the
        # last pixel row / column of a block, where the block id changes towards the next pixel (and at the edges).
        rows = np.arange(hf)[:, None] >> grid
        cols = np.arange(wf)[None, :] >> grid
        block = (grid * (hf + 1) + rows) * (wf + 1) + cols
        ids = block.repeat(stride, 0).repeat(stride, 1)[:h, :w]
        edge = np.zeros((h, w), dtype=bool)
        edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
        edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
        edge[0, :] = edge[-1, :] = True
        edge[:, 0] = edge[:, -1] = True
        # Blocks under 4 pixels a side (level 0 of "1->8") would be all border: their outlines are left out.
        edge &= (stride << pixel_cells) >= 4
        out[edge] = BORDER_COLOR
    return out
