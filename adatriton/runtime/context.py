"""One helper for the library's scoped settings (``use_backend``, ``tuning``, dispatch ``recording``), and the one
way the hot path reads environment variables (:func:`getenv`, :func:`environment_snapshot`).

Each setting is a stack held in a :class:`contextvars.ContextVar`, so it is per thread and per asyncio task, nests,
and is restored on exit even when the block raises. Code traced by ``torch.compile`` reads a per-thread copy of the
stack instead (:meth:`ScopedStack.top`): Dynamo on torch 2.11 cannot trace ``ContextVar.get`` (a graph break at every
conv, and ``fullgraph=True`` fails), while it traces an attribute of a :class:`threading.local` and guards on it, so
a compiled model sees the settings of the blocks it is called in and recompiles when they change.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
import os
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

import torch

__all__ = ["ScopedStack", "environment_snapshot", "getenv", "same_settings", "settings_token"]

T = TypeVar("T")


#: Every ScopedStack, in the order they were made (what settings_token reads).
_stacks: list[ScopedStack] = []


class ScopedStack(Generic[T]):
    """A stack of values pushed for the duration of a ``with`` block.

    Args:
        name: the context variable's name (for debugging).
    """

    def __init__(self, name: str):
        self._var: contextvars.ContextVar[tuple[T, ...]] = contextvars.ContextVar(name, default=())
        # The same stack for traced code (see the module docstring), set by push on entry and exit.
        self._traced = threading.local()
        _stacks.append(self)

    def _stack(self) -> tuple[T, ...]:
        if torch.compiler.is_compiling():
            return getattr(self._traced, "stack", ())
        return self._var.get()

    def top(self) -> T | None:
        """The innermost value, or None outside every block."""
        stack = self._stack()
        return stack[-1] if stack else None

    def __bool__(self) -> bool:
        return bool(self._stack())

    @contextlib.contextmanager
    def push(self, value: T) -> Iterator[T]:
        """Make ``value`` the innermost one inside the block."""
        outer = self._var.get()
        token = self._var.set((*outer, value))
        self._traced.stack = (*outer, value)
        try:
            yield value
        finally:
            self._var.reset(token)
            self._traced.stack = outer


class _Environment(dict):
    """Environment variables, each read from ``os.environ`` the first time it is asked for."""

    def __missing__(self, name: str) -> str | None:
        value = self[name] = os.environ.get(name)
        return value


_environments: ScopedStack[_Environment] = ScopedStack("adatriton_environment")


def getenv(name: str, default: str | None = None) -> str | None:
    """``os.environ.get(name, default)``; inside :func:`environment_snapshot`, the value the variable had when it
    was first read in that block."""
    env = _environments.top()
    value = os.environ.get(name) if env is None else env[name]
    return default if value is None else value


def settings_token() -> tuple | None:
    """Every :class:`ScopedStack`'s stack as it is now in this context, or None while compiling or outside every
    :func:`environment_snapshot`.

    A push stores a new tuple and leaving its block restores the one before, so while each element of the token is
    the same object as in an earlier one (:func:`same_settings`), every scoped setting is as it was then, and so is
    every environment variable that was read through :func:`getenv` then (the snapshot keeps what it read): a caller
    may keep what it derived from them for as long (``adatriton.ops.conv``'s eager plans, once per forward instead of
    once per conv).
    """
    if torch.compiler.is_compiling():
        return None
    token = tuple([stack._var.get() for stack in _stacks])
    return token if _environments._var.get() else None


def same_settings(token: tuple | None, other: tuple | None) -> bool:
    """Whether two :func:`settings_token` values stand for the same settings: both made inside a snapshot, and each
    of their stacks the same object."""
    return token is not None and other is not None and len(token) == len(other) and all(map(operator.is_, token, other))


@contextlib.contextmanager
def environment_snapshot() -> Iterator[None]:
    """Read each environment variable the library consults at most once inside the block (a model's forward).

    Every eager conv launch asks for ``$ADATRITON_AUTOTUNE``, ``$ADATRITON_CACHE_DIR`` (its config memo) and, on the
    CPU, ``$TRITON_INTERPRET``; through ``os.environ`` each read of an unset variable raises and catches a
    ``KeyError``, a visible part of the host time of a small conv, so one forward reads each variable once. A
    change of the environment made inside the block is seen from the next block on.
    """
    with _environments.push(_Environment()):
        yield
