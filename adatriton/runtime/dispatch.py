"""Per-layer choice of the conv backend (``backend="auto"``).

Every conv of the adaptive part asks :func:`select` which implementation computes it. A forced backend (the
``backend=`` argument, :func:`~adatriton.runtime.backend.use_backend`, ``$ADATRITON_BACKEND`` other than ``auto``, or a
per-module :func:`force`) is returned unchanged; the ops raise when it cannot run. ``"auto"`` goes through
:func:`choose`, which looks at the layer's :class:`Signature` (Cin, Cout, k, tap spacing, groups, dtype), its
device and its *density*: the elements the conv computes (for a downsampling conv, the survivors) divided by the
pixels of the finest grid ``N * Hf * Wf``, i.e. the sparse paths' work relative to the ``dense`` path's.

Order of the rules in :func:`choose`:

1. 1x1 convs read no neighbours: a GEMM over the computed elements (``triton`` on CUDA, ``torch`` elsewhere);
   densifying would only add work.
2. A per-device calibration (:mod:`adatriton.tools.calibrate`, the file ``dispatch-<device>.json`` next to the autotune
   cache) gives the crossover density of the layer's signature: below it the sparse path, at or above it
   ``dense``.
3. The built-in rule: crossover :data:`CUDA_CROSSOVER` (sparse = ``triton``) on CUDA, :data:`CPU_CROSSOVER`
   (sparse = ``torch``) elsewhere, lower for grouped convs on the CPU (:data:`CPU_GROUPED_CROSSOVER`).

A ``triton`` choice that cannot run (CPU without the interpreter, float64) falls back to ``torch`` with a debug
line on the ``adatriton.dispatch`` logger. :func:`adatriton.explain` lists the choice of every conv of one forward
pass.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .backend import BACKENDS, TRITON_DTYPES, requested_backend, triton_runs_on
from .context import ScopedStack
from .files import CACHE_DIR_ENV, CacheFileError, cache_dir, hardware_name, read_entries_file, slug, update_entries_file

__all__ = [
    "CALIBRATION_SCHEMA",
    "CPU_CROSSOVER",
    "CPU_GROUPED_CROSSOVER",
    "CUDA_CROSSOVER",
    "Signature",
    "calibration_path",
    "choose",
    "clear_calibration_cache",
    "dispatch_device_name",
    "force",
    "forced",
    "load_calibration",
    "recording",
    "save_calibration",
    "select",
]

logger = logging.getLogger("adatriton.dispatch")

#: Built-in crossover on CUDA: ``triton`` below this density, ``dense`` (cuDNN on the finest grid) at or above.
#: Sparse-conv peers report dense cuDNN winning from 40-70 % density depending on the shape; 0.5 sits in that band
#: (unmeasured here without a GPU: ``python -m bench layers`` measures it, a calibration replaces it per shape).
CUDA_CROSSOVER = 0.5
#: Built-in crossover on the CPU: ``torch`` (gather-GEMM) below, ``dense`` (oneDNN) at or above. The gather costs
#: about as much as oneDNN's own im2col, so the dense path only wins when it computes (almost) nothing extra; the
#: dilated convs of the adaptive part are also slower in oneDNN than undilated ones. Conservative on purpose.
CPU_CROSSOVER = 0.9
#: ... except for grouped convs, whose gather-GEMM is memory-bound: the ``(rows, k*k*Cin)`` columns are 9x the input
#: for a few multiply-adds per value, which oneDNN's direct grouped conv never writes. Measured here (3x3, 20000
#: elements against a 100x200 grid, fp32, 2 threads), the gather path costs 37-55x the dense conv per element for
#: depthwise convs, 14x at 8 channels per group, 6x at 32. The built-in crossover of a grouped conv on the CPU is
#: ``CPU_GROUPED_CROSSOVER * sqrt(Cin / groups)`` (0.02 depthwise, 0.06 at 8 channels per group, 0.11 at 32), at
#: most :data:`CPU_CROSSOVER`.
CPU_GROUPED_CROSSOVER = 0.02
#: Version of the calibration file format; files with another one are ignored.
CALIBRATION_SCHEMA = 1


# ---------------------------------------------------------------------------------------------- signatures
@dataclass(frozen=True)
class Signature:
    """What the choice depends on besides the density: the conv's shape, dtype and tap spacing.

    Attributes:
        cin, cout: input / output channels (all groups).
        k: kernel size.
        spacing: tap spacing on the finest grid (the dense network's dilation).
        groups: conv groups.
        dtype: e.g. ``"float16"``.
    """

    cin: int
    cout: int
    k: int
    spacing: int
    groups: int
    dtype: str

    @classmethod
    def of(cls, weight: Tensor, tap_spacing: int = 1, groups: int = 1, dtype: torch.dtype | None = None) -> Signature:
        """The signature of a conv with ``weight (Cout, Cin/groups, k, k)``."""
        cout, cin_g, k, _ = weight.shape
        dt = str(dtype if dtype is not None else weight.dtype).removeprefix("torch.")
        return cls(int(cin_g * groups), int(cout), int(k), int(tap_spacing), int(groups), dt)

    @property
    def key(self) -> str:
        """The calibration file's key, e.g. ``'cin=256,cout=256,k=3,spacing=2,groups=1,dtype=float16'``."""
        return (
            f"cin={self.cin},cout={self.cout},k={self.k},spacing={self.spacing},groups={self.groups},dtype={self.dtype}"
        )


def _sparse_backend(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "torch"


# ---------------------------------------------------------------------------------------------- calibration files
def dispatch_device_name(device: torch.device | str) -> str:
    """The hardware a calibration belongs to: the GPU model on CUDA, else ``"cpu-<model name>"``."""
    return hardware_name(device)


def calibration_path(device: torch.device | str) -> Path:
    """``<cache dir>/dispatch-<device slug>.json``, e.g. ``~/.cache/adatriton/dispatch-nvidia-h100.json``."""
    return cache_dir() / f"dispatch-{slug(dispatch_device_name(device))}.json"


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
                table = _tables[str(path)] = _read_calibration(path, dispatch_device_name(device), warn=True)
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
    path, name = calibration_path(device), dispatch_device_name(device)
    header = {"schema": CALIBRATION_SCHEMA, "device": name}
    with _tables_lock:
        merged = update_entries_file(path, lambda: _read_calibration(path, name, warn=False), header, dict(entries))
        _tables[str(path)] = merged
        _by_device.clear()  # the fast lookups point at the replaced table
    return path


# ---------------------------------------------------------------------------------------------- the choice
def choose(signature: Signature, density: float, device: torch.device | str) -> tuple[str, str]:
    """The backend for one conv under ``"auto"``, and why (feasibility is checked by :func:`select`).

    Args:
        signature: the conv's :class:`Signature`.
        density: elements computed / pixels of the finest grid, in ``[0, 1]``.
        device: where it runs.

    Returns:
        ``(backend, reason)``.
    """
    device = torch.device(device)
    sparse = _sparse_backend(device)
    if signature.k == 1:
        return sparse, "1x1: a GEMM over the computed elements"
    entry = load_calibration(device).get(signature.key)
    if entry is not None:
        c = entry["crossover"]
        if c is None:
            return sparse, "calibrated: sparse faster at every density"
        if density < c:
            return sparse, f"calibrated: density {density:.3f} < crossover {c:.3f}"
        return "dense", f"calibrated: density {density:.3f} >= crossover {c:.3f}"
    if device.type == "cuda":
        c = CUDA_CROSSOVER
    elif signature.groups > 1:
        c = round(min(CPU_CROSSOVER, CPU_GROUPED_CROSSOVER * math.sqrt(signature.cin / signature.groups)), 3)
    else:
        c = CPU_CROSSOVER
    if density < c:
        return sparse, f"built-in: density {density:.3f} < {c}"
    return "dense", f"built-in: density {density:.3f} >= {c}"


# ---------------------------------------------------------------------------------------------- per-module forcing
# A per-module forcing is an attribute of the weight tensor it belongs to: it goes with the weight, a reused id cannot
# match, and torch.compile reads it without a graph break (it skips torch.utils.weak's dictionaries).
_FORCED_ATTR = "_adatriton_forced_backend"


def _conv_weights(target: nn.Module | Tensor) -> list[Tensor]:
    if isinstance(target, Tensor):
        return [target]
    if isinstance(target, nn.Module):
        return [p for p in target.parameters() if p.dim() == 4]
    raise TypeError(f"expected a module or a weight tensor, got {type(target).__name__}")


def force(target: nn.Module | Tensor, backend: str | None) -> None:
    """Force ``backend`` for the convs of ``target`` (a conv module, a block, a whole layer, or a weight tensor);
    ``None`` removes the forcing.

    A per-module forcing wins over every other setting (argument, :func:`~adatriton.runtime.use_backend`,
    environment), since it is the most specific one; ``"auto"`` makes just these convs use the dispatcher.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    for w in _conv_weights(target):
        _set_forced(w, backend)


def _set_forced(weight: Tensor, backend: str | None) -> None:
    if backend is None:
        weight.__dict__.pop(_FORCED_ATTR, None)
    else:
        setattr(weight, _FORCED_ATTR, backend)


@contextlib.contextmanager
def forced(target: nn.Module | Tensor, backend: str) -> Iterator[str]:
    """:func:`force` for the enclosed block; the previous per-module settings come back afterwards."""
    weights = _conv_weights(target)
    before = [(w, getattr(w, _FORCED_ATTR, None)) for w in weights]
    force(target, backend)
    try:
        yield backend
    finally:
        for w, old in before:
            _set_forced(w, old)


# ---------------------------------------------------------------------------------------------- recording
_recorders: ScopedStack[list] = ScopedStack("adatriton_dispatch_recording")


@contextlib.contextmanager
def recording(records: list | None = None) -> Iterator[list[dict[str, Any]]]:
    """Record every adaptive conv's choice in this thread.

    Args:
        records: the list to append the records to (anything with ``append``); a new list by default.

    Yields:
        That list. Each record has ``weight_id``, ``signature``, ``stage``, ``levelmap``, ``downsample``,
        ``elements``, ``density``, ``backend`` and ``reason``.
    """
    with _recorders.push([] if records is None else records) as sink:
        yield sink


def _density(layout: Any, downsample: bool) -> tuple[int, float]:
    lm = layout.levelmap
    elements = layout.next().num_elements if downsample else layout.num_elements
    return elements, elements / max(1, lm.batch * lm.height * lm.width)


def select(x: Any, weight: Tensor, tap_spacing: int, groups: int, downsample: bool, backend: str | None) -> str:
    """The backend that computes one conv on the multi-resolution map ``x`` (see the module docstring).

    Args:
        x: the input :class:`~adatriton.MultiResMap`.
        weight, tap_spacing, groups, downsample, backend: the conv's arguments.

    Returns:
        ``"torch"``, ``"dense"`` or ``"triton"``.
    """
    name = getattr(weight, _FORCED_ATTR, None)
    source = "forced for this module"
    if name is None:
        name, source = requested_backend(backend)
        source = "default" if source == "default" else f"forced by {source}"
    recorder = _recorders.top()
    if name != "auto" and recorder is None:
        return name
    elements, density = _density(x.layout, downsample)
    sig = Signature.of(weight, tap_spacing, groups, x.dtype)
    if name == "auto":
        name, reason = choose(sig, density, x.device)
        if name == "triton" and not (triton_runs_on(x.device) and x.dtype in TRITON_DTYPES):
            why = "no CUDA device or interpreter" if not triton_runs_on(x.device) else f"dtype {sig.dtype}"
            logger.debug("auto: %s at density %.3f: triton cannot run (%s); using torch", sig.key, density, why)
            name, reason = "torch", f"{reason}; triton cannot run ({why}): torch"
    else:
        reason = source
    if recorder is not None:
        recorder.append(
            {
                "weight_id": id(weight),
                "signature": sig,
                "stage": x.layout.stage,
                "levelmap": x.layout.levelmap,
                "downsample": bool(downsample),
                "elements": elements,
                "density": density,
                "backend": name,
                "reason": reason,
            }
        )
    return name
