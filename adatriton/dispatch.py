"""The per-layer backend dispatcher (:mod:`adatriton.runtime.dispatch`) and :func:`explain`
(:mod:`adatriton.analysis.explain`)."""

from .analysis.explain import explain
from .runtime.dispatch import (
    CALIBRATION_SCHEMA,
    CPU_CROSSOVER,
    CUDA_CROSSOVER,
    Signature,
    calibration_path,
    choose,
    clear_calibration_cache,
    dispatch_device_name,
    force,
    forced,
    load_calibration,
    recording,
    save_calibration,
    select,
)

__all__ = [
    "CALIBRATION_SCHEMA",
    "CPU_CROSSOVER",
    "CUDA_CROSSOVER",
    "Signature",
    "calibration_path",
    "choose",
    "clear_calibration_cache",
    "dispatch_device_name",
    "explain",
    "force",
    "forced",
    "load_calibration",
    "recording",
    "save_calibration",
    "select",
]
