"""Which implementation computes convolutions on multi-resolution maps.

- ``"torch"``: gather-GEMM over the elements (cost follows the element count; the CPU path, differentiable).
- ``"dense"``: densify, ordinary dense conv on the padded finest grid (cuDNN / oneDNN), sample at the element
  centres.
- ``"triton"``: the fused implicit-GEMM kernels of :mod:`adatriton.kernels` (CUDA; on the CPU only under the
  Triton interpreter, ``TRITON_INTERPRET=1``). fp32, fp16 and bf16.

- ``"auto"``: the per-layer dispatcher (:mod:`adatriton.ops.dispatch`) picks one of the three for every conv of the
  adaptive part from its shape and the density of the elements it computes; where no layer is known (e.g.
  :func:`resolve_backend`, densify) ``"auto"`` means ``"triton"`` on CUDA and ``"torch"`` elsewhere.

All are exact (docs/semantics.md §3). The default is ``"torch"``; the environment variable ``ADATRITON_BACKEND`` or the
:func:`use_backend` context manager change it, a ``backend=`` argument overrides it per call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .context import ScopedStack, getenv

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "TRITON_DTYPES",
    "requested_backend",
    "resolve_backend",
    "triton_runs_on",
    "use_backend",
]

BACKENDS = ("torch", "dense", "triton", "auto")
#: The dtypes the triton backend computes in.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ENV_VAR = "ADATRITON_BACKEND"
_requested: ScopedStack[str] = ScopedStack("adatriton_backend")


def _check(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} from {where}; expected one of {BACKENDS}")
    return name


def requested_backend(backend: str | None = None) -> tuple[str, str]:
    """The backend asked for, before ``"auto"`` is resolved, and where the request came from.

    Returns:
        ``(name, source)``: the argument (source ``"argument"``), else the innermost :func:`use_backend`
        (``"use_backend"``), else ``$ADATRITON_BACKEND`` (``"$ADATRITON_BACKEND"``), else ``("torch", "default")``.
    """
    if backend is not None:
        return _check(backend, "the backend argument"), "argument"
    scoped = _requested.top()
    if scoped is not None:
        return scoped, "use_backend"
    from_env = getenv(ENV_VAR)
    if from_env:
        return _check(from_env, f"${ENV_VAR}"), f"${ENV_VAR}"
    return "torch", "default"


def resolve_backend(backend: str | None = None, device: torch.device | None = None) -> str:
    """The backend to use: the argument, else the innermost :func:`use_backend`, else ``$ADATRITON_BACKEND``,
    else ``"torch"``; ``"auto"`` becomes ``"triton"`` for CUDA tensors and ``"torch"`` otherwise (the
    per-layer choice of convolutions is :func:`adatriton.ops.dispatch.select`)."""
    name = requested_backend(backend)[0]
    if name == "auto":
        return "triton" if device is not None and device.type == "cuda" else "torch"
    return name


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[str]:
    """Run the enclosed code with ``backend`` for every op that does not name one."""
    _check(backend, "use_backend")
    with _requested.push(backend):
        yield backend


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device``: CUDA, or the CPU under ``TRITON_INTERPRET=1``."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and getenv("TRITON_INTERPRET", "0") not in ("", "0")
