"""Mask sources: level maps from label maps (:func:`oracle`), images (:func:`edges`), keypoints (:func:`keypoints`)
and a learned estimator (:class:`LearnedMask`); a :class:`MaskSource` (``edges(fraction=0.3)``, without images) to
attach to a converted model (``adatriton.convert(..., mask=...)``); plus density control (:func:`report`,
:func:`match_fraction`, :func:`synthetic`; ``edges(..., fraction=f)`` and ``oracle(..., fraction=f)`` hit a target
level-0 area).
See :mod:`adatriton.masks.sources` for the grid and block conventions every source follows.
"""

from .common import MaskDtypeError, MaskInputError, finest_size, keep_to_levels, odd_size, parse_conversion
from .density import Match, match_fraction, report, synthetic, synthetic_grid
from .learned import DOWNSAMPLE, KEEP, LEARNED_CONVERSION, LearnedMask, upsample_mask
from .sources import (
    EDGE_DILATION,
    EDGE_THRESHOLD,
    GRAY_WEIGHTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ORACLE_KERNEL,
    PAPER_EDGE_THRESHOLDS,
    PAPER_KEYPOINT_DILATIONS,
    PAPER_ORACLE_KERNELS,
    MaskSource,
    edges,
    keypoints,
    oracle,
    sift_keypoints,
)

__all__ = [
    "DOWNSAMPLE",
    "EDGE_DILATION",
    "EDGE_THRESHOLD",
    "GRAY_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KEEP",
    "LEARNED_CONVERSION",
    "LearnedMask",
    "MaskDtypeError",
    "MaskInputError",
    "MaskSource",
    "Match",
    "ORACLE_KERNEL",
    "PAPER_EDGE_THRESHOLDS",
    "PAPER_KEYPOINT_DILATIONS",
    "PAPER_ORACLE_KERNELS",
    "edges",
    "finest_size",
    "keep_to_levels",
    "keypoints",
    "match_fraction",
    "odd_size",
    "oracle",
    "parse_conversion",
    "report",
    "sift_keypoints",
    "synthetic",
    "synthetic_grid",
    "upsample_mask",
]
