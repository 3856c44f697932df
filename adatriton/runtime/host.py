"""Host-device synchronisation, made visible.

Every read of device values the package does on purpose (e.g. the element counts of a new level map) goes through
:func:`to_host`, which counts it: a ``TorchDispatchMode`` sees implicit syncs (``nonzero``, ``item``), but not
``Tensor.tolist()`` on the CPU, so the host bench and the tests add :func:`host_reads` to what the mode sees.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["host_reads", "to_host"]

_reads = 0


def to_host(values: Tensor) -> list:
    """``values.tolist()``: one host-device sync on a GPU, counted."""
    global _reads
    _reads += 1
    return values.tolist()


def host_reads() -> int:
    """How many :func:`to_host` calls this process made."""
    return _reads
