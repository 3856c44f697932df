"""The host side of a launch: host-device synchronisation made visible, and cheap module attribute reads.

Every read of device values the package does on purpose (e.g. the element counts of a new level map) goes through
:func:`to_host`, which counts it: a ``TorchDispatchMode`` sees implicit syncs (``nonzero``, ``item``), but not
``Tensor.tolist()`` on the CPU, so the host bench and the tests add :func:`host_reads` to what the mode sees.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["host_reads", "module_attr", "to_host"]

_reads = 0
_TABLES = ("_parameters", "_modules", "_buffers")  # where nn.Module.__setattr__ files tensors and children


def to_host(values: Tensor) -> list:
    """``values.tolist()``: one host-device sync on a GPU, counted."""
    global _reads
    _reads += 1
    return values.tolist()


def host_reads() -> int:
    """How many :func:`to_host` calls this process made."""
    return _reads


def module_attr(module: nn.Module, name: str) -> Tensor | nn.Module | None:
    """``getattr(module, name)`` for a parameter, buffer or child module, read from the module's tables.

    Through ``nn.Module.__getattr__`` (reached after ``__getattribute__`` misses) such a read costs ~2 µs on this
    2-core CPU, against ~0.3 µs here, and an eager bottleneck makes ~25 of them (convs, norms, their tensors): a
    sixth of its host time. Names that are not in the tables (a parametrization's property, a plain attribute) fall
    back to ``getattr``.
    """
    state = vars(module)
    for table in _TABLES:
        entries = state.get(table)
        if entries is not None and name in entries:
            return entries[name]
    return getattr(module, name)
