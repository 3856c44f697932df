"""Persistent, per-GPU autotuning of the implicit-GEMM conv kernel (:mod:`adatriton.kernels.conv`).

Every Triton conv launch of the ``"triton"`` backend asks :func:`select_config` for its tile config. The answer
comes from a JSON cache file per GPU model and Triton version (:func:`cache_path`), keyed by a readable bucket of
the problem shape (:func:`conv_key`). A missing key gets :func:`~adatriton.kernels.conv.default_config`, unless
tuning is on (:func:`tuning`, ``$ADATRITON_AUTOTUNE=1``): then every candidate of the pruned search space is timed
once on the real inputs, the fastest is stored and the file rewritten atomically.

Tune once per GPU, ahead of time, for the shapes a deployment sees::

    python -m adatriton.autotune --model resnet101 --size 1024 2048 --dtype fp16

or from Python with :func:`adatriton.tools.autotune.tune_model`. Later processes (without tuning) pick the stored
configs up.

Under the Triton interpreter (``TRITON_INTERPRET=1``, the CPU test setup) the timings mean nothing for a GPU, so
they go to their own ``interpreter-*`` cache file, and only the first two candidates are tried (the interpreter is
slow); tuning never raises there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import triton

from ..kernels import conv as conv_module
from ..kernels.conv import ConvConfig, config_problems, conv_configs, interpreting, prune_configs
from .context import ScopedStack, getenv
from .files import (
    CACHE_DIR_ENV,
    CacheFileError,
    cache_dir,
    device_name,
    read_entries_file,
    slug,
    update_entries_file,
)
from .timing import time_calls

__all__ = [
    "AUTOTUNE_ENV",
    "CACHE_DIR_ENV",
    "SCHEMA",
    "AutotuneCache",
    "cache_dir",
    "cache_path",
    "conv_key",
    "get_cache",
    "is_tuning",
    "recording_choices",
    "select_config",
    "tuning",
]

logger = logging.getLogger(__name__)

#: ``1`` turns tuning on for the whole process (like :func:`tuning`).
AUTOTUNE_ENV = "ADATRITON_AUTOTUNE"
#: Version of the cache file format; files with another one are ignored.
SCHEMA = 1
#: ``triton.testing.do_bench`` budget per candidate on a GPU (ms of warm-up and of measurement).
BENCH_WARMUP_MS = 25
BENCH_REP_MS = 100
#: The interpreter runs a kernel in numpy, orders of magnitude slower than a GPU: try only this many candidates.
INTERPRETER_CANDIDATES = 2

_TRUE = ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------------- where the cache is
def cache_path(device: torch.device | str | int | None) -> Path:
    """The cache file of ``device``'s GPU model and the installed Triton version, e.g.
    ``~/.cache/adatriton/conv-nvidia-h100-80gb-hbm3-triton3.8.0.json``."""
    return _cache_file(device_name(device, triton_timings=True))


def _cache_file(name: str) -> Path:
    return cache_dir() / f"conv-{slug(name)}-triton{triton.__version__}.json"


def conv_key(rows: int, cin_g: int, cout_g: int, taps: int, groups: int, dtype: torch.dtype, gather: bool) -> str:
    """The cache key of one conv problem: exact channels, taps, groups, dtype and gather flag; rows bucketed.

    Rows (output elements) vary with every level map, so they are bucketed by ``ceil(log2(rows))``: the pruning and
    the default config only look at the next power of two anyway, and a config tuned for one bucket is near-best
    for its neighbours in it.

    Example:
        >>> conv_key(4000, 256, 256, 9, 1, torch.float16, True)
        'cin=256,cout=256,taps=9,groups=1,dtype=float16,gather=1,log2rows=12'
    """
    log2rows = (max(int(rows), 1) - 1).bit_length()  # exact ceil(log2(rows)) for integers, no float rounding
    dt = str(dtype).removeprefix("torch.")
    g = int(bool(gather))
    return f"cin={cin_g},cout={cout_g},taps={taps},groups={groups},dtype={dt},gather={g},log2rows={log2rows}"


# ---------------------------------------------------------------------------------------------- the cache file
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_problems(entry: Any) -> list[str]:
    """Why a cache entry is malformed; empty when it is valid."""
    if not isinstance(entry, dict):
        return [f"expected an object with config, time_ms, candidates, got {type(entry).__name__}"]
    cfg, t, n = entry.get("config"), entry.get("time_ms"), entry.get("candidates")
    problems = config_problems(cfg)  # the kernel's own rule: one validator for launches and cache files
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0):
        problems.append(f"time_ms={t!r} is not a finite number >= 0")
    if not (_is_int(n) and n >= 1):
        problems.append(f"candidates={n!r} is not an int >= 1")
    return problems


class AutotuneCache:
    """The tuned configs of one GPU model and Triton version, backed by one JSON file.

    File format::

        {"schema": 1, "gpu": "<device_name>", "triton": "<version>",
         "entries": {"<conv_key>": {"config": [BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps],
                                    "time_ms": 0.123, "candidates": 15}}}

    The file is read lazily, on the first :meth:`get` or :meth:`put`. A file that is not valid JSON, has another
    schema, wrong types, or belongs to another GPU or Triton version is ignored with a ``UserWarning`` (it never
    raises); individual malformed entries are dropped the same way, including readable configs the kernel cannot
    run (:func:`adatriton.kernels.conv.config_problems`, e.g. ``[3, 5, 7, 1, 3]``), so a bad entry never reaches
    a launch. Thread-safe.

    Args:
        name: the :func:`~adatriton.runtime.files.device_name` (``triton_timings=True``) the file belongs to.
        path: the JSON file; default :func:`cache_path` of the current CUDA device.
    """

    def __init__(self, name: str, path: Path | str | None = None):
        self.name = name
        self.path = Path(path) if path is not None else cache_path(None)
        self.triton_version = triton.__version__
        self._entries: dict[str, dict[str, Any]] | None = None
        self._dirty: set[str] = set()
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        n = "not loaded" if self._entries is None else f"{len(self._entries)} entries"
        return f"AutotuneCache({self.name!r}, {str(self.path)!r}, {n})"

    # -- reading
    def _read(self, warn: bool) -> dict[str, dict[str, Any]]:
        """Valid entries of the file on disk; {} (with a warning when ``warn``) if it is missing, corrupt or
        foreign."""

        def reject(reason: str) -> dict[str, dict[str, Any]]:
            if warn:
                warnings.warn(f"ignoring autotune cache {self.path}: {reason}", UserWarning, stacklevel=4)
            return {}

        try:
            data = read_entries_file(self.path, "an autotune cache")
        except CacheFileError as err:
            return reject(str(err))
        if data is None:
            return {}
        if data.get("schema") != SCHEMA:
            return reject(f"schema {data.get('schema')!r}, expected {SCHEMA}")
        if data.get("gpu") != self.name:
            return reject(f"it belongs to GPU {data.get('gpu')!r}, not {self.name!r}")
        if data.get("triton") != self.triton_version:
            return reject(f"it was tuned with Triton {data.get('triton')!r}, not {self.triton_version!r}")
        entries, bad = {}, []
        for key, entry in data["entries"].items():
            problems = _entry_problems(entry)
            if problems:
                bad.append((key, problems))
                continue
            entries[key] = {
                "config": list(entry["config"]),
                "time_ms": entry["time_ms"],
                "candidates": entry["candidates"],
            }
        if bad and warn:
            key, problems = bad[0]
            warnings.warn(
                f"autotune cache {self.path}: dropping {len(bad)} malformed entries (first: {key!r}: "
                f"{'; '.join(problems)})",
                UserWarning,
                stacklevel=4,
            )
        return entries

    def _loaded(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            with self._lock:
                if self._entries is None:
                    self._entries = self._read(warn=True)
        return self._entries

    def load(self) -> AutotuneCache:
        """Read the file now (otherwise the first :meth:`get` does); returns ``self``."""
        self._loaded()
        return self

    def get(self, key: str) -> ConvConfig | None:
        """The stored config of ``key``, or None."""
        entry = self._loaded().get(key)
        return None if entry is None else ConvConfig(*entry["config"])

    def entry(self, key: str) -> dict[str, Any] | None:
        """The stored record of ``key`` (``config``, ``time_ms``, ``candidates``), or None."""
        entry = self._loaded().get(key)
        return None if entry is None else dict(entry)

    def keys(self) -> list[str]:
        return list(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __contains__(self, key: str) -> bool:
        return key in self._loaded()

    # -- writing
    def put(self, key: str, config: ConvConfig | tuple[int, ...], time_ms: float, candidates: int) -> None:
        """Store ``config`` (timed at ``time_ms`` among ``candidates`` candidates) for ``key``, in memory;
        :meth:`save` writes it."""
        config = ConvConfig(*config)
        entry = {"config": list(config), "time_ms": float(time_ms), "candidates": int(candidates)}
        problems = _entry_problems(entry)
        if problems:
            raise ValueError(f"invalid autotune entry for {key!r}: {entry}: {'; '.join(problems)}")
        with self._lock:
            self._loaded()[key] = entry
            self._dirty.add(key)

    def save(self) -> Path:
        """Write the file atomically (temp file in the same directory, fsync, ``os.replace``), creating the
        directory.

        The read-merge-replace runs under an inter-process lock (``<file>.lock``,
        :func:`~adatriton.runtime.files.file_lock`), so concurrent tuning runs keep each other's results: entries
        another process saved since this one loaded the file are kept and win over the ones this process only
        read; the ones it :meth:`put` win over everything.

        Returns:
            The file's path.

        Raises:
            OSError: the directory or file cannot be written.
        """
        with self._lock:
            ours = self._loaded()
            dirty = {k: ours[k] for k in self._dirty if k in ours}
            header = {"schema": SCHEMA, "gpu": self.name, "triton": self.triton_version}
            self._entries = update_entries_file(self.path, lambda: {**ours, **self._read(warn=False)}, header, dirty)
            self._dirty.clear()
        return self.path


# Two kinds of keys: ("file", device name, path) -> the one object per file; ("device", type, index, environment)
# -> the same object, found without building names and paths (select_config runs once per conv launch).
_caches: dict[tuple, AutotuneCache] = {}
_caches_lock = threading.Lock()


def get_cache(device: torch.device | str | int | None) -> AutotuneCache:
    """The process-wide cache object of ``device``'s GPU model (one per device name and cache file)."""
    if not isinstance(device, torch.device):
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    env = os.environ
    fast = ("device", device.type, index, env.get(CACHE_DIR_ENV), env.get("XDG_CACHE_HOME"), env.get("HOME"))
    fast += (interpreting(),)
    cache = _caches.get(fast)
    if cache is not None:
        return cache
    name = device_name(device if index is None else torch.device(device.type, index), triton_timings=True)
    path = _cache_file(name)
    # Keyed by the file too, so changing $ADATRITON_CACHE_DIR (tests, tools) gets a fresh object.
    with _caches_lock:
        cache = _caches.setdefault(("file", name, str(path)), AutotuneCache(name, path))
        _caches[fast] = cache
    return cache


