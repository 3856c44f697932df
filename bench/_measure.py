"""Timing as the paper does it (untimed warm-up calls, then timed calls; mean, median, min, max), peak memory, and
the description of the machine and software that every row carries."""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Timing", "device_name", "measure", "timestamp", "versions"]

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


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Writing 5 to clear_refs resets the process's peak RSS (VmHWM) on Linux, so the peak is this call's.
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def _peak_mb(device: torch.device) -> float:
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

    On CUDA each timed call sits between two recorded events after a ``synchronize``, so it starts on an idle GPU
    and its time covers the kernels it launched (and the host work that waits for them, e.g. the index building of
    a data-dependent gather); on the CPU ``time.perf_counter`` brackets the call.

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
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    _reset_peak(device)
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return Timing(tuple(times), _peak_mb(device))


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model with the intra-op thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model or platform.processor() or platform.machine() or 'cpu'} ({torch.get_num_threads()} threads)"


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
