"""Run a converted model with a reused level map as a CUDA graph: :func:`cuda_graph`.

A forward with a :class:`~adatriton.LevelMap` whose index tables already exist issues only kernel launches: no
host-device synchronisation, no host read of a device tensor and no data-dependent shape (``bench host`` counts
them: 0 syncs with a reused map), so it can be captured once and replayed. What a replay cannot see is a new map:
the captured launches read the tables of the map they were captured with. :class:`GraphedForward` therefore
accepts only that map object, with the same tables, and fails otherwise instead of replaying stale tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..core.levelmap import LevelMap

__all__ = ["GraphedForward", "StaleGraphError", "cuda_graph"]


class StaleGraphError(ValueError):
    """A :class:`GraphedForward` was called with another level map (or other non-tensor arguments) than it was
    captured with: replaying would read the captured map's tables."""


def _tables(levels: LevelMap) -> tuple:
    # The layouts a LevelMap caches hold every index table built for it (tap tables, downsampling sources):
    # the same layout objects mean the same tables the captured launches read.
    return tuple(levels.layout(stage) for stage in range(levels.num_levels + 1))


class GraphedForward:
    """``fn(*args, **kwargs)`` captured as a CUDA graph (or, off CUDA, run eagerly with the same contract).

    Made by :func:`cuda_graph`. Calling it with tensors of the captured shapes, dtypes and devices copies them into
    the static inputs, replays the graph and returns the static outputs: the same tensors at every call, overwritten
    by the next call (``.clone()`` what must be kept). Every argument that is not a tensor must be the captured one:
    the same :class:`~adatriton.LevelMap` object with the same tables, equal other values; anything else raises
    :class:`StaleGraphError` (call :func:`cuda_graph` again for a new map).

    Attributes:
        graph: the ``torch.cuda.CUDAGraph``, or None when it runs eagerly (no CUDA tensor among the inputs).
        levels: the level maps among the arguments, as captured.
    """

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any], warmup: int):
        flat, self._spec = tree_flatten((args, kwargs), is_leaf=lambda v: isinstance(v, LevelMap))
        self._fn = fn
        self._is_tensor = [isinstance(v, Tensor) for v in flat]
        self.levels = tuple(v for v in flat if isinstance(v, LevelMap))
        self._tables = tuple(_tables(lm) for lm in self.levels)
        self._constants = [None if t else v for v, t in zip(flat, self._is_tensor)]
        with torch.inference_mode():
            self._inputs = [v.clone() if t else None for v, t in zip(flat, self._is_tensor)]
        on_cuda = any(v.is_cuda for v in flat if isinstance(v, Tensor))
        self.graph = None
        with torch.inference_mode():
            if on_cuda:
                self._outputs = self._capture(warmup)
            else:
                # The eager fallback keeps the replay's contract: the outputs live in buffers of their own.
                self._outputs = tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, self._run())

    def _run(self) -> Any:
        flat = [s if t else c for s, t, c in zip(self._inputs, self._is_tensor, self._constants)]
        args, kwargs = tree_unflatten(flat, self._spec)
        return self._fn(*args, **kwargs)

    def _capture(self, warmup: int) -> Any:
        # The warm-up forwards build every table the map still lacks (data-dependent work, not capturable) and
        # Triton's compiled kernels, on a side stream as torch.cuda.graph requires.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(max(1, warmup)):
                self._run()
        torch.cuda.current_stream().wait_stream(stream)
        self._tables = tuple(_tables(lm) for lm in self.levels)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            outputs = self._run()
        return outputs

    def _check(self, flat: list) -> None:
        if len(flat) != len(self._is_tensor):
            raise StaleGraphError(f"captured {len(self._is_tensor)} arguments (flattened), called with {len(flat)}")
        maps = iter(zip(self.levels, self._tables))
        for i, (value, is_tensor, static) in enumerate(zip(flat, self._is_tensor, self._inputs)):
            if is_tensor:
                if not isinstance(value, Tensor):
                    raise StaleGraphError(f"argument {i}: captured a tensor, got {type(value).__name__}")
                if (value.shape, value.dtype, value.device) != (static.shape, static.dtype, static.device):
                    raise StaleGraphError(
                        f"argument {i}: captured a {static.dtype} {tuple(static.shape)} tensor on {static.device}, "
                        f"got {value.dtype} {tuple(value.shape)} on {value.device}"
                    )
            elif isinstance(value, LevelMap) or isinstance(self._constants[i], LevelMap):
                captured, tables = next(maps)
                if value is not captured:
                    raise StaleGraphError(
                        "a new level map: the graph replays the tables of the map it was captured with; call "
                        "adatriton.cuda_graph(...) again with the new map (each capture keeps its own outputs)"
                    )
                if any(a is not b for a, b in zip(_tables(value), tables)):
                    raise StaleGraphError("the level map's tables were rebuilt since the capture; capture again")
            elif value is not self._constants[i] and value != self._constants[i]:
                raise StaleGraphError(f"argument {i}: captured {self._constants[i]!r}, got {value!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat, _ = tree_flatten((args, kwargs), is_leaf=lambda v: isinstance(v, LevelMap))
        self._check(flat)
        with torch.inference_mode():
            for value, static in zip(flat, self._inputs):
                if static is not None and value is not static:
                    static.copy_(value)
            if self.graph is not None:
                self.graph.replay()
            else:
                out_flat, _ = tree_flatten(self._outputs)
                new_flat, _ = tree_flatten(self._run())
                for static, new in zip(out_flat, new_flat):
                    if isinstance(static, Tensor):
                        static.copy_(new)
        return self._outputs


def cuda_graph(fn: Callable[..., Any], *args: Any, warmup: int = 2, **kwargs: Any) -> GraphedForward:
    """Capture ``fn(*args, **kwargs)`` (a converted model in eval mode, or its ``forward_features``) as a CUDA graph
    and return a callable that replays it (:class:`GraphedForward`), for inference with a reused level map.

    ``warmup`` eager forwards on a side stream first build whatever the level map still lacks (its index tables;
    the first eager call builds them, with syncs that a capture cannot contain) and compile Triton's kernels, then
    one forward is captured. The callable takes arguments like ``fn``'s: tensors are copied into the captured
    inputs, the level map must be the same :class:`~adatriton.LevelMap` object (a new map raises
    :class:`StaleGraphError`: capture again), and the outputs are the same tensors at every call.

    Without a CUDA tensor among the arguments (on the CPU) nothing is captured: each call runs ``fn`` eagerly and
    copies the result into the same output tensors, with the same checks, so code written for the graph runs
    unchanged (and tests can check it).

    Args:
        fn: the model (or any callable) to capture; in eval mode, no gradient is recorded (``inference_mode``).
        *args, **kwargs: its arguments for the capture: the example inputs, and the level map as a ``LevelMap``.
        warmup: eager forwards before the capture (at least 1 on CUDA).

    Returns:
        The :class:`GraphedForward`.

    Raises:
        TypeError: no ``LevelMap`` among the arguments (a levels tensor would build a new map, and its tables, at
            every call: nothing a graph can replay).
    """
    flat, _ = tree_flatten((args, kwargs), is_leaf=lambda v: isinstance(v, LevelMap))
    if not any(isinstance(v, LevelMap) for v in flat):
        raise TypeError(
            "cuda_graph needs the level map as an adatriton.LevelMap (reused across calls); a levels tensor builds a "
            "new map and its index tables at every call, which a CUDA graph cannot replay"
        )
    return GraphedForward(fn, args, kwargs, warmup)
