"""Where per-device files live and what they are named by: the cache directory, the hardware name, and the JSON
cache files (autotune configs, dispatch crossovers), read safely and written atomically.

Both files have the shape ``{<header fields>, "entries": {key: entry}}`` with one entry per line, so they read
(and diff) like a table. Writers go through :func:`update_entries_file`: read, merge and replace under an
inter-process lock (:func:`file_lock`), so concurrent processes keep each other's entries.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:  # POSIX; without it (Windows) writers lock only against threads of their own process
    import fcntl
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    fcntl = None

import torch

from ..kernels.conv import interpreting

__all__ = [
    "CACHE_DIR_ENV",
    "CacheFileError",
    "MAX_CACHE_FILE_BYTES",
    "cache_dir",
    "cpu_model",
    "dumps_entries",
    "file_lock",
    "device_name",
    "read_entries_file",
    "slug",
    "update_entries_file",
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


def device_name(device: torch.device | str | int | None, *, triton_timings: bool = False) -> str:
    """The one name of the hardware that measurements on ``device`` belong to; the cache files are named by it.

    Args:
        device: a device, a device string, a CUDA index, or None for the current CUDA device.
        triton_timings: name the hardware that times the Triton kernels (the autotune cache). On the CPU that is
            the Triton interpreter, ``"interpreter-cpu"``; on CUDA under ``TRITON_INTERPRET=1`` it is
            ``"interpreter-<GPU model>"``: interpreter timings must never land in (or be read from) the file that
            real GPU runs use.

    Returns:
        The GPU model on CUDA (``torch.cuda.get_device_name``, asked once per index: it queries the driver, and
        the callers run once per conv launch), ``"cpu-<model name>"`` on the CPU, else the device type; with
        ``triton_timings``, ``"interpreter-<device type>"`` off CUDA.
    """
    if not isinstance(device, torch.device):
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = _cuda_name(index)
        return f"interpreter-{name}" if triton_timings and interpreting() else name
    if triton_timings:
        return f"interpreter-{device.type}"
    return f"cpu-{cpu_model()}" if device.type == "cpu" else device.type


def slug(text: str) -> str:
    """A file-name-safe form of a device name: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


class CacheFileError(ValueError):
    """The file exists but cannot be used; the message says why."""


#: Larger cache files are not read: a real one holds a few hundred entries of ~100 bytes, and reading an arbitrary
#: file whole into memory (a disk image linked there by mistake) could exhaust it.
MAX_CACHE_FILE_BYTES = 16 * 2**20
_SCALARS = (str, int, float, bool, type(None))


def _read_limited(path: Path) -> bytes | None:
    """The bytes of a regular file of at most :data:`MAX_CACHE_FILE_BYTES`, or None when it does not exist."""
    try:
        # O_NONBLOCK: opening a FIFO someone put there must not hang the run (regular files ignore the flag).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        if path.is_symlink():
            raise CacheFileError(f"it is a dangling symbolic link (to {os.readlink(path)!r})") from None
        return None
    except OSError as err:
        raise CacheFileError(f"cannot read it ({err})") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else "other"
            raise CacheFileError(f"not a regular file (it is {kind})" if kind != "other" else "not a regular file")
        if info.st_size > MAX_CACHE_FILE_BYTES:
            raise CacheFileError(f"it is {info.st_size} bytes, over the limit of {MAX_CACHE_FILE_BYTES}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CACHE_FILE_BYTES + 1)  # +1: a file that grew after fstat is still caught
    except OSError as err:
        raise CacheFileError(f"cannot read it ({err})") from err
    finally:
        os.close(fd)
    if len(data) > MAX_CACHE_FILE_BYTES:
        raise CacheFileError(f"it is over the limit of {MAX_CACHE_FILE_BYTES} bytes")
    return data


def read_entries_file(path: Path, what: str) -> dict[str, Any] | None:
    """The parsed file, or None when it does not exist.

    Never raises anything but :class:`CacheFileError` for a file that exists: the readers turn that into a warning
    and go on without the file, whatever was put there.

    Args:
        path: the file.
        what: what the file should be, for the error message (e.g. ``"an autotune cache"``).

    Raises:
        CacheFileError: a dangling symbolic link; not a regular file (a directory, a FIFO, a device); larger than
            :data:`MAX_CACHE_FILE_BYTES`; unreadable (permissions, I/O); not UTF-8; not JSON, or nested too deeply
            or with numbers too long for Python to parse; not an object with an ``"entries"`` object; or a header
            field (any key but ``"entries"``) that is not a string, number, boolean or null.
    """
    raw = _read_limited(path)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CacheFileError(f"cannot read it ({err})") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CacheFileError(f"not valid JSON ({err})") from err
    except RecursionError:
        # The C scanner recurses once per level: "[" * 100000 would otherwise end the process's caller.
        raise CacheFileError("not valid JSON (nested too deeply)") from None
    except ValueError as err:  # e.g. an integer longer than sys.get_int_max_str_digits()
        raise CacheFileError(f"not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise CacheFileError(f"not {what} (expected an object with 'entries')")
    # The readers compare and print the header fields: a nested value there is never valid, and printing one
    # could be huge.
    bad = [k for k, v in data.items() if k != "entries" and not isinstance(v, _SCALARS)]
    if bad:
        raise CacheFileError(f"not {what} (header field {bad[0]!r} is a {type(data[bad[0]]).__name__})")
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


# One in-process lock per lock file: flock serialises processes (and separate descriptors of one process), and this
# keeps the threads of a process from queueing on the kernel lock needlessly or, without fcntl, from racing.
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(str(path), threading.Lock())


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` against other processes and threads for the enclosed block.

    The lock is ``fcntl.flock`` on the lock file ``<path>.lock`` next to ``path`` (created with its directory, never
    deleted: deleting it would let a waiting process lock an unlinked file). Where ``fcntl`` is missing (Windows)
    only the threads of this process are serialised; writes stay atomic, but concurrent processes may then drop
    each other's newest entries. Yields the lock file's path.

    Raises:
        OSError: the directory or the lock file cannot be created (the write that follows would fail too).
    """
    lock_path = path.with_name(path.name + ".lock")
    with _thread_lock(lock_path):
        if fcntl is None:
            yield lock_path
            return
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield lock_path
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def update_entries_file(
    path: Path,
    read: Callable[[], dict[str, dict[str, Any]]],
    header: dict[str, Any],
    entries: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Merge ``entries`` into the file's and replace it, under :func:`file_lock`: ours win on the same key, and
    entries another process saved meanwhile are kept.

    Args:
        path: the file.
        read: returns the file's valid entries ({} when it is missing, corrupt or foreign); called under the lock.
        header: the header fields of the written file.
        entries: the entries to add or replace.

    Returns:
        The merged entries, as written.

    Raises:
        OSError: the directory, lock file or file cannot be written.
    """
    with file_lock(path):
        merged = read()
        merged.update(entries)
        write_atomic(path, dumps_entries(header, merged))
    return merged
