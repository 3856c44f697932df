"""The per-layer backend dispatcher (:mod:`adatriton.ops.dispatch`, its files in :mod:`adatriton.runtime.calibration`)
and :func:`explain` (:mod:`adatriton.analysis.explain`)."""

from .analysis.explain import explain
from .ops.dispatch import CPU_CROSSOVER, CUDA_CROSSOVER, Signature, choose, force, forced, recording, select
from .runtime.calibration import (
    CALIBRATION_SCHEMA,
    calibration_path,
    clear_calibration_cache,
    load_calibration,
    save_calibration,
)

__all__ = [
    "CALIBRATION_SCHEMA",
    "CPU_CROSSOVER",
    "CUDA_CROSSOVER",
    "Signature",
    "calibration_path",
    "choose",
    "clear_calibration_cache",
    "explain",
    "force",
    "forced",
    "load_calibration",
    "recording",
    "save_calibration",
    "select",
]
