"""HPatches loading and the MMA evaluation (:mod:`adatriton.eval.hpatches`)."""

from .eval.hpatches import (
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

__all__ = [
    "HPatchesError",
    "HPatchesSequence",
    "MMAResult",
    "PairResult",
    "SYNTHETIC_PHOTOS",
    "THRESHOLDS",
    "evaluate",
    "iter_sequences",
    "list_sequences",
    "load_sequence",
    "make_mini_hpatches",
    "make_synthetic_sequence",
    "pair_distances",
    "project",
    "synthetic_homographies",
]