# ---------------------------------------------------------------------------------------------- tuning mode
_tuning: ScopedStack[bool] = ScopedStack("adatriton_tuning")


def is_tuning() -> bool:
    """Whether :func:`select_config` tunes missing keys: the innermost :func:`tuning` of this thread, else
    ``$ADATRITON_AUTOTUNE``."""
    scoped = _tuning.top()
    if scoped is not None:
        return scoped
    return (getenv(AUTOTUNE_ENV) or "").strip().lower() in _TRUE


@contextlib.contextmanager
def tuning(enabled: bool = True) -> Iterator[bool]:
    """Tune (``enabled``) or do not tune missing keys inside the block, in this thread; nests."""
    with _tuning.push(bool(enabled)):
        yield bool(enabled)


# What select_config answered while tuning was on, per key (recording_choices clears and reads it). A dict keyed by
# the (bounded) set of keys rather than a list, so a long-running process with $ADATRITON_AUTOTUNE=1 does not grow.
_records: dict[str, dict[str, Any]] = {}
_records_lock = threading.Lock()
# One tuning at a time: concurrent timings would disturb each other, and the second thread then finds the key.
_tune_lock = threading.RLock()
# Cache files that could not be written (warned once each), and keys whose every candidate failed in this process
# (not retried on every launch: they get the default config until the process ends).
_save_failed: set[str] = set()
_untunable: set[tuple[str, str]] = set()


