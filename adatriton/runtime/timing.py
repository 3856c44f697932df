"""The one timer: untimed warm-up calls, then timed calls, CUDA events on a GPU and ``perf_counter`` elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["time_calls"]


def time_calls(fn: Callable[[], object], device: torch.device | str, warmup: int = 1, iters: int = 1) -> list[float]:
    """Milliseconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed ones.

    On CUDA each timed call sits between two recorded events after a ``synchronize``, so it starts on an idle GPU
    and its time covers the kernels it launched (and the host work that waits for them); on the CPU (and under the
    Triton interpreter) ``time.perf_counter`` brackets the call.

    Args:
        fn: the call to time; its result is dropped at once, so it is not kept alive into the next call.
        device: where ``fn`` computes.
        warmup: untimed calls first (allocator, cuDNN / oneDNN algorithm choice, Triton compilation).
        iters: timed calls, at least 1.

    Raises:
        ValueError: ``iters < 1`` or ``warmup < 0``.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got {iters} and {warmup}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times
