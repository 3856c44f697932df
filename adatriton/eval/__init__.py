"""Evaluation: HPatches loading, keypoint matching and mean matching accuracy."""

from .hpatches import (
    SYNTHETIC_PHOTOS,
    THRESHOLDS,
    HPatchesError,
    HPatchesSequence,
    MMAResult,
    PairResult,
    evaluate,
    iter_sequences,
    list_sequences,
    load_sequence,
    make_mini_hpatches,
    make_synthetic_sequence,
    pair_distances,
    project,
    synthetic_homographies,
)
from .matching import DescribeTimes, keypoint_describer, match_mutual_nn

__all__ = [
    "DescribeTimes",
    "HPatchesError",
    "HPatchesSequence",
    "MMAResult",
    "PairResult",
    "SYNTHETIC_PHOTOS",
    "THRESHOLDS",
    "evaluate",
    "iter_sequences",
    "keypoint_describer",
    "list_sequences",
    "load_sequence",
    "make_mini_hpatches",
    "make_synthetic_sequence",
    "match_mutual_nn",
    "pair_distances",
    "project",
    "synthetic_homographies",
]