def _record(key: str, config: ConvConfig, source: str, entry: dict[str, Any] | None) -> None:
    with _records_lock:
        rec = _records.get(key)
        if rec is None:
            rec = _records[key] = {"key": key, "config": config, "source": source, "calls": 0}
        elif source == "tuned":
            rec["source"] = source
        rec["config"] = config
        rec["time_ms"] = float("nan") if entry is None else entry["time_ms"]
        rec["candidates"] = 0 if entry is None else entry["candidates"]
        rec["calls"] += 1


@contextlib.contextmanager
def recording_choices() -> Iterator[list[dict[str, Any]]]:
    """Collect what :func:`select_config` answers while tuning inside the block.

    Yields a list that is filled when the block ends: one record per conv key (``key``, ``config``, ``source``:
    ``"tuned"``, ``"cache"`` or ``"default"``, ``time_ms``, ``candidates``, ``calls``).
    """
    records: list[dict[str, Any]] = []
    with _records_lock:
        _records.clear()
    try:
        yield records
    finally:
        with _records_lock:
            records.extend(_records.values())
            _records.clear()


def _time_candidates(
    candidates: list[ConvConfig], launch: Callable[[ConvConfig], object], on_gpu: bool
) -> list[tuple[float, ConvConfig]]:
    """``(ms, config)`` of every candidate whose launch succeeds."""
    from triton.testing import do_bench

    timed = []
    for cfg in candidates:
        try:
            if on_gpu:
                ms = float(do_bench(lambda cfg=cfg: launch(cfg), warmup=BENCH_WARMUP_MS, rep=BENCH_REP_MS))
            else:  # the interpreter: do_bench needs a GPU
                ms = time_calls(lambda cfg=cfg: launch(cfg), "cpu", warmup=0, iters=1)[0]
        except Exception as err:  # e.g. OutOfResources (shared memory) for a big tile: just not a candidate
            logger.debug("autotune: config %r failed: %s: %s", cfg, type(err).__name__, err)
            continue
        if math.isfinite(ms):
            timed.append((ms, cfg))
    return timed


