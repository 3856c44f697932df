"""The host side of a launch: host-device synchronisation made visible, and cheap module attribute reads.

Every read of device values the package does on purpose (e.g. the element counts of a new level map) goes through
:func:`to_host`, which counts it: a ``TorchDispatchMode`` sees implicit syncs (``nonzero``, ``item``), but not
``Tensor.tolist()`` on the CPU, so the host bench and the tests add :func:`host_reads` to what the mode sees.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["host_reads", "module_attrs", "to_host"]

_reads = 0
_NONE: dict = {}


def to_host(values: Tensor) -> list:
    """``values.tolist()``: one host-device sync on a GPU, counted."""
    global _reads
    _reads += 1
    return values.tolist()


def host_reads() -> int:
    """How many :func:`to_host` calls this process made."""
    return _reads


def module_attrs(module: nn.Module, *names: str) -> list:
    """``[getattr(module, name) for name in names]`` for parameters, buffers and child modules, read from the
    module's tables.

    Through ``nn.Module.__getattr__`` each such read first misses in ``__getattribute__`` (an ``AttributeError``
    raised and caught), several times the cost of the dictionary lookups done here, and an eager bottleneck makes
    ~25 of them (convs, norms, their tensors): a large share of its host time. Names that are not in the tables (a
    parametrization's property, a plain attribute) fall back to ``getattr``.
    """
    state = vars(module)
    params, buffers, children = (
        state.get("_parameters", _NONE),
        state.get("_buffers", _NONE),
        state.get("_modules", _NONE),
    )
    return [
        params[name] if name in params else buffers[name] if name in buffers else
        children[name] if name in children else getattr(module, name)
        for name in names
    ]  # fmt: skip
