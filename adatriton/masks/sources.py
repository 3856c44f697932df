"""Mask sources: level maps from label maps, images and keypoints (docs/semantics.md §6).

Every source takes image-resolution input and returns a validated :class:`~adatriton.LevelMap` on the finest grid
of its conversion: ``ceil(H / s) x ceil(W / s)`` for the finest output stride ``s`` (8 for ``"8->16"`` and
``"8->32"``, 16 for ``"16->32"``, 1 for ``"1->8"``), which is what torchvision's ResNets produce by repeated ceil
halvings. Finest cell ``(i, j)`` covers image pixels ``s*i .. s*i + s - 1`` (clipped at the bottom/right border).

- :func:`oracle`: ground-truth segmentation boundaries, box-dilated, reduced to the finest grid (any pixel).
- :func:`edges`: ``method="sobel"`` (the paper's description) or ``method="cad"`` (the authors' released code).
- :func:`keypoints`: SIFT saliency and a triplet of dilations for D2-Net / VGG-16 (``"1->8"``).
- Density control (:mod:`adatriton.masks.density`): ``report``, ``match_fraction`` and ``synthetic``;
  :func:`edges` and :func:`oracle` also take ``fraction=`` (a target level-0 area) in place of their threshold or
  box size.
- :class:`MaskSource`: :func:`edges` and :func:`keypoints` called without images return one, a source with its
  parameters bound, ``source(images, output_stride) -> LevelMap``; ``adatriton.convert(model, "8->32",
  mask=masks.edges(fraction=0.3))`` attaches it, and ``net(images)`` then builds its own level map.

Learned masks (docs/semantics.md §6, shallow CNN + hard Gumbel-softmax): the estimator is
:mod:`adatriton.masks.learned`, the
model that trains it :mod:`adatriton.models.learned`, the training loop :mod:`adatriton.tools.train`.

Binary sources end in the block rule of :meth:`LevelMap.from_keep_mask`: an aligned ``block x block`` tile of
the finest grid with any informative cell gets level 0, every other tile level ``K`` (default block:
:func:`adatriton.core.strides.default_tile`, the released code's tiles: 4 at OS8, 2 at ``"16->32"``, 8 for ``"1->8"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.layout import ceil_div
from ..core.levelmap import LevelMap
from ..runtime.extras import require
from .common import MaskDtypeError, MaskInputError, keep_to_levels, odd_size, parse_conversion
from .density import match_fraction

__all__ = [
    "EDGE_DILATION",
    "EDGE_THRESHOLD",
    "GRAY_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAPER_EDGE_THRESHOLDS",
    "PAPER_KEYPOINT_DILATIONS",
    "ORACLE_KERNEL",
    "PAPER_ORACLE_KERNELS",
    "MaskSource",
    "edges",
    "keypoints",
    "oracle",
    "sift_keypoints",
]

#: ITU-R BT.601 luma weights (R, G, B), as used by the authors' code and OpenCV.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
#: ImageNet channel statistics the authors' images were normalised with before their edge detector.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Paper settings: oracle box sizes, edge thresholds (budget knobs, 11x11 dilation), D2-Net dilation triplets.
PAPER_ORACLE_KERNELS = (33, 55)
PAPER_EDGE_THRESHOLDS = (0.95, 0.35, 0.15)
PAPER_KEYPOINT_DILATIONS: tuple[tuple[float, float, float], ...] = (
    (0, 0, 0),
    (0, 0, 5),
    (0, 0, 11),
    (0, 0, 21),
    (0, 0, 31),
    (0, 19, 35),
    (0, 27, 37),
    (19, 41, 41),
    (25, 51, 51),
    (math.inf, math.inf, math.inf),
)

_EDGE_METHODS = ("sobel", "cad")
_KEYPOINT_CONVERSION = "1->8"


# ---------------------------------------------------------------------------------------------------- sources
class MaskSource:
    """A mask source with its parameters bound: ``source(images, output_stride) -> LevelMap``.

    What ``adatriton.convert(model, output_stride, mask=...)`` attaches to a converted model, so that ``net(images)``
    builds its level map from the images (the conversion's ``output_stride`` filled in by the model). Any callable
    ``(images, output_stride) -> LevelMap`` works there too; this class only binds a source function's parameters
    and names them in its ``repr``. :func:`edges` and :func:`keypoints` called without images return one.

    A model's input is often normalised (``(x - mean) / std``) while the sources read RGB in ``[0, 1]``:
    :meth:`with_normalization` returns the source that undoes it first.

    Args:
        function: ``function(images, output_stride, **params) -> LevelMap``, e.g. :func:`edges`.
        mean, std: per-channel statistics the images the source receives were normalised with (3 numbers each), or
            None for RGB in ``[0, 1]`` / uint8.
        params: keyword arguments bound for every call, e.g. ``fraction=0.3``.

    Attributes:
        reads: ``"images"``: the converted model calls the source on its input batch ``(N, 3, H, W)`` (a source
            that reads the finest-grid features instead, e.g. :class:`~adatriton.masks.LearnedMask`, is
            ``"features"``).

    Example:
        >>> source = MaskSource(edges, fraction=0.3)          # the same as edges(fraction=0.3)
        >>> levels = source(images, "8->32")                  # LevelMap (N, ceil(H/8), ceil(W/8))
    """

    reads = "images"

    def __init__(
        self,
        function: Callable[..., LevelMap],
        /,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **params,
    ):
        if not callable(function):
            raise TypeError(f"MaskSource needs a function (images, output_stride, **params), got {function!r}")
        if (mean is None) != (std is None) or any(v is not None and len(v) != 3 for v in (mean, std)):
            raise MaskInputError(f"mean and std go together, 3 numbers each (RGB); got mean={mean!r}, std={std!r}")
        self.function, self.params = function, params
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)

    def with_normalization(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> MaskSource:
        """The same source for images normalised as ``(x - mean) / std`` (default: ImageNet's, what torchvision's
        weights expect): it computes ``x * std + mean`` (clamped to ``[0, 1]``) before reading them."""
        return MaskSource(self.function, mean=mean, std=std, **self.params)

    def __call__(self, images, output_stride: str) -> LevelMap:
        """The level map of ``images`` ``(N, 3, H, W)`` for ``output_stride`` (a conversion name)."""
        if self.mean is not None:
            x = _as_tensor(images, "images")
            if x.dim() != 4 or x.shape[1] != 3:
                raise MaskInputError(f"images must have shape (N, 3, H, W), got {tuple(x.shape)}{_shape_hint(x.shape)}")
            mean = torch.tensor(self.mean, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
            images = (x.double() * std + mean).clamp(0.0, 1.0)
        return self.function(images, output_stride, **self.params)

    def check(self, output_stride: str) -> None:
        """Raise :class:`MaskInputError` if the source cannot serve ``output_stride`` (called when attached, so that
        a mismatch shows at conversion, not at the first forward)."""
        conversion = parse_conversion(output_stride)[0]
        if self.function is _keypoint_source and conversion != _KEYPOINT_CONVERSION:
            raise MaskInputError(
                f"keypoint masks are for {_KEYPOINT_CONVERSION!r} (D2-Net, VGG-16), not {conversion!r}"
            )

    def __repr__(self) -> str:
        name = "keypoints" if self.function is _keypoint_source else getattr(self.function, "__name__", "source")
        text = f"{name}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"
        return text if self.mean is None else f"{text}.with_normalization(mean={self.mean}, std={self.std})"


# ---------------------------------------------------------------------------------------------------- helpers
def _as_tensor(x, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise MaskDtypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _box_dilate(mask: Tensor, size: int) -> Tensor:
    """Binary dilation of ``mask (N, H, W)`` by a centred ``size x size`` box; outside the image counts as 0.

    Separable running sums (O(1) per pixel whatever the size), so 55x55 boxes at 1024x2048 stay cheap.
    """
    if size == 1:
        return mask
    r = size // 2
    out = mask
    for dim in (1, 2):
        n = out.shape[dim]
        counts = torch.cumsum(out.to(torch.int32), dim)
        zero = torch.zeros_like(counts.narrow(dim, 0, 1))
        counts = torch.cat([zero, counts], dim)  # counts[i] = sum of the first i entries
        pos = torch.arange(n, device=mask.device)
        hi, lo = (pos + r + 1).clamp(max=n), (pos - r).clamp(min=0)
        out = (counts.index_select(dim, hi) - counts.index_select(dim, lo)) > 0
    return out


def _any_reduce(mask: Tensor, stride: int) -> Tensor:
    """``(N, ceil(H/s), ceil(W/s))``: a cell is True if any pixel of its ``s x s`` footprint (clipped) is."""
    if stride == 1:
        return mask
    n, h, w = mask.shape
    hf, wf = ceil_div(h, stride), ceil_div(w, stride)
    padded = mask.new_zeros(n, hf * stride, wf * stride)
    padded[:, :h, :w] = mask
    return padded.view(n, hf, stride, wf, stride).any(dim=4).any(dim=2)


def _touching_blocks(mask: Tensor, block: int) -> Tensor:
    """``(N, H, W)``: True on every aligned ``block x block`` tile (clipped) that holds any True pixel."""
    n, h, w = mask.shape
    tiles = _any_reduce(mask, block)
    return tiles.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :h, :w]


def _shape_hint(shape: tuple[int, ...]) -> str:
    """How to get from a common image layout to ``(N, 3, H, W)``."""
    if len(shape) == 3 and shape[-1] == 3:
        return "; one (H, W, 3) image? use torch.as_tensor(img).permute(2, 0, 1)[None]"
    if len(shape) == 3 and shape[0] == 3:
        return "; one (3, H, W) image? add a batch dimension: img[None]"
    if len(shape) == 4 and shape[-1] == 3:
        return "; channels last (N, H, W, 3)? use torch.as_tensor(images).permute(0, 3, 1, 2)"
    if len(shape) == 2:
        return "; one grayscale (H, W) image? use torch.as_tensor(img)[None, None].expand(1, 3, -1, -1)"
    if len(shape) == 3 and shape[-1] == 4:
        return "; one (H, W, 4) RGBA image? drop alpha: torch.as_tensor(img[..., :3]).permute(2, 0, 1)[None]"
    return ""


def _images(images, what: str = "images") -> Tensor:
    """``(N, 3, H, W)`` float64 in ``[0, 1]`` from float ``[0, 1]`` or uint8 ``0..255`` images."""
    x = _as_tensor(images, what)
    if x.dim() != 4 or x.shape[1] != 3:
        raise MaskInputError(f"{what} must have shape (N, 3, H, W) (RGB), got {tuple(x.shape)}{_shape_hint(x.shape)}")
    if x.numel() == 0:
        raise MaskInputError(f"{what} must not be empty, got shape {tuple(x.shape)}")
    # Contiguous: images from HWC arrays arrive as strided views, on which the filters below are ~10x slower.
    x = x.contiguous()
    if x.dtype == torch.uint8:
        return x.double() / 255.0
    if not x.is_floating_point():
        raise MaskDtypeError(f"{what} must be float in [0, 1] or uint8 in 0..255, got {x.dtype}")
    x = x.double()
    lo, hi = float(x.min()), float(x.max())
    # A small slack for interpolation round-off; ImageNet-normalised inputs (about -2.1..2.6) are refused.
    if not (lo >= -1e-6 and hi <= 1 + 1e-6):
        raise MaskInputError(
            f"float {what} must lie in [0, 1] (un-normalised RGB), got values in [{lo:.4g}, {hi:.4g}]; "
            "normalisation, where a method needs it, happens inside"
        )
    return x.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- oracle
#: The oracle's default box and the image size it was chosen for: 33 (and 55) are the paper's boxes for Cityscapes
#: (1024x2048). Smaller images need smaller boxes for the same area fraction; ``fraction=`` finds one.
ORACLE_KERNEL = 33


def oracle(
    labels,
    output_stride: str,
    kernel: int | None = None,
    ignore_index: int | None = 255,
    *,
    block: int | None = None,
    fraction: float | None = None,
) -> LevelMap:
    """Oracle level map from ground-truth segmentation boundaries (docs/semantics.md §6).

    A pixel is a boundary pixel if its label differs from one of its 4-neighbours, where neither of the two is
    ``ignore_index`` (the ignore label is not a class: class/ignore and ignore/ignore changes are no boundary).
    Both pixels of such a pair are boundary pixels. The boundary map is dilated by a ``kernel x kernel`` box at
    image resolution (outside the image counts as no boundary), reduced to the finest grid (a cell is
    informative if any pixel of its ``s x s`` footprint is), then turned into levels by the block rule.

    The box is not a threshold, but it is this source's one budget knob and the level-0 area grows with it, so
    ``fraction=f`` picks the odd box whose level-0 area (over the whole batch) is closest to ``f``
    (:func:`~adatriton.masks.match_fraction` with ``param="kernel"``; the boundaries are found once).

    Args:
        labels: ``(N, H, W)`` integer class ids (tensor or numpy array).
        output_stride: conversion name, ``"8->16"``, ``"8->32"``, ``"16->32"`` (or ``"1->8"``).
        kernel: odd box size; default :data:`ORACLE_KERNEL` = 33, the paper's box (33 and 55) for Cityscapes'
            1024x2048 images. Not together with ``fraction``.
        ignore_index: the ignore label, or None when every value is a class.
        block: tile size of the block rule (default: :func:`~adatriton.core.strides.default_tile`).
        fraction: target level-0 area fraction in ``[0, 1]``, in place of ``kernel``; the closest achievable one
            is returned (a box from 1 to ``2 * max(H, W) + 1``).

    Returns:
        :class:`LevelMap` ``(N, ceil(H/s), ceil(W/s))`` with levels in ``{0, K}``, on the labels' device.

    Raises:
        MaskDtypeError: non-integer labels. MaskInputError: wrong shape, even or non-positive ``kernel``,
        unknown ``output_stride``, ``fraction`` outside ``[0, 1]`` or given together with ``kernel``.
    """
    conversion, stride, _ = parse_conversion(output_stride)
    if fraction is not None and kernel is not None:
        raise MaskInputError(
            f"oracle: pass kernel or fraction, not both (got kernel={kernel!r}, fraction={fraction!r})"
        )
    kernel = odd_size(ORACLE_KERNEL if kernel is None else kernel, "kernel")
    lab = _as_tensor(labels, "labels")
    if lab.dtype == torch.bool or lab.is_floating_point() or lab.is_complex():
        raise MaskDtypeError(f"labels must be integer class ids, got dtype {lab.dtype}")
    if lab.dim() != 3 or lab.numel() == 0:
        raise MaskInputError(f"labels must have shape (N, H, W) and not be empty, got {tuple(lab.shape)}")
    if ignore_index is None:
        valid = torch.ones_like(lab, dtype=torch.bool)
    else:
        valid = lab != ignore_index
    boundary = torch.zeros_like(lab, dtype=torch.bool)
    # Horizontal then vertical neighbour pairs; a pair with an ignore pixel is not a class change.
    dx = (lab[:, :, 1:] != lab[:, :, :-1]) & valid[:, :, 1:] & valid[:, :, :-1]
    boundary[:, :, 1:] |= dx
    boundary[:, :, :-1] |= dx
    dy = (lab[:, 1:, :] != lab[:, :-1, :]) & valid[:, 1:, :] & valid[:, :-1, :]
    boundary[:, 1:, :] |= dy
    boundary[:, :-1, :] |= dy

    def levels(kernel: int) -> LevelMap:
        return keep_to_levels(_any_reduce(_box_dilate(boundary, kernel), stride), conversion, block)

    if fraction is None:
        return levels(kernel)
    _check_fraction(fraction)
    return match_fraction(levels, fraction, "kernel", bounds=(1, 2 * max(lab.shape[1:]) + 1)).levelmap


def _check_fraction(fraction) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer, np.floating)):
        raise MaskInputError(f"fraction must be a number in [0, 1] (target level-0 area), got {fraction!r}")
    if not 0.0 <= float(fraction) <= 1.0:
        raise MaskInputError(f"fraction must lie in [0, 1] (target level-0 area), got {fraction!r}")


# ---------------------------------------------------------------------------------------------------- edges
def _gray(x: Tensor) -> Tensor:
    r, g, b = GRAY_WEIGHTS
    return r * x[:, 0] + g * x[:, 1] + b * x[:, 2]


def _sobel_score(x: Tensor) -> Tensor:
    """The per-image normalised Sobel magnitude in ``[0, 1]``; an edge is ``score > threshold``."""
    # Replicate padding: for a 3x3 kernel the same as skimage/scipy's 'reflect', no spurious border edges.
    p = F.pad(_gray(x)[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    # Separable Sobel as differences first: equal pixels give exactly 0 (a conv2d may leave round-off, which the
    # per-image normalisation would blow up to full-strength edges on a flat image).
    dx = p[:, :, 2:] - p[:, :, :-2]
    dy = p[:, 2:, :] - p[:, :-2, :]
    gx = dx[:, :-2] + 2 * dx[:, 1:-1] + dx[:, 2:]
    gy = dy[:, :, :-2] + 2 * dy[:, :, 1:-1] + dy[:, :, 2:]
    mag = torch.sqrt(gx**2 + gy**2)
    peak = mag.amax(dim=(1, 2), keepdim=True)
    # Per-image normalisation to [0, 1]; a constant image has no gradient and hence no edges.
    return torch.where(peak > 0, mag / peak.clamp(min=torch.finfo(x.dtype).tiny), torch.zeros_like(mag))


def _cad_score(x: Tensor) -> Tensor:
    """``max(gx, gy)`` of the released detector; an edge is ``score >= threshold`` (``gx >= t or gy >= t``)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    gray = _gray((x - mean) / std)
    # Zero padding of the normalised grayscale, as the released code's conv2d(padding=1) does.
    g = F.pad(gray, (1, 1, 1, 1))
    gx = g[:, 1:-1, 2:] - g[:, 1:-1, :-2]
    gy = g[:, 2:, 1:-1] - g[:, :-2, 1:-1]
    return torch.maximum(gx, gy)


#: ``edges``' default threshold and box, and the image size they were chosen for: 0.15 and 11 are the authors'
#: settings (paper and released checkpoint) for Cityscapes' 1024x2048 images, where they keep about half to
#: two thirds of the area at level 0 (scikit-image's photographs resized to 1024x2048: 0.51-0.56 sobel, 0.68-0.77
#: cad). The box and the 4x4 tiles of OS8 cells are fixed in pixels, so smaller images keep more: at 512x1024
#: 0.67-0.75 (sobel), at 256x256 0.97-1.0, i.e. no savings. Below about 1024 px a side pass ``fraction=``.
EDGE_THRESHOLD = 0.15
EDGE_DILATION = 11


def edges(
    images=None,
    output_stride: str | None = None,
    threshold: float | None = None,
    dilation: int = EDGE_DILATION,
    method: str = "sobel",
    *,
    block: int | None = None,
    fraction: float | None = None,
) -> LevelMap | MaskSource:
    """Edge level map from RGB images (docs/semantics.md §6); without images, the :class:`MaskSource` to attach.

    ``method="sobel"`` (the paper's description): grayscale ``0.299R + 0.587G + 0.114B``; 3x3 Sobel gradients
    with replicated borders; magnitude ``sqrt(gx^2 + gy^2)`` divided by its per-image maximum (a constant image
    has no edges); edges where the normalised magnitude ``> threshold``; ``dilation x dilation`` box dilation;
    reduction to the finest grid (a cell is informative if any pixel of its ``s x s`` footprint is); block rule.

    ``method="cad"`` (the authors' released code, with which their checkpoints were trained): normalise each
    channel with the ImageNet mean/std, grayscale of the normalised channels, signed central differences
    ``gx[y, x] = g[y, x+1] - g[y, x-1]`` and ``gy[y, x] = g[y+1, x] - g[y-1, x]`` with ``g = 0`` outside the
    image (their zero-padded conv, so border pixels can fire), edges where ``gx >= t or gy >= t`` (signed, no
    absolute value), box dilation, then the dilated map *sampled* at pixels ``(s*i, s*j)`` instead of the
    any-reduction, then the block rule (the released code's 2x2 tiles at OS16 and 4x4 at OS8 are every source's
    default, :func:`~adatriton.core.strides.default_tile`). Its released checkpoint used ``t = 0.15`` and an 11x11
    box; the paper's budgets 0.95 / 0.35 / 0.15 are thresholds of this detector.

    Budget: the defaults (:data:`EDGE_THRESHOLD` 0.15, :data:`EDGE_DILATION` 11) were chosen for 1024x2048
    images; at 256 px they keep (nearly) the whole image at level 0. ``fraction=f`` instead picks the threshold
    whose level-0 area over the whole batch is closest to ``f`` (:func:`~adatriton.masks.match_fraction` with
    ``param="threshold"``; the gradients are computed once). For a per-image target, call it per image.

    Both methods compute in float64, so the threshold test does not depend on the device.

    ``edges(fraction=0.3)`` (no images, no ``output_stride``) checks the parameters and returns them bound in a
    :class:`MaskSource`, ``source(images, output_stride)``, for ``adatriton.convert(..., mask=source)``.

    Args:
        images: ``(N, 3, H, W)`` RGB, float in ``[0, 1]`` or uint8 in ``0..255`` (tensor or numpy array). One
            ``(H, W, 3)`` array ``img`` becomes that with ``torch.as_tensor(img).permute(2, 0, 1)[None]``. None:
            return a :class:`MaskSource`.
        output_stride: conversion name, ``"8->16"``, ``"8->32"``, ``"16->32"`` (or ``"1->8"``); required with
            images, left out without (the source's caller passes it).
        threshold: ``sobel``: in ``[0, 1]`` (of the normalised magnitude); ``cad``: finite and ``>= 0`` (units of
            the normalised grayscale, whose differences reach about 4.5). Default 0.15 (see above); not together
            with ``fraction``.
        dilation: odd box size (11 in the paper and the released code).
        method: ``"sobel"`` or ``"cad"``.
        block: tile size of the block rule (see above for the defaults).
        fraction: target level-0 area fraction in ``[0, 1]``, in place of ``threshold``; the closest achievable
            one is returned (the dilation and tiles set a floor above 0 for any image with edges).

    Returns:
        :class:`LevelMap` ``(N, ceil(H/s), ceil(W/s))`` with levels in ``{0, K}``, on the images' device; without
        images a :class:`MaskSource`.

    Raises:
        MaskInputError: unknown method or output stride, threshold out of range, even dilation, bad image shape
        (the message says how to get ``(N, 3, H, W)``) or value range, ``fraction`` outside ``[0, 1]`` or given
        together with ``threshold``. MaskDtypeError: images neither float nor uint8.
    """
    if method not in _EDGE_METHODS:
        raise MaskInputError(f"unknown edge method {method!r}; expected one of {_EDGE_METHODS}")
    if images is not None or output_stride is not None:
        conversion, stride, _ = parse_conversion(output_stride)
    if fraction is not None and threshold is not None:
        raise MaskInputError(
            f"edges: pass threshold or fraction, not both (got threshold={threshold!r}, fraction={fraction!r})"
        )
    if fraction is not None:
        _check_fraction(fraction)
    given_threshold = threshold
    threshold = _edge_threshold(EDGE_THRESHOLD if threshold is None else threshold, method)
    dilation = odd_size(dilation, "dilation")
    if images is None:
        if output_stride is not None:
            raise MaskInputError(
                "edges without images returns a mask source, called later as source(images, output_stride): "
                f"leave output_stride out (got {output_stride!r}), or pass the images too"
            )
        # Only the arguments that differ from the defaults, so that the source's repr reads like the user's call.
        given = {"threshold": given_threshold, "block": block, "fraction": fraction}
        params = {k: v for k, v in given.items() if v is not None}
        params.update({"dilation": dilation} if dilation != EDGE_DILATION else {})
        params.update({"method": method} if method != "sobel" else {})
        return MaskSource(edges, **params)
    x = _images(images)
    score = _sobel_score(x) if method == "sobel" else _cad_score(x)

    def levels(threshold: float) -> LevelMap:
        if method == "sobel":
            keep = _any_reduce(_box_dilate(score > threshold, dilation), stride)
        else:
            keep = _box_dilate(score >= threshold, dilation)[:, ::stride, ::stride]
        return keep_to_levels(keep, conversion, block)

    if fraction is None:
        return levels(threshold)
    # No edge above the top: sobel scores lie in [0, 1]; cad's just past the largest score.
    top = 1.0 if method == "sobel" else max(float(score.max()), 0.0) + 1e-6
    return match_fraction(levels, fraction, "threshold", bounds=(0.0, top)).levelmap


def _edge_threshold(threshold, method: str) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise MaskInputError(f"threshold must be a number, got {threshold!r}")
    threshold = float(threshold)
    if method == "sobel" and not 0.0 <= threshold <= 1.0:
        raise MaskInputError(f"sobel threshold must lie in [0, 1] (normalised magnitude), got {threshold}")
    if method == "cad" and not (math.isfinite(threshold) and threshold >= 0.0):
        raise MaskInputError(f"cad threshold must be finite and >= 0, got {threshold}")
    return threshold


# ---------------------------------------------------------------------------------------------------- keypoints
def sift_keypoints(images, max_keypoints: int = 512) -> list[np.ndarray]:
    """The strongest SIFT keypoints of each image, one per pixel (D2-Net experiments of the paper).

    OpenCV's ``SIFT_create()`` with default parameters runs on the uint8 grayscale (``cv2.COLOR_RGB2GRAY`` of the
    RGB image rounded to 0..255). Keypoints are ranked by response (ties by position, for determinism) and taken
    in that order while their rounded pixel is new, up to ``max_keypoints`` distinct pixels, as the released code
    does. (That code applies the RGB weights to BGR-ordered channels; the standard conversion is used here.)

    Args:
        images: ``(N, 3, H, W)`` RGB, float in ``[0, 1]`` or uint8.
        max_keypoints: at most this many distinct pixels per image (512 in the paper).

    Returns:
        Per image, a float64 array ``(M, 2)`` of sub-pixel ``(x, y)`` positions, strongest first, ``M <= max``.
    """
    cv2 = require("cv2")  # lazily: only keypoint masks need OpenCV

    if isinstance(max_keypoints, bool) or not isinstance(max_keypoints, (int, np.integer)) or max_keypoints < 0:
        raise MaskInputError(f"max_keypoints must be an int >= 0, got {max_keypoints!r}")
    x = _images(images)
    rgb = (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sift = cv2.SIFT_create()
    h, w = rgb.shape[1:3]
    out = []
    for img in rgb:
        gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        kps = sift.detect(gray, None)
        if not kps:
            out.append(np.zeros((0, 2)))
            continue
        pts = np.array([kp.pt for kp in kps], dtype=np.float64)
        resp = np.array([kp.response for kp in kps], dtype=np.float64)
        order = np.lexsort((pts[:, 0], pts[:, 1], -resp))
        pts = pts[order]
        px = np.stack([np.clip(np.rint(pts[:, 0]), 0, w - 1), np.clip(np.rint(pts[:, 1]), 0, h - 1)], 1)
        _, first = np.unique(px[:, 1] * w + px[:, 0], return_index=True)
        out.append(pts[np.sort(first)[:max_keypoints]])
    return out


def _keypoint_dilation(value, index: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MaskInputError(f"dilations[{index}] must be 0, an odd positive int or math.inf, got {value!r}")
    if value == math.inf:
        return math.inf
    if not (math.isfinite(value) and float(value).is_integer()):
        raise MaskInputError(f"dilations[{index}] must be 0, an odd positive int or math.inf, got {value!r}")
    value = int(value)
    if value < 0 or (value > 0 and value % 2 == 0):
        raise MaskInputError(f"dilations[{index}] must be 0, an odd positive int or math.inf, got {value}")
    return value


def _saliency(points: Sequence, n: int, h: int, w: int) -> Tensor:
    if len(points) != n:
        raise MaskInputError(f"keypoints_xy needs one (M, 2) array per image ({n}), got {len(points)}")
    sal = torch.zeros(n, h, w, dtype=torch.bool)
    for i, pts in enumerate(points):
        p = np.asarray(pts, dtype=np.float64)
        if p.size == 0:
            p = np.zeros((0, 2))
        elif p.ndim != 2 or p.shape[1] != 2:
            raise MaskInputError(f"keypoints_xy[{i}] must have shape (M, 2) of (x, y), got {p.shape}")
        px, py = np.rint(p[:, 0]).astype(np.int64), np.rint(p[:, 1]).astype(np.int64)
        outside = (px < 0) | (px >= w) | (py < 0) | (py >= h) | ~np.isfinite(p).all(1)
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            raise MaskInputError(f"keypoints_xy[{i}][{j}] = {tuple(p[j])} (x, y) lies outside the {h}x{w} image")
        sal[i, torch.from_numpy(py), torch.from_numpy(px)] = True
    return sal


def keypoints(
    images=None,
    dilations: Sequence[float] = (25, 51, 51),
    *,
    keypoints_xy: Sequence | None = None,
    max_keypoints: int = 512,
) -> LevelMap | MaskSource:
    """Keypoint level map for VGG-16 / D2-Net (``"1->8"``: finest grid = image, ``K = 3``; docs/semantics.md §6);
    without images, the :class:`MaskSource` (SIFT keypoints) to attach to a ``"1->8"`` network.

    The saliency map is 1 at the (rounded) pixels of the keypoints: :func:`sift_keypoints` of the images, or
    ``keypoints_xy``. ``dilations = (d1, d2, d4)`` control the retained output strides OS1, OS2, OS4. Retaining
    OS ``2^v`` at a location skips the pooling to OS ``2^(v+1)`` there, whose windows are ``2^(v+1)`` pixels
    wide, so (as in the released code) the region retained at OS ``2^v`` is the union of aligned
    ``2^(v+1) x 2^(v+1)`` blocks touching the saliency dilated by a ``d x d`` box:

    - ``R0``: 2x2 blocks touching ``dilate(S, d1)`` -> level 0;
    - ``R1``: 4x4 blocks touching ``dilate(S, d2)`` or ``R0`` -> level ``<= 1``;
    - ``R2``: 8x8 blocks touching ``dilate(S, d4)`` or ``R1`` -> level ``<= 2``; everything else level 3.

    A location's level is the smallest ``v`` with the location in ``R_v``. Folding ``R0`` into ``R1`` and ``R1`` into
    ``R2`` makes the regions nested and the map aligned (docs/semantics.md §1) for any triplet; for the non-decreasing
    triplets of the paper it changes nothing. ``0`` retains nothing at that stride, ``math.inf`` everything.

    Args:
        images: ``(N, 3, H, W)`` RGB, float in ``[0, 1]`` or uint8 (only the size is used with ``keypoints_xy``).
            None: return a :class:`MaskSource` with ``dilations`` and ``max_keypoints`` bound (called as
            ``source(images, "1->8")``).
        dilations: ``(d1, d2, d4)``, each 0, an odd positive int or ``math.inf``; see
            :data:`PAPER_KEYPOINT_DILATIONS` for the paper's sweep.
        keypoints_xy: per image an array ``(M, 2)`` of ``(x, y)`` pixel positions, replacing SIFT.
        max_keypoints: SIFT keypoints per image (512 in the paper).

    Returns:
        :class:`LevelMap` ``(N, H, W)`` with ``K = 3``, on the images' device.

    Raises:
        MaskInputError: a triplet of the wrong length, an even, negative or fractional size, bad images,
        keypoints outside the image or a ``keypoints_xy`` of the wrong length.
    """
    if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence) or len(dilations) != 3:
        raise MaskInputError(f"dilations must be a triplet (d1, d2, d4), got {dilations!r}")
    dils = [_keypoint_dilation(d, i) for i, d in enumerate(dilations)]
    if images is None:
        if keypoints_xy is not None:
            raise MaskInputError("keypoints_xy belongs to one batch of images: pass the images too")
        if isinstance(max_keypoints, bool) or not isinstance(max_keypoints, (int, np.integer)) or max_keypoints < 0:
            raise MaskInputError(f"max_keypoints must be an int >= 0, got {max_keypoints!r}")
        return MaskSource(_keypoint_source, dilations=tuple(dilations), max_keypoints=max_keypoints)
    x = _as_tensor(images, "images")
    if keypoints_xy is None:
        keypoints_xy = sift_keypoints(x, max_keypoints)
    elif x.dim() != 4 or x.shape[1] != 3 or x.numel() == 0:
        raise MaskInputError(f"images must have shape (N, 3, H, W), got {tuple(x.shape)}{_shape_hint(x.shape)}")
    n, _, h, w = x.shape
    sal = _saliency(keypoints_xy, n, h, w)
    regions = []
    for v, d in enumerate(dils):
        blk = 2 << v
        if d == math.inf:
            region = torch.ones_like(sal)
        elif d == 0:
            region = torch.zeros_like(sal)
        else:
            region = _touching_blocks(_box_dilate(sal, d), blk)
        if regions:  # nest: the previous (finer) region's pixels, widened to this level's blocks
            region |= _touching_blocks(regions[-1], blk)
        regions.append(region)
    levels = 3 - sum(r.long() for r in regions)
    return LevelMap(levels.to(x.device), _KEYPOINT_CONVERSION)


def _keypoint_source(images, output_stride: str, **params) -> LevelMap:
    """:func:`keypoints` as a :class:`MaskSource` function: the conversion must be ``"1->8"``."""
    conversion = parse_conversion(output_stride)[0]
    if conversion != _KEYPOINT_CONVERSION:
        raise MaskInputError(f"keypoint masks are for {_KEYPOINT_CONVERSION!r} (D2-Net, VGG-16), not {conversion!r}")
    return keypoints(images, **params)
