"""Timing as the paper does it (untimed warm-up calls, then timed calls; mean, median, min, max), peak memory, and
the description of the machine and software that every row carries."""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import math
import platform
import resource
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from adatriton.runtime.files import device_name as hardware
from adatriton.runtime.timing import time_calls

__all__ = [
    "Timing",
    "device_name",
    "measure",
    "median_interval",
    "peak_memory_mb",
    "reset_peak_memory",
    "timestamp",
    "versions",
]

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class Timing:
    """Statistics of the timed calls.

    Attributes:
        times_ms: every timed call, milliseconds.
        peak_memory_mb: peak memory during the timed calls (see :func:`measure`).
    """

    times_ms: tuple[float, ...]
    peak_memory_mb: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times_ms)

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min(self) -> float:
        return min(self.times_ms)

    @property
    def max(self) -> float:
        return max(self.times_ms)


def median_interval(times: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median of ``times``: sorted, the ``j``-th smallest and the
    ``j``-th largest call, with the largest ``j`` such that the interval holds the true median with probability at
    least ``confidence`` (the number of calls below the median is Binomial(n, 1/2), whatever the distribution).
    On a shared machine single calls can take twice as long (max/min says nothing about the median then); this
    interval does: 40 calls give the 14th smallest and the 14th largest.

    Returns:
        ``(low, high)``, or ``(nan, nan)`` where too few calls reach ``confidence`` (fewer than 6 at 95%).
    """
    ordered = sorted(times)
    n = len(ordered)
    below = 0.0  # P(B <= j - 1), B ~ Binomial(n, 1/2)
    best = 0
    for j in range(1, n // 2 + 1):
        below += math.comb(n, j - 1) / 2**n
        if 1 - 2 * below < confidence:
            break
        best = j
    return (ordered[best - 1], ordered[n - best]) if best else (math.nan, math.nan)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for :func:`peak_memory_mb`: CUDA's peak-allocated counter, or the process's peak resident
    set (VmHWM) on the CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Writing 5 to clear_refs resets the process's peak RSS (VmHWM) on Linux, so the peak is this call's.
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak_memory`: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak
    resident set on the CPU (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    # No /proc (not Linux): the peak since the process started (kB on Linux, bytes on macOS; Linux has /proc).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 * (1024 if platform.system() != "Darwin" else 1)


def measure(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> Timing:
    """Time ``iters`` calls of ``fn`` after ``warmup`` untimed ones.

    The calls are timed by :func:`adatriton.runtime.timing.time_calls` (CUDA events around each call after a
    ``synchronize`` on a GPU, ``time.perf_counter`` on the CPU).

    Args:
        fn: the call to time; its result is dropped at once, so it is not kept alive into the next call.
        device: where ``fn`` computes.
        warmup: untimed calls first (allocator, cuDNN / oneDNN algorithm choice, Triton compilation).
        iters: timed calls, at least 1.

    Returns:
        :class:`Timing` in milliseconds, with the peak memory of the timed calls.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got {iters} and {warmup}")
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    reset_peak_memory(device)
    times = time_calls(fn, device, warmup=0, iters=iters)
    return Timing(tuple(times), peak_memory_mb(device))


def device_name(device: torch.device) -> str:
    """The hardware (:func:`adatriton.runtime.files.device_name`), with the intra-op thread count on the CPU."""
    name = hardware(device)
    return name if device.type == "cuda" else f"{name} ({torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    """``torch_version``, ``triton_version`` (empty when not installed) and ``adatriton_version``."""
    import adatriton

    try:  # the installed metadata: importing triton can be slow or fail without a GPU
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = ""
    return {"torch_version": torch.__version__, "triton_version": triton, "adatriton_version": adatriton.__version__}


def timestamp() -> str:
    """Now, ISO 8601 in UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
