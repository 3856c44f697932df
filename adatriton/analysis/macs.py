"""Multiply-add counts (docs/semantics.md §5): what every conv and linear layer computes, per layer and in total.

A conv costs ``k * k * Cin/groups * Cout`` multiply-adds (MAs) per output element it computes, a linear layer
``in_features * out_features`` per output row; nothing else counts (as in ptflops, whose figures the paper quotes;
``torch.utils.flop_counter`` counts the same convs and matmuls at 2 FLOPs per MA). Index bookkeeping is not an MA
and is timed separately by the bench.

:func:`count_macs` never computes a feature: it runs the dense parts on ``meta`` tensors (shapes only, no memory,
also for a 1x3x1024x2048 ResNet-101) and counts the adaptive convs analytically from the level map. An adaptive
conv at stage ``j`` (``j`` downsamplings done) computes one output per element of that stage, ``E_j`` in total
(:meth:`LevelMap.element_counts`); a conv that performs downsampling step ``j + 1`` (a ResNet bottleneck's ``conv2``
and strided shortcut) computes only the survivors, ``E_{j+1}``. So an adaptive model's count is affine in the
element counts::

    MAs(L) = fixed + sum_j per_element[j] * E_j(L)

with ``fixed`` the dense convs' MAs (stem, dense layers, heads) and ``per_element[j]`` the MAs per element of every
conv whose outputs are stage-``j`` elements; :class:`MacCount` carries both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn
from torchvision.models import ResNet

from ..core.levelmap import LevelMap, LevelMapError
from ..models.d2net import D2Net
from ..models.graph import AdaptiveGraphModule, conv_calls
from ..runtime.extras import require

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMNS",
    "MacCount",
    "conv_macs",
    "count_macs",
    "stage_element_counts",
]

#: Columns of :attr:`MacCount.rows`.
COLUMNS = (
    "layer",
    "op",
    "part",
    "adaptive",
    "stage",
    "downsample",
    "cin",
    "cout",
    "k",
    "spacing",
    "groups",
    "elements",
    "MAs",
)


def conv_macs(kernel: int, cin: int, cout: int, groups: int, elements: int) -> int:
    """Multiply-adds of a ``kernel x kernel`` conv computing ``elements`` outputs: ``k*k*Cin/groups*Cout`` each."""
    return int(kernel) * int(kernel) * (int(cin) // int(groups)) * int(cout) * int(elements)


@dataclass(frozen=True)
class MacCount:
    """Multiply-adds of one model on one input (and level map).

    Attributes:
        rows: one row per conv / linear call in execution order, columns :data:`COLUMNS`: ``layer`` (parameter
            name without ``.weight``), ``op`` (``"conv"`` / ``"linear"``), ``part`` (``"backbone"`` / ``"head"``),
            ``adaptive``, ``stage`` (downsamplings done before an adaptive conv; -1 for dense ones), ``downsample``
            (computes only the survivors of the next step), ``cin``, ``cout``, ``k``, ``spacing`` (dilation, or tap
            spacing on the finest grid), ``groups``, ``elements`` (output positions computed, whole batch),
            ``MAs``.
        fixed: MAs that do not depend on the level map (the dense convs and linear layers).
        per_element: ``per_element[j]``: MAs per stage-``j`` element (empty for dense models).
        elements: ``E_j``, elements per stage of the level map counted (empty for dense models).
    """

    rows: pd.DataFrame
    fixed: int
    per_element: tuple[int, ...] = ()
    elements: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        """MAs of the whole model (backbone and heads)."""
        return int(self.rows["MAs"].sum())

    @property
    def backbone(self) -> int:
        """MAs of the backbone (ResNet stem .. ``layer4``; for an unknown model without a ``backbone``, all)."""
        return int(self.rows.loc[self.rows["part"] == "backbone", "MAs"].sum())

    @property
    def head(self) -> int:
        """MAs of the heads (classifier ``fc``, segmentation heads)."""
        return self.total - self.backbone

    def at(self, elements: Sequence[int]) -> int:
        """The model's MAs for another level map, given its elements per stage ``E_0 .. E_K``
        (``[sum(lm.element_counts(j)) for j in range(K + 1)]``, or :func:`stage_element_counts`)."""
        if len(elements) != len(self.per_element):
            raise ValueError(f"need {len(self.per_element)} element counts (one per stage), got {len(elements)}")
        return self.fixed + sum(c * int(e) for c, e in zip(self.per_element, elements))


def stage_element_counts(levels: LevelMap | Tensor, num_levels: int | str | None = None) -> list[int]:
    """Elements after each number of downsamplings, ``E_0 .. E_K`` (docs/semantics.md §4): what the
    :class:`LevelMap` counted when it was built, without building any index table.

    Args:
        levels: a :class:`LevelMap` or an integer tensor ``(N, Hf, Wf)`` with values (not on ``meta``).
        num_levels: ``K`` (or a conversion name); taken from a :class:`LevelMap`, required for a tensor.

    Returns:
        ``[E_0, ..., E_K]``.
    """
    if not isinstance(levels, LevelMap):
        if num_levels is None:
            raise ValueError("num_levels is needed with a level tensor")
        levels = LevelMap(_values(levels).cpu(), num_levels)  # validates docs/semantics.md §1 (range, alignment)
    return [sum(levels.element_counts(j)) for j in range(levels.num_levels + 1)]


def _values(levels: Tensor) -> Tensor:
    if not isinstance(levels, Tensor):
        raise LevelMapError(f"levels must be a LevelMap or an integer tensor, got {type(levels).__name__}")
    if levels.device.type == "meta":
        raise LevelMapError("count_macs needs the level map's values: pass it on the CPU or GPU, not on meta")
    return levels


#: Children whose convs and linear layers count as the head of a model converted by the graph path.
GRAPH_HEADS = ("classifier", "fc", "head", "heads", "aux_classifier")


def _part_of(model: nn.Module, name: str) -> str:
    """``"head"`` or ``"backbone"``: the part of the model a conv / linear layer belongs to."""
    if isinstance(model, AdaptiveGraphModule):
        return "head" if name.split(".")[0] in GRAPH_HEADS else "backbone"
    if isinstance(getattr(model, "backbone", None), nn.Module):
        return "backbone" if name.startswith("backbone.") else "head"
    if isinstance(model, ResNet):
        return "head" if name.startswith("fc") else "backbone"
    return "backbone"


def _elements(model: AdaptiveGraphModule, x: Tensor, levels) -> tuple[int, ...]:
    """``E_0 .. E_K`` of the level map an adaptive graph is counted on, checked against the input's finest grid."""
    lm = _adaptive_level_map(model, levels)
    grid = model.finest_grid(x)
    if lm.shape != grid:
        raise LevelMapError(f"level map has shape {lm.shape} but the finest grid of this input is {grid}")
    return tuple(stage_element_counts(lm))


