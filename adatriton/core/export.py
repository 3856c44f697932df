"""Level maps under ``torch.export`` and ``torch.compile``: errors that say which part cannot be traced and why, and
the element counts of a traced map.

:class:`~adatriton.core.levelmap.LevelMap` is a pytree node (its leaf: the levels tensor; its context: ``K``), so
``torch.export`` takes it as an argument; ``levelmap.py`` registers it with the helpers here, which know nothing of
the class itself (they take the levels tensor and ``K``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor
from torch._dynamo.decorators import mark_unbacked
from torch._subclasses.fake_tensor import is_fake
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode, guard_or_true

__all__ = [
    "LevelMapExportError",
    "TracedCounts",
    "count_sizes",
    "dynamic_counts",
    "explain_export_failure",
    "fits_int32",
    "is_traced",
    "traced_stage_counts",
]


class LevelMapExportError(RuntimeError):
    """``torch.export`` reached a part of the adaptive network it cannot trace; the message says which and why."""


def is_traced(t: Tensor) -> bool:
    """``t`` is a fake tensor of ``torch.export`` or the code runs under ``torch.compile``."""
    return is_fake(t) or torch.compiler.is_compiling()


_EXPORT_WHY = {
    "_validate_and_count": (
        "validating a level map given as a tensor reads its values (data-dependent); give torch.export a LevelMap "
        "built outside (LevelMap is a pytree node: torch.export.export(net, (x, levels)))"
    ),
    "layout": (
        "building the index tables of the adaptive part (adatriton.Layout: element lists, tap tables) turns the "
        "element counts, data-dependent sizes, into Python ints, which torch.export cannot trace; dense output "
        "strides ('8', '16', '32') export"
    ),
}


def explain_export_failure(method: Callable) -> Callable:
    """Decorate a ``LevelMap`` method: where tracing meets a data-dependent size, raise :class:`LevelMapExportError`
    saying which part and why instead of the tracer's guard error."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except GuardOnDataDependentSymNode as err:
            where = f" (stage {args[0]})" if args else ""
            first = str(err).strip().splitlines()[0]
            raise LevelMapExportError(
                f"torch.export cannot trace LevelMap.{method.__name__}{where}: {_EXPORT_WHY[method.__name__]}. "
                f"The tracer said: {first}. See docs/api.md, 'torch.export'."
            ) from err

    return wrapper


def traced_stage_counts(levels: Tensor, num_levels: int) -> list[list]:
    """What ``LevelMap._validate_and_count`` returns, for a traced map, without the checks (they read values): the
    element counts as unbacked symbols, one per level and stage, each between 0 and the cells of its grid; stage 0
    has every finest cell."""
    counts = []
    for j in range(num_levels + 1):
        row = []
        for v in range(j + 1):
            top_left = levels[:, :: 1 << v, :: 1 << v]
            if j == 0:
                row.append(top_left.numel())
                continue
            count = (top_left == v if v < j else top_left >= j).sum().item()
            torch._check(count >= 0)
            torch._check(count <= top_left.numel())
            row.append(count)
        counts.append(row)
    return counts


class TracedCounts:
    """The counts of a traced map, made when a layout first asks for them: inside the traced forward, where the
    symbols bind to the graph (the pytree is unflattened before tracing starts)."""

    def __init__(self, levels: Tensor, num_levels: int):
        self.levels, self.num_levels, self.rows = levels, num_levels, None

    def __getitem__(self, stage: int) -> list:
        if self.rows is None:
            # torch.onnx.export is an inference export whatever the grad mode: eval-mode BatchNorms run without the
            # guard there too (adatriton.ops.batch_norm under tracing), so the plain call needs no no_grad block.
            if torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export():
                raise LevelMapExportError(
                    "torch.export of the adaptive part needs torch.no_grad() (an inference export): with gradients "
                    "enabled its BatchNorms run as the native op, which guards on the data-dependent element count "
                    "(is it 0?); under no_grad they are folded into the convs. See docs/api.md, 'torch.export'."
                )
            self.rows = traced_stage_counts(self.levels, self.num_levels)
        return self.rows[stage]


def count_sizes(counts: list[list[int]]) -> list[list[Tensor | int]]:
    """Carriers of a level map's element counts for ``torch.compile``: per stage ``j >= 1`` and level, an empty
    ``(count, 0)`` tensor whose first size is marked unbacked; stage 0 (every finest cell) stays an int.

    Dynamo specializes on Python ints it reads from an object (one graph per map), but takes the sizes of tensors it
    reads as inputs: marked unbacked, a count is a symbol, never guarded on (not even 0 or 1), so one graph serves
    every map of a grid shape. Zero elements wide, they hold no memory.
    """
    sizes: list[list[Tensor | int]] = [list(counts[0])]
    for row in counts[1:]:
        carriers = []
        for count in row:
            carrier = torch.empty((count, 0))
            mark_unbacked(carrier, 0)
            carriers.append(carrier)
        sizes.append(carriers)
    return sizes


def dynamic_counts(sizes: list[Tensor | int]) -> list:
    """The counts of one stage from :func:`count_sizes`: symbols while Dynamo traces, else ints."""
    return [size if isinstance(size, int) else size.shape[0] for size in sizes]


#: Largest element count whose index tables (and the sentinel ``E``) fit int32.
INT32_ELEMENTS = 2**31 - 1


def fits_int32(count: int | torch.SymInt) -> bool:
    """Whether ``count`` elements (and the sentinel index ``count``) fit int32 indices.

    A traced count (an unbacked symbol of a compiled graph over dynamic maps) cannot be compared on the host: the
    answer is yes (``guard_or_true``: no guard, one graph for every map), with the comparison handed to the graph as
    a check (``torch._check``) where the tracer keeps it.
    """
    fits = count < INT32_ELEMENTS
    if not isinstance(fits, bool):  # a symbolic comparison
        torch._check(fits, lambda: "more elements than int32 index tables hold")
    return guard_or_true(fits)
