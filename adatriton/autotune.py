"""Persistent, per-GPU autotuning of the implicit-GEMM conv kernel (:mod:`adatriton.kernels.conv`).

Every Triton conv launch of the ``"triton"`` backend asks :func:`select_config` for its tile config. The answer
comes from a JSON cache file per GPU model and Triton version (:func:`cache_path`), keyed by a readable bucket of
the problem shape (:func:`conv_key`). A missing key gets :func:`~adatriton.kernels.conv.default_config`, unless
tuning is on (:func:`tuning`, ``$ADATRITON_AUTOTUNE=1``): then every candidate of the pruned search space is timed
once on the real inputs, the fastest is stored and the file rewritten atomically.

Tune once per GPU, ahead of time, for the shapes a deployment sees::

    python -m adatriton.autotune --model resnet101 --size 1024 2048 --dtype float16

or from Python with :func:`tune_model`. Later processes (without tuning) pick the stored configs up.

Under the Triton interpreter (``TRITON_INTERPRET=1``, the CPU test setup) the timings mean nothing for a GPU, so
they go to their own ``interpreter-*`` cache file, and only the first two candidates are tried (the interpreter is
slow); tuning never raises there.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import triton

from ._jsonfile import CacheFileError, dumps_entries, read_entries_file, slug, write_atomic
from .kernels.conv import ConvConfig, conv_configs, default_config, interpreting, prune_configs

__all__ = [
    "AUTOTUNE_ENV",
    "CACHE_DIR_ENV",
    "SCHEMA",
    "AutotuneCache",
    "cache_dir",
    "cache_path",
    "conv_key",
    "device_name",
    "get_cache",
    "is_tuning",
    "main",
    "random_level_map",
    "select_config",
    "tune_model",
    "tuning",
]

logger = logging.getLogger(__name__)

#: Overrides the cache directory.
CACHE_DIR_ENV = "ADATRITON_CACHE_DIR"
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
def cache_dir() -> Path:
    """The directory of the cache files: ``$ADATRITON_CACHE_DIR``, else ``$XDG_CACHE_HOME/adatriton``, else
    ``~/.cache/adatriton``."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "adatriton"


# get_device_name queries the driver; select_config runs once per conv launch, so remember the answer.
_device_names: dict[tuple[str, int | None], str] = {}


def device_name(device: torch.device | str | int | None) -> str:
    """The name that identifies the hardware the timings were taken on.

    Args:
        device: a CUDA device (``torch.cuda.get_device_name``) or the CPU (the Triton interpreter).

    Returns:
        ``torch.cuda.get_device_name(device)`` on CUDA, ``"interpreter-cpu"`` on the CPU. While the interpreter
        runs (``TRITON_INTERPRET=1``) a CUDA device is named ``"interpreter-<gpu name>"``: interpreter timings must
        never land in (or be read from) the cache that real GPU runs use.
    """
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
    if device.type != "cuda":
        return "interpreter-cpu" if device.type == "cpu" else f"interpreter-{device.type}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = _device_names.get(("cuda", index))
    if name is None:
        name = _device_names[("cuda", index)] = torch.cuda.get_device_name(index)
    return f"interpreter-{name}" if interpreting() else name


def cache_path(device: torch.device | str | int | None) -> Path:
    """The cache file of ``device``'s GPU model and the installed Triton version, e.g.
    ``~/.cache/adatriton/conv-nvidia-h100-80gb-hbm3-triton3.8.0.json``."""
    return _cache_file(device_name(device))


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
def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    cfg, t, n = entry.get("config"), entry.get("time_ms"), entry.get("candidates")
    ints_ok = isinstance(cfg, list) and len(cfg) == len(ConvConfig.fields)
    ints_ok = ints_ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in cfg)
    time_ok = isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
    return ints_ok and time_ok and isinstance(n, int) and not isinstance(n, bool) and n >= 1


