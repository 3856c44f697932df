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
   cache, :mod:`adatriton.runtime.calibration`) gives the crossover density of the layer's signature: below it the
   sparse path, at or above it ``dense``.
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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.layout import Layout
from ..core.multires import MultiResMap
from ..runtime.backend import BACKENDS, TRITON_DTYPES, requested_backend, triton_runs_on
from ..runtime.calibration import load_calibration
from ..runtime.context import ScopedStack

__all__ = [
    "CPU_CROSSOVER",
    "CPU_GROUPED_CROSSOVER",
    "CUDA_CROSSOVER",
    "Signature",
    "choose",
    "fixed_backend",
    "force",
    "forced",
    "forced_backend",
    "is_recording",
    "recording",
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

    A per-module forcing wins over every other setting (argument, :func:`~adatriton.runtime.backend.use_backend`,
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


def _density(layout: Layout, downsample: bool) -> tuple[int, float]:
    lm = layout.levelmap
    elements = layout.next().num_elements if downsample else layout.num_elements
    return elements, elements / max(1, lm.batch * lm.height * lm.width)


def forced_backend(weight: Tensor) -> str | None:
    """The backend :func:`force` set for the conv of ``weight``, or None."""
    return getattr(weight, _FORCED_ATTR, None)


def is_recording() -> bool:
    """Whether a :func:`recording` block is active in this thread (:func:`select` then records every choice)."""
    return _recorders.top() is not None


def fixed_backend(weight: Tensor, backend: str | None) -> str | None:
    """What :func:`select` returns for a conv of ``weight`` called with ``backend`` without looking at the layer or
    its map: the forced or requested backend when it is not ``"auto"`` and no :func:`recording` is active; else None
    (``select`` would look). The check of an eager plan (:mod:`adatriton.ops.conv`) that the choice still holds."""
    name = forced_backend(weight)
    if name is None:
        name = requested_backend(backend)[0]
    return None if name == "auto" or is_recording() else name


def select(x: MultiResMap, weight: Tensor, tap_spacing: int, groups: int, downsample: bool, backend: str | None) -> str:
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
