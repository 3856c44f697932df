"""Workarounds for the oldest supported Triton (3.6, see ``constraints-min.txt``), applied when the package is imported.

Triton 3.6's interpreter (``TRITON_INTERPRET=1``) turns a kernel's scalar into a Python int with
``int(handle.data)``; every scalar there is a 1-element array, and numpy >= 2 refuses ``int()`` of an array with a
dimension ("only 0-dimensional arrays can be converted to Python scalars"). So ``range(0, TAPS * k_blocks)`` in the
conv kernel, a loop bound computed from kernel arguments, fails. The bound cannot be made 0-dimensional inside the
kernel (scalar arguments, reductions and casts all stay 1-element arrays there), and a ``while`` loop would not be
software-pipelined by the compiler, so the interpreter's conversion is patched instead: :func:`patch_interpreter`
makes it ``int(handle.data.squeeze())``, which is what Triton 3.8's interpreter does itself. Compiled kernels are
unaffected (the interpreter is not used for them).
"""

from __future__ import annotations

import importlib
import os

import triton

__all__ = ["INTERPRETER_INDEX_FIXED_IN", "interpreter_needs_index_patch", "patch_interpreter"]

#: The first Triton whose interpreter converts 1-element scalars to ints itself (checked: 3.8.0).
INTERPRETER_INDEX_FIXED_IN = (3, 8)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("+")[0].split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def interpreter_needs_index_patch(version: str | None = None) -> bool:
    """Whether Triton ``version`` (default: the installed one) needs :func:`patch_interpreter`."""
    return _version(triton.__version__ if version is None else version) < INTERPRETER_INDEX_FIXED_IN


def patch_interpreter(force: bool = False) -> bool:
    """Make Triton's interpreter convert 1-element scalars with ``.squeeze()`` (see the module docstring).

    Only on Triton older than :data:`INTERPRETER_INDEX_FIXED_IN`, and only when ``$TRITON_INTERPRET`` is set (the
    interpreter module is not imported otherwise; kernels are bound to the interpreter when they are defined, so a
    variable set later would not use it either). Idempotent.

    Args:
        force: patch even when ``$TRITON_INTERPRET`` is unset (tests).

    Returns:
        Whether the interpreter is patched now.
    """
    if not interpreter_needs_index_patch():
        return False
    if not force and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return False
    interpreter = importlib.import_module("triton.runtime.interpreter")
    # Triton 3.6 sets the scalar conversions of tl.tensor in this function, on every launch, through a scope
    # that undoes them afterwards: wrapping it keeps that undo and only replaces __index__.
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:  # a layout this workaround does not know: leave the interpreter as it is
        return False
    if getattr(original, "adatriton_patched", False):
        return True

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor.adatriton_patched = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
