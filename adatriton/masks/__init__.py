"""Mask sources: level maps from label maps (:func:`oracle`), images (:func:`edges`), keypoints (:func:`keypoints`)
and a learned estimator (:class:`LearnedMask`), plus density control (:func:`report`, :func:`match_fraction`,
:func:`synthetic`; ``edges(..., fraction=f)`` and ``oracle(..., fraction=f)`` hit a target level-0 area).
``calibrate`` is a deprecated alias of :func:`match_fraction`. See :mod:`adatriton.masks.sources` for the grid and
block conventions every source follows.
"""

from .common import MaskDtypeError, MaskInputError, finest_size
from .density import Match, calibrate, match_fraction, report, synthetic
from .learned import LearnedMask
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
    edges,
    keypoints,
    oracle,
    sift_keypoints,
)

__all__ = [
    "EDGE_DILATION",
    "EDGE_THRESHOLD",
    "GRAY_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LearnedMask",
    "PAPER_EDGE_THRESHOLDS",
    "PAPER_KEYPOINT_DILATIONS",
    "PAPER_ORACLE_KERNELS",
    "Match",
    "MaskDtypeError",
    "MaskInputError",
    "ORACLE_KERNEL",
    "calibrate",
    "edges",
    "finest_size",
    "keypoints",
    "match_fraction",
    "oracle",
    "report",
    "sift_keypoints",
    "synthetic",
]