class AutotuneCache:
    """The tuned configs of one GPU model and Triton version, backed by one JSON file.

    File format::

        {"schema": 1, "gpu": "<device_name>", "triton": "<version>",
         "entries": {"<conv_key>": {"config": [BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps],
                                    "time_ms": 0.123, "candidates": 15}}}

    The file is read lazily, on the first :meth:`get` or :meth:`put`. A file that is not valid JSON, has another
    schema, wrong types, or belongs to another GPU or Triton version is ignored with a ``UserWarning`` (it never
    raises); individual malformed entries are dropped the same way. Thread-safe.

    Args:
        name: the :func:`device_name` the file belongs to.
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
            if _valid_entry(entry):
                entries[key] = {
                    "config": list(entry["config"]),
                    "time_ms": entry["time_ms"],
                    "candidates": entry["candidates"],
                }
            else:
                bad.append(key)
        if bad and warn:
            warnings.warn(
                f"autotune cache {self.path}: dropping {len(bad)} malformed entries (first: {bad[0]!r})",
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
        if not _valid_entry(entry):
            raise ValueError(f"invalid autotune entry for {key!r}: {entry}")
        with self._lock:
            self._loaded()[key] = entry
            self._dirty.add(key)

    def save(self) -> Path:
        """Write the file atomically (temp file in the same directory, fsync, ``os.replace``), creating the
        directory.

        Entries another process saved since this one loaded the file are kept (ours win on the same key), so
        concurrent tuning runs do not erase each other's results.

        Returns:
            The file's path.

        Raises:
            OSError: the directory or file cannot be written.
        """
        with self._lock:
            merged = self._read(warn=False)
            merged.update(self._loaded())
            header = {"schema": SCHEMA, "gpu": self.name, "triton": self.triton_version}
            write_atomic(self.path, dumps_entries(header, merged))
            self._entries = merged
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
    name = device_name(device if index is None else torch.device(device.type, index))
    path = _cache_file(name)
    # Keyed by the file too, so changing $ADATRITON_CACHE_DIR (tests, tools) gets a fresh object.
    with _caches_lock:
        cache = _caches.setdefault(("file", name, str(path)), AutotuneCache(name, path))
        _caches[fast] = cache
    return cache


# ---------------------------------------------------------------------------------------------- tuning mode
_state = threading.local()


def is_tuning() -> bool:
    """Whether :func:`select_config` tunes missing keys: the innermost :func:`tuning` of this thread, else
    ``$ADATRITON_AUTOTUNE``."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    return os.environ.get(AUTOTUNE_ENV, "").strip().lower() in _TRUE


@contextlib.contextmanager
def tuning(enabled: bool = True) -> Iterator[bool]:
    """Tune (``enabled``) or do not tune missing keys inside the block, in this thread; nests."""
    stack = _state.__dict__.setdefault("stack", [])
    stack.append(bool(enabled))
    try:
        yield bool(enabled)
    finally:
        stack.pop()