def _adaptive_level_map(net: nn.Module, levels) -> LevelMap:
    """The level map an adaptive network (``output_stride``, ``finest_stride``, ``num_levels``) is counted on."""
    if callable(levels) and not isinstance(levels, (LevelMap, Tensor)):
        raise TypeError("count_macs needs the level map itself, not a callable that predicts it")
    if isinstance(levels, Tensor):
        levels = _values(levels).cpu()
    return LevelMap.checked(
        levels,
        net.num_levels,
        f"output_stride {net.output_stride!r}",
        call="count_macs(model, x, levels)",
        grid=f"the OS{net.finest_stride} grid",
    )


def count_macs(model: nn.Module, x: Tensor, levels: LevelMap | Tensor | None = None) -> MacCount:
    """Multiply-adds of ``model`` on an input of ``x``'s shape (docs/semantics.md §5), per layer and in total.

    Nothing is computed on ``x``: only its shape matters, so it may be a ``meta`` tensor
    (``torch.empty(1, 3, 1024, 2048, device="meta")``). Dense parts run on meta copies of the weights; the model's
    own weights are untouched.

    Args:
        model: a model :func:`adatriton.convert` returns (dense or adaptive ResNet, segmentation model, a model
            converted by the graph path, whose head is its ``classifier`` / ``fc`` / ``head`` children), a
            :class:`~adatriton.models.d2net.D2Net` trunk (dense or ``"1->8"``), or a plain module (e.g. a torchvision
            ResNet or segmentation model; then ``levels`` must be None).
        x: input batch ``(N, 3, H, W)``, any device including ``meta``.
        levels: level map of an adaptive model on its finest grid (``LevelMap`` or integer tensor ``(N, Hf, Wf)``
            with values, so not on meta; it is small). Ignored by dense output strides.

    Returns:
        :class:`MacCount`: ``rows`` (one per conv / linear call), ``total``, ``backbone``, ``head``, and the
        affine form ``fixed + sum_j per_element[j] * E_j`` of an adaptive model's count.

    Raises:
        ValueError: an adaptive model without a level map; LevelMapError: a map of the wrong shape or K.

    Example:
        >>> net = adatriton.convert(torchvision.models.resnet101(), "16")
        >>> adatriton.count_macs(net, torch.empty(1, 3, 1024, 2048, device="meta")).backbone   # ~4.15e11
    """
    pd = require("pandas")  # lazily: pandas is the bench extra's, and import adatriton stays light

    if isinstance(model, D2Net):
        model = model.graph()  # the network its forwards run
    adaptive = isinstance(model, AdaptiveGraphModule) and model.adaptive
    if levels is not None and not isinstance(model, AdaptiveGraphModule):
        raise TypeError(
            f"count_macs counts adaptive models converted by adatriton.convert; got a {type(model).__name__} with a "
            "level map. For other adaptive models, adatriton.explain(model, x, levels) lists every conv's MAs by "
            "running the model"
        )
    counts = _elements(model, x, levels) if adaptive else ()
    rows = conv_calls(model, [x], counts)
    for r in rows:
        r["part"] = _part_of(model, r["layer"])
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "MAs"])
    per_output = pd.Series([r["per_output"] for r in rows], dtype="int64")
    table["MAs"] = per_output * table["elements"].astype("int64")
    per_element = [0] * len(counts)
    for r in rows:
        if r["adaptive"]:
            per_element[r["stage"] + int(r["downsample"])] += r["per_output"]  # the stage of its outputs
    fixed = int(table.loc[~table["adaptive"].astype(bool), "MAs"].sum())
    return MacCount(table, fixed, tuple(per_element), counts)
