"""Where per-device files live and what they are named by: the cache directory, the hardware name, and the JSON
cache files (autotune configs, dispatch crossovers), read safely and written atomically.

Both files have the shape ``{<header fields>, "entries": {key: entry}}`` with one entry per line, so they read
(and diff) like a table.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CACHE_DIR_ENV",
    "CacheFileError",
    "cache_dir",
    "cpu_model",
    "dumps_entries",
    "gpu_name",
    "hardware_name",
    "read_entries_file",
    "slug",
    "write_atomic",
]

#: Overrides the cache directory.
CACHE_DIR_ENV = "ADATRITON_CACHE_DIR"


def cache_dir() -> Path:
    """The directory of the cache files: ``$ADATRITON_CACHE_DIR``, else ``$XDG_CACHE_HOME/adatriton``, else
    ``~/.cache/adatriton``."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "adatriton"


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows, else ``"unknown"``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def gpu_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` of a CUDA device, asked once per index (it queries the driver, and the
    callers run once per conv launch)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_name(index)


def hardware_name(device: torch.device | str) -> str:
    """The hardware measurements on ``device`` belong to: the GPU model on CUDA, ``"cpu-<model name>"`` on the CPU,
    else the device type."""
    device = torch.device(device)
    if device.type == "cuda":
        return gpu_name(device)
    if device.type == "cpu":
        return f"cpu-{cpu_model()}"
    return device.type


def slug(text: str) -> str:
    """A file-name-safe form of a device name: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


class CacheFileError(ValueError):
    """The file exists but cannot be used; the message says why."""


def read_entries_file(path: Path, what: str) -> dict[str, Any] | None:
    """The parsed file, or None when it does not exist.

    Args:
        path: the file.
        what: what the file should be, for the error message (e.g. ``"an autotune cache"``).

    Raises:
        CacheFileError: unreadable, not JSON, or not an object with an ``"entries"`` object.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise CacheFileError(f"cannot read it ({err})") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CacheFileError(f"not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise CacheFileError(f"not {what} (expected an object with 'entries')")
    return data


def dumps_entries(header: dict[str, Any], entries: dict[str, dict[str, Any]]) -> str:
    """The file's text: the header fields, then ``"entries"`` with one sorted entry per line."""
    head = json.dumps(header)
    lines = [f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in sorted(entries.items())]
    body = "{\n" + ",\n".join(lines) + "\n }" if lines else "{}"
    return head[:-1] + f',\n "entries": {body}}}\n'


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temp file in the same directory, fsync, ``os.replace``, then a
    best-effort fsync of the directory so the rename itself persists. Creates the directory.

    Raises:
        OSError: the directory or file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is shareable like any other
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        with contextlib.suppress(OSError):
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