# What select_config answered while tuning was on, per key; tune_model clears and reads it. A dict keyed by the
# (bounded) set of keys rather than a list, so a long-running process with $ADATRITON_AUTOTUNE=1 does not grow it.
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
            else:
                start = time.perf_counter()
                launch(cfg)
                ms = (time.perf_counter() - start) * 1e3
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
        ``default_config(rows, cin_g, cout_g)``.
    """
    key = conv_key(rows, cin_g, cout_g, taps, groups, dtype, gather)
    device = device if isinstance(device, torch.device) else torch.device(device)
    cache = get_cache(device)
    config = cache.get(key)
    if not is_tuning():
        return config if config is not None else default_config(rows, cin_g, cout_g)
    if config is not None:
        _record(key, config, "cache", cache.entry(key))
        return config
    if (str(cache.path), key) in _untunable:
        config = default_config(rows, cin_g, cout_g)
        _record(key, config, "default", None)
        return config
    with _tune_lock:
        config = cache.get(key)  # another thread may have tuned it while we waited
        if config is not None:
            _record(key, config, "cache", cache.entry(key))
            return config
        return _tune(key, rows, cin_g, cout_g, device, launch, cache)


def _tune(
    key: str,
    rows: int,
    cin_g: int,
    cout_g: int,
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
        config = default_config(rows, cin_g, cout_g)
        _record(key, config, "default", None)
        return config
    start = time.perf_counter()
    timed = _time_candidates(candidates, launch, on_gpu)
    if not timed:
        logger.warning("autotune: every candidate config failed for %s; using the default config", key)
        _untunable.add((str(cache.path), key))
        config = default_config(rows, cin_g, cout_g)
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


# ---------------------------------------------------------------------------------------------- whole models
def tune_model(model: torch.nn.Module, x: torch.Tensor, levels: Any, dtype: torch.dtype = torch.float16):
    """Tune every Triton conv of one forward pass of an adaptive model (see :func:`adatriton.convert`).

    Runs ``model.forward_features(x.to(dtype), levels)`` in eval mode under ``torch.inference_mode()``,
    ``adatriton.use_backend("triton")`` and :func:`tuning`. The model is used as is when it already has ``dtype``,
    ``x``'s device and eval mode; otherwise a cast copy runs, so the caller's weights keep their precision.
    Keys already in the cache are reported, not re-timed.

    Args:
        model: module with ``forward_features(x, levels)``, e.g. a converted ResNet whose backend is None or
            ``"triton"`` (an explicit other backend runs no Triton conv).
        x: image batch ``(N, 3, H, W)`` of the shape to tune for.
        levels: level map for ``forward_features`` (a :class:`~adatriton.LevelMap` or tensor, or None).
        dtype: the inference dtype (``float16``, ``bfloat16`` or ``float32``).

    Returns:
        A ``pandas.DataFrame`` with one row per conv key the pass used: ``key``, the config fields
        (``BLOCK_M`` ... ``num_warps``), ``time_ms`` (best candidate's time; NaN for an untuned default),
        ``candidates`` (configs timed), ``tuned`` (newly tuned in this call), ``source``
        (``"tuned"``, ``"cache"`` or ``"default"``) and ``calls`` (launches with that key).
    """
    import pandas as pd

    from .backends import use_backend

    if model.training or any(p.dtype != dtype or p.device != x.device for p in model.parameters()):
        # .to() would cast the caller's model in place (and an fp16 round trip loses precision): cast a copy.
        model = copy.deepcopy(model).to(device=x.device, dtype=dtype).eval()
    if levels is not None and hasattr(levels, "to"):
        levels = levels.to(x.device)
    with _records_lock:
        _records.clear()
    try:
        with torch.inference_mode(), use_backend("triton"), tuning(True):
            model.forward_features(x.to(dtype), levels)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
    finally:
        with _records_lock:
            records = list(_records.values())
            _records.clear()
    if not records:
        warnings.warn(
            "tune_model: no Triton conv ran; does the model use the 'triton' backend (convert(..., backend=None))?",
            UserWarning,
            stacklevel=2,
        )
    rows = []
    for rec in records:
        rows.append(
            {
                "key": rec["key"],
                **rec["config"].as_dict(),
                "time_ms": rec["time_ms"],
                "candidates": rec["candidates"],
                "tuned": rec["source"] == "tuned",
                "source": rec["source"],
                "calls": rec["calls"],
            }
        )
    columns = ["key", *ConvConfig.fields, "time_ms", "candidates", "tuned", "source", "calls"]
    return pd.DataFrame(rows, columns=columns)


def random_level_map(
    height: int,
    width: int,
    fraction: float,
    output_stride: str = "8->32",
    seed: int = 0,
    device: torch.device | str | None = None,
    batch: int = 1,
):
    """A level map for ``batch`` images of ``height x width`` with about ``fraction`` of their area at level 0.

    Per sample, a seeded random subset of the aligned 4x4 blocks of the finest grid (``ceil(H / s) x ceil(W / s)``
    for the finest stride ``s`` of ``output_stride``) is kept at level 0, the rest goes to level K
    (:func:`adatriton.masks.synthetic` with ``kind="blocks"``). None for dense output strides.
    """
    from .masks import synthetic
    from .resnet import parse_output_stride

    name, _, k = parse_output_stride(output_stride)
    if k == 0:
        return None
    return synthetic(batch, height, width, name, fraction, kind="blocks", seed=seed).to(device or "cpu")


# ---------------------------------------------------------------------------------------------- CLI
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_MODELS = ("resnet50", "resnet101", "resnet152")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--output-stride``, ``--size``, ``--batch``: the network and input the tuning and calibration
    CLIs (``python -m adatriton.autotune`` / ``adatriton.calibrate``) build."""
    p.add_argument("--model", choices=_MODELS, default="resnet101", help="torchvision backbone (default: %(default)s)")
    p.add_argument("--output-stride", default="8->32", help="adaptive output stride (default: %(default)s)")
    p.add_argument(
        "--size", nargs=2, type=int, default=(1024, 2048), metavar=("H", "W"), help="input size (default: 1024 2048)"
    )
    p.add_argument("--batch", type=int, default=1, help="batch size (default: %(default)s)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m adatriton.autotune",
        description="Tune the Triton conv configs of an adaptive ResNet for this GPU and store them in the "
        "autotune cache (random weights: configs depend only on shapes).",
    )
    add_model_arguments(p)
    p.add_argument("--fraction", type=float, default=0.3, help="area fraction at level 0 (default: %(default)s)")
    p.add_argument("--dtype", choices=list(_DTYPES), default="float16", help="inference dtype (default: %(default)s)")
    p.add_argument("--device", default="cuda", help="device (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the level map and the input (default: %(default)s)")
    return p


def _resolve_device(requested: str) -> torch.device:
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise SystemExit(f"adatriton.autotune: invalid --device {requested!r}: {err}") from None
    if device.type == "cuda":
        if torch.cuda.is_available():
            return device
        if interpreting():
            print("adatriton.autotune: no CUDA device; running the Triton interpreter on the CPU", file=sys.stderr)
            return torch.device("cpu")
        raise SystemExit(
            "adatriton.autotune: no CUDA device is visible. Autotuning times the Triton kernels on a GPU; run it on "
            "the machine that will do inference (or set TRITON_INTERPRET=1 for a slow functional check on the CPU)."
        )
    if device.type == "cpu" and interpreting():
        return device
    raise SystemExit(
        f"adatriton.autotune: Triton kernels cannot run on {device} without TRITON_INTERPRET=1; use a CUDA device."
    )


def main(argv: list[str] | None = None) -> Any:
    """``python -m adatriton.autotune``: tune one model and input size, print the chosen configs and the cache
    file. Returns the table (a ``pandas.DataFrame``)."""
    import pandas as pd
    import torchvision

    from .convert import convert
    from .resnet import parse_output_stride

    args = _parser().parse_args(argv)
    device = _resolve_device(args.device)
    try:
        output_stride = parse_output_stride(args.output_stride)[0]
    except ValueError as err:
        raise SystemExit(f"adatriton.autotune: {err}") from None
    height, width = args.size
    if height < 1 or width < 1 or args.batch < 1:
        raise SystemExit("adatriton.autotune: --size and --batch must be positive")
    if not 0.0 <= args.fraction <= 1.0:
        raise SystemExit(f"adatriton.autotune: --fraction must be in [0, 1], got {args.fraction}")
    dtype = _DTYPES[args.dtype]

    torch.manual_seed(args.seed)
    backbone = getattr(torchvision.models, args.model)(weights=None)  # random weights: no download
    net = convert(backbone, output_stride).to(device=device, dtype=dtype).eval()
    levels = random_level_map(height, width, args.fraction, output_stride, args.seed, device, args.batch)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, height, width, generator=gen).to(device=device, dtype=dtype)

    start = time.perf_counter()
    table = tune_model(net, x, levels, dtype=dtype)
    elapsed = time.perf_counter() - start
    path = get_cache(device).path
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_rows", None):
        print(table.to_string(index=False) if len(table) else "(no Triton conv ran)")
    tuned = int(table["tuned"].sum()) if len(table) else 0
    print(
        f"\n{args.model} {output_stride} {height}x{width} {args.dtype} on {device_name(device)}: {len(table)} keys, "
        f"{tuned} newly tuned in {elapsed:.1f} s"
    )
    print(f"cache file: {path}")
    return table


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the functional code calls adatriton.autotune's
    # select_config, whose tuning flag and records must be the ones tune_model sets and reads.
    from adatriton.autotune import main as _main

    _main()
