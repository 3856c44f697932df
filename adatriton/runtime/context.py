"""One helper for the library's scoped settings (``use_backend``, ``tuning``, dispatch ``recording``).

Each setting is a stack held in a :class:`contextvars.ContextVar`, so it is per thread and per asyncio task, nests,
and is restored on exit even when the block raises.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["ScopedStack"]

T = TypeVar("T")


class ScopedStack(Generic[T]):
    """A stack of values pushed for the duration of a ``with`` block.

    Args:
        name: the context variable's name (for debugging).
    """

    def __init__(self, name: str):
        self._var: contextvars.ContextVar[tuple[T, ...]] = contextvars.ContextVar(name, default=())

    def top(self) -> T | None:
        """The innermost value, or None outside every block."""
        stack = self._var.get()
        return stack[-1] if stack else None

    def __bool__(self) -> bool:
        return bool(self._var.get())

    @contextlib.contextmanager
    def push(self, value: T) -> Iterator[T]:
        """Make ``value`` the innermost one inside the block."""
        token = self._var.set((*self._var.get(), value))
        try:
            yield value
        finally:
            self._var.reset(token)
