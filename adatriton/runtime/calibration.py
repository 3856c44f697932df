"""Per-device calibration files of the ``auto`` conv dispatcher (:mod:`adatriton.ops.dispatch`): where they are, how
they are read (once per file and process, a corrupt or foreign file ignored with a warning) and written.

A file ``dispatch-<device>.json`` next to the autotune cache maps a conv signature's key
(:attr:`adatriton.ops.dispatch.Signature.key`) to ``{"crossover": float | None, ...}``: the density from which the
dense path is faster (None: the sparse path is faster at every density). :mod:`adatriton.tools.calibrate` measures
and saves it.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from .files import CACHE_DIR_ENV, CacheFileError, cache_dir, device_name, read_entries_file, slug, update_entries_file

__all__ = [
    "CALIBRATION_SCHEMA",
    "calibration_path",
    "clear_calibration_cache",
    "load_calibration",
    "save_calibration",
]

#: Version of the calibration file format; files with another one are ignored.
CALIBRATION_SCHEMA = 1


def calibration_path(device: torch.device | str) -> Path:
    """``<cache dir>/dispatch-<device slug>.json``, e.g. ``~/.cache/adatriton/dispatch-nvidia-h100.json``."""
    return cache_dir() / f"dispatch-{slug(device_name(device))}.json"


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or "crossover" not in entry:
        return False
    c = entry["crossover"]
    return c is None or (isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c >= 0)


def _read_calibration(path: Path, name: str, warn: bool) -> dict[str, dict[str, Any]]:
    """Valid entries of a calibration file; {} (with a warning when ``warn``) if missing, corrupt or foreign."""

    def reject(reason: str) -> dict[str, dict[str, Any]]:
        if warn:
            warnings.warn(f"ignoring dispatch calibration {path}: {reason}", UserWarning, stacklevel=5)
        return {}

    try:
        data = read_entries_file(path, "a dispatch calibration")
    except CacheFileError as err:
        return reject(str(err))
    if data is None:
        return {}
    if data.get("schema") != CALIBRATION_SCHEMA:
        return reject(f"schema {data.get('schema')!r}, expected {CALIBRATION_SCHEMA}")
    if data.get("device") != name:
        return reject(f"it belongs to {data.get('device')!r}, not {name!r}")
    entries = {k: dict(v) for k, v in data["entries"].items() if _valid_entry(v)}
    if len(entries) != len(data["entries"]) and warn:
        warnings.warn(f"dispatch calibration {path}: dropping malformed entries", UserWarning, stacklevel=5)
    return entries


# path -> entries; choose() runs once per conv call, so each file is read once per process (and per path, so a
# changed $ADATRITON_CACHE_DIR gets its own). calibrate() updates the loaded table when it saves.
_tables: dict[str, dict[str, dict[str, Any]]] = {}
_tables_lock = threading.Lock()
# (device, the environment variables the file name depends on) -> the same table objects as _tables.
_by_device: dict[tuple, dict[str, dict[str, Any]]] = {}


def load_calibration(device: torch.device | str) -> dict[str, dict[str, Any]]:
    """The calibration entries of ``device`` (``{Signature.key: {"crossover": float | None, ...}}``), read once
    per file; a corrupt or foreign file is ignored with a ``UserWarning``."""
    device = torch.device(device)
    # choose() asks once per conv call: find the table without building the file name (hardware name, cache
    # directory, slug) when neither the device nor the environment that names the file changed.
    env = os.environ
    fast_key = (device, env.get(CACHE_DIR_ENV), env.get("XDG_CACHE_HOME"), env.get("HOME"))
    table = _by_device.get(fast_key)
    if table is not None:
        return table
    if device.type == "cuda" and not torch.cuda.is_available():
        return {}  # no GPU to name the file by (a choice asked about on a CPU-only host): the built-in rule
    path = calibration_path(device)
    table = _tables.get(str(path))
    if table is None:
        with _tables_lock:
            table = _tables.get(str(path))
            if table is None:
                table = _tables[str(path)] = _read_calibration(path, device_name(device), warn=True)
    _by_device[fast_key] = table
    return table


def clear_calibration_cache() -> None:
    """Forget the loaded calibration files (the next :func:`choose` reads them again)."""
    with _tables_lock:
        _tables.clear()
        _by_device.clear()


def save_calibration(device: torch.device | str, entries: dict[str, dict[str, Any]]) -> Path:
    """Merge ``entries`` into ``device``'s calibration file (ours win on the same key) and write it atomically
    (temp file in the same directory, fsync, ``os.replace``), under an inter-process lock (``<file>.lock``,
    :func:`~adatriton.runtime.files.file_lock`), so concurrent calibrations keep each other's entries.

    Returns:
        The file's path.

    Raises:
        ValueError: an entry is malformed (names the keys).
        OSError: the directory or file cannot be written.
    """
    bad = [k for k, v in entries.items() if not _valid_entry(v)]
    if bad:
        raise ValueError(f"invalid calibration entries: {bad}")
    path, name = calibration_path(device), device_name(device)
    header = {"schema": CALIBRATION_SCHEMA, "device": name}
    with _tables_lock:
        merged = update_entries_file(path, lambda: _read_calibration(path, name, warn=False), header, dict(entries))
        _tables[str(path)] = merged
        _by_device.clear()  # the fast lookups point at the replaced table
    return path