def select_config(
    *,
    rows: int,
    cin_g: int,
    cout_g: int,
    taps: int,
    groups: int,
    dtype: torch.dtype,
    gather: bool,
    device: torch.device,
    launch: Callable[[ConvConfig], object],
) -> ConvConfig:
    """The tile config of one conv launch: cached, freshly tuned (tuning mode), or the default.

    Args:
        rows: output elements ``M``.
        cin_g, cout_g: input / output channels per group.
        taps: ``k * k``.
        groups: conv groups.
        dtype: the values' dtype.
        gather: whether the launch reads through a tap table (``index`` given).
        device: the values' device.
        launch: runs the kernel once with a config (tuning calls it once per candidate on a GPU through
            ``triton.testing.do_bench``, many times; the caller then launches with the returned config).

    Returns:
        The stored config of :func:`conv_key`'s bucket if there is one; else, when :func:`is_tuning`, the fastest
        candidate of ``prune_configs(conv_configs(), rows, cin_g, cout_g)`` (stored and saved); else
        ``device_default_config(rows, cin_g, cout_g, device, dtype)`` (per-architecture, SM-aware tiles).
    """
    key = conv_key(rows, cin_g, cout_g, taps, groups, dtype, gather)
    device = device if isinstance(device, torch.device) else torch.device(device)
    cache = get_cache(device)
    config = cache.get(key)
    if not is_tuning():
        if config is None:
            config = conv_module.device_default_config(rows, cin_g, cout_g, device, dtype)
        return config
    if config is not None:
        _record(key, config, "cache", cache.entry(key))
        return config
    if (str(cache.path), key) in _untunable:
        config = conv_module.device_default_config(rows, cin_g, cout_g, device, dtype)
        _record(key, config, "default", None)
        return config
    with _tune_lock:
        config = cache.get(key)  # another thread may have tuned it while we waited
        if config is not None:
            _record(key, config, "cache", cache.entry(key))
            return config
        return _tune(key, rows, cin_g, cout_g, dtype, device, launch, cache)


def _tune(
    key: str,
    rows: int,
    cin_g: int,
    cout_g: int,
    dtype: torch.dtype,
    device: torch.device,
    launch: Callable[[ConvConfig], object],
    cache: AutotuneCache,
) -> ConvConfig:
    candidates = prune_configs(conv_configs(), rows, cin_g, cout_g)
    if interpreting():
        candidates = candidates[:INTERPRETER_CANDIDATES]
        on_gpu = False
    elif device.type == "cuda":
        on_gpu = True
    else:  # no GPU and no interpreter: Triton cannot run here, the caller's launch will say so
        logger.debug("autotune: %s needs CUDA or TRITON_INTERPRET=1; using the default config", key)
        config = conv_module.device_default_config(rows, cin_g, cout_g, device, dtype)
        _record(key, config, "default", None)
        return config
    start = time.perf_counter()
    timed = _time_candidates(candidates, launch, on_gpu)
    if not timed:
        logger.warning("autotune: every candidate config failed for %s; using the default config", key)
        _untunable.add((str(cache.path), key))
        config = conv_module.device_default_config(rows, cin_g, cout_g, device, dtype)
        _record(key, config, "default", None)
        return config
    best_ms, best = min(timed, key=lambda t: t[0])
    cache.put(key, best, best_ms, len(timed))
    logger.info(
        "autotune: %s -> %r (%.4f ms, %d candidates, %.1f s)",
        key,
        best,
        best_ms,
        len(timed),
        time.perf_counter() - start,
    )
    try:
        cache.save()
    except OSError as err:  # a read-only cache dir must not stop inference: keep the result in memory
        if str(cache.path) not in _save_failed:
            _save_failed.add(str(cache.path))
            warnings.warn(f"cannot save autotune cache {cache.path}: {err}", UserWarning, stacklevel=3)
    _record(key, best, "tuned", cache.entry(key))
    return best
