"""Any CNN: conversion by rewriting the model's ``torch.fx`` graph (docs/semantics.md §8).

:func:`convert_graph` traces a model symbolically, runs the traced graph once on ``meta`` tensors to learn every
value's output stride, and writes a new graph in which

- everything up to the first layer that would take the stride past the finest output stride ``a`` runs as the dense
  network (the original nodes, unchanged);
- the dense features at stride ``a`` enter a :class:`~adatriton.core.multires.MultiResMap` (one
  :class:`~adatriton.core.levelmap.LevelMap` per call), and from there every node runs on the map: a stride-2 layer
  is an adaptive downsampling step (a conv computes the survivors, top-left; a 2x2 max / average pool merges by
  the max / the mean), every spatial layer gets the tap spacing it has in the dense dilated network, per-element
  ops act on the element values, global pooling weighs every element by its area;
- where a dense tensor is needed (a head, an upsampling decoder, an op the converter does not know) the map is
  densified on the finest grid, once per value, and the rest of the graph runs as the dense network at stride
  ``a`` (the dilated one), so a uniform level-0 map gives exactly that network.

The converted module (:class:`AdaptiveGraphModule`) holds the model's own children, so parameters and state_dict
keys are shared, and its ``forward(*inputs, levels)`` is Python code generated from the rewritten graph: readable
(``print(net.code)``), differentiable, and traceable by ``torch.compile`` without graph breaks once the level map's
index tables exist.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import linecache
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .. import ops as AF
from ..core.levelmap import LevelMap, LevelMapError
from ..core.multires import MultiResMap
from ..nn.modules import ADAPTIVE_MODULES, DeformableConv2d, conv_at
from ..runtime.context import environment_snapshot

__all__ = [
    "AdaptiveGraphModule",
    "GraphConversionError",
    "NodePlan",
    "UNSUPPORTED",
    "check_dense_levels",
    "convert_graph",
    "enter",
    "level_map",
    "map_batch_norm",
    "map_cat",
    "map_conv",
    "map_densify",
    "map_downsample",
    "map_global_pool",
    "map_module",
    "map_size",
    "map_stochastic_depth",
    "on_values",
    "on_vectors",
    "parse_graph_output_stride",
]

#: What ``convert(..., unsupported=)`` does with a layer the rules cannot express on a map (an even kernel with
#: stride 2, a conv without centred padding, a 3x3 pool with stride 2, ...): raise, or run it densely on the
#: densified map.
UNSUPPORTED = ("error", "densify")
#: Side of the square ``meta`` input the graph is planned on when no ``example_input`` is given: a multiple of every
#: output stride up to 256, so every stride is exact.
PLANNING_SIZE = 512

# ---------------------------------------------------------------------------------------------- what is known
#: Modules that act on every element's vector on its own (docs/semantics.md §8: every activation, dropout).
POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.Hardtanh,  # ReLU6 too
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Mish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.PReLU,
    nn.Dropout,
    nn.AlphaDropout,
)
#: Functions (and Tensor methods, by name) of one tensor and constants that act on every entry on its own.
POINTWISE_FUNCTIONS = frozenset(
    f
    for f in (
        F.relu,
        F.relu6,
        F.hardswish,
        F.hardsigmoid,
        F.silu,
        F.gelu,
        F.sigmoid,
        F.tanh,
        F.leaky_relu,
        F.elu,
        F.celu,
        F.selu,
        F.mish,
        F.hardtanh,
        F.softplus,
        F.softsign,
        F.prelu,
        F.dropout,
        F.alpha_dropout,
        torch.relu,
        torch.sigmoid,
        torch.tanh,
        torch.exp,
        torch.neg,
        torch.abs,
        torch.sqrt,
        torch.square,
        torch.clamp,
        torch.clip,
        operator.neg,
    )
)
POINTWISE_METHODS = frozenset(
    ("relu", "sigmoid", "tanh", "exp", "neg", "abs", "sqrt", "square", "clamp", "clamp_min", "clamp_max", "clip")
    + ("clone", "float", "double", "half", "bfloat16", "pow")
)
#: Elementwise binary functions: two maps on one layout, a map and a scalar, or a map and per-sample vectors.
BINARY_FUNCTIONS = frozenset(
    (
        operator.add,
        operator.sub,
        operator.mul,
        operator.truediv,
        torch.add,
        torch.sub,
        torch.mul,
        torch.div,
        torch.true_divide,
        torch.maximum,
        torch.minimum,
    )
)
BINARY_METHODS = frozenset(("add", "sub", "mul", "div", "true_divide", "maximum", "minimum"))
_CAT = frozenset((torch.cat, torch.concat, torch.concatenate))
#: Spatial dims of an NCHW tensor, as a global pool's ``dim`` may name them; channels-last: (1, 2).
_HW_DIMS = {False: ({2, 3}, {-2, -1}), True: ({1, 2}, {-3, -2})}
_TO_LAST, _TO_FIRST = (0, 2, 3, 1), (0, 3, 1, 2)


class GraphConversionError(ValueError):
    """The graph cannot be converted as asked: a layer the rules cannot express (naming the node), a model that
    cannot be traced, or strides that never reach the conversion's output strides."""


@dataclass(frozen=True)
class NodePlan:
    """How one node of the traced graph runs in the converted module.

    Attributes:
        node: the traced node's name (e.g. ``features_7_conv_1_0``).
        target: its module path (``features.7.conv.1.0``) or function / method name.
        op: ``"dense"`` (unchanged), ``"dense-dilated"`` (a dense spatial layer at another stride / dilation),
            ``"dense-identity"`` (a stride-2 pool of the dense dilated network), ``"conv"``, ``"downsample"``,
            ``"identity"``, ``"pointwise"``, ``"batch_norm"``, ``"binary"``, ``"per_sample"``, ``"global_pool"``,
            ``"cat"``, ``"permute"``, ``"shape"``, or ``"densify"`` (its map inputs are densified first, then it
            runs densely; ``note`` says why).
        on_map: runs on a multi-resolution map.
        stage: adaptive downsamplings done before it (maps), else None.
        downsample: performs the next adaptive downsampling step.
        kernel: conv kernel size; tap_spacing: its tap spacing on the finest grid (maps) or its dilation (dense).
        note: why a node densifies, or the variant of a step.
    """

    node: str
    target: str
    op: str
    on_map: bool = False
    stage: int | None = None
    downsample: bool = False
    kernel: int | None = None
    tap_spacing: int | None = None
    note: str = ""


def parse_graph_output_stride(output_stride: str | int) -> tuple[str, int, int]:
    """``"8"`` -> ``("8", 8, 0)``; ``"8->32"`` (or ``"8→32"``, ``"8 -> 32"``) -> ``("8->32", 8, 2)``.

    Any power of two is a dense output stride, and any ``"a->b"`` with powers of two ``a < b`` an adaptive
    conversion with ``K = log2(b / a)`` levels.

    Raises:
        ValueError: anything else.
    """
    if isinstance(output_stride, bool) or not isinstance(output_stride, (str, int)):
        raise ValueError(f"unknown output_stride {output_stride!r}: expected e.g. '8', '16' or '8->32'")
    key = str(output_stride).replace("→", "->").replace(" ", "")
    match = re.fullmatch(r"(\d+)(?:->(\d+))?", key)
    if match is None:
        raise ValueError(f"unknown output_stride {output_stride!r}: expected e.g. '8', '16' or '8->32'")
    a, b = int(match.group(1)), int(match.group(2) or match.group(1))

    def power_of_two(v: int) -> bool:
        return v >= 1 and v & (v - 1) == 0

    if not (power_of_two(a) and power_of_two(b)) or b < a or (match.group(2) is not None and b == a):
        raise ValueError(
            f"unknown output_stride {output_stride!r}: strides must be powers of two, and a->b needs a < b"
        )
    return key, a, int(math.log2(b // a))


# ---------------------------------------------------------------------------------------------- runtime helpers
# The generated forward calls these. fx writes every non-node argument as a Python literal, so functions are never
# arguments: on_values / on_vectors make one named wrapper per function instead.


def level_map(levels: Any, features: Tensor, num_levels: int) -> LevelMap:
    """The validated level map of one call, at the first tensor that enters the adaptive part.

    Args:
        levels: a :class:`LevelMap`, an integer tensor ``(N, Hf, Wf)``, or a callable mapping the finest-grid
            features to one of those.
        features: ``(N, C, Hf, Wf)`` dense features at the finest output stride.
        num_levels: ``K`` of the conversion.
    """
    if levels is None:
        raise ValueError(
            f"this converted model is adaptive (K = {num_levels}): forward(..., levels) needs a level map (LevelMap "
            f"or integer tensor (N, Hf, Wf) on the finest grid, here {tuple(features.shape[:1] + features.shape[2:])})"
        )
    if callable(levels) and not isinstance(levels, (LevelMap, Tensor)):
        levels = levels(features)
    lm = levels if isinstance(levels, LevelMap) else LevelMap(levels, num_levels)
    if lm.num_levels != num_levels:
        raise LevelMapError(f"level map has K={lm.num_levels} levels but this conversion needs K={num_levels}")
    if lm.device != features.device:
        raise LevelMapError(f"level map is on {lm.device} but the input is on {features.device}")
    return lm


def check_dense_levels(levels: Any, features: Tensor | None) -> None:
    """A dense conversion takes ``levels=None`` or an all-zero map of its output grid (``features`` at the output
    stride); anything else raises."""
    if levels is None:
        return
    if features is None:
        raise ValueError("this dense network never reaches its output stride's grid: pass levels=None")
    lm = levels if isinstance(levels, LevelMap) else LevelMap(levels, 0)
    if lm.num_levels != 0:
        lm = LevelMap(lm.levels, 0)  # a dense network has K = 0: every value must be 0
    lm.check_matches(features.shape[0], features.shape[2], features.shape[3], features.device, what="dense output")


def enter(x: Tensor, levels: LevelMap) -> MultiResMap:
    """Dense finest-grid features ``(N, C, Hf, Wf)`` as a stage-0 map (every pixel a level-0 element)."""
    return MultiResMap.from_dense(x, levels)


def map_conv(module: nn.Conv2d, x: MultiResMap, tap_spacing: int, downsample: bool, backend: str | None) -> MultiResMap:
    """``module`` (an ``nn.Conv2d``) on a map: docs/semantics.md §3 with the given tap spacing, through the
    dispatcher; with ``downsample`` it performs the next step and computes only the survivors."""
    return AF.conv2d(x, module.weight, module.bias, tap_spacing, module.groups, downsample, backend)


def map_batch_norm(module: nn.BatchNorm2d, x: MultiResMap) -> MultiResMap:
    """BatchNorm per element (train mode: statistics over the elements, each counting once)."""
    return AF.batch_norm(x, module)


def map_module(module: nn.Module, x: MultiResMap) -> MultiResMap:
    """A per-element module (activation, dropout, channel LayerNorm / Linear) on every element's vector.

    An ``inplace`` module works on a copy of the values: map values may be shared by several maps (an identity
    step), which an in-place update would change behind their backs.
    """
    values = x.values.clone() if getattr(module, "inplace", False) else x.values
    return x.with_values(module(values))


def map_downsample(x: MultiResMap, variant: str) -> MultiResMap:
    """One adaptive downsampling step: ``"top_left"`` (a 1x1 subsampling), ``"max"`` (2x2 max pool) or
    ``"avg"`` (2x2 average pool: the mean of the real sub-elements)."""
    if variant == "avg":
        return AF.avg_downsample(x)
    return AF.downsample(x, variant)


def map_global_pool(x: MultiResMap, kind: str, keepdim: bool, channels_last: bool) -> Tensor:
    """Global average (``"avg"``, area-weighted) or max (``"max"``) pooling of a map, shaped as the dense op
    returns it: ``(N, C, 1, 1)`` / ``(N, 1, 1, C)`` with ``keepdim``, else ``(N, C)``."""
    pooled = AF.global_avg_pool(x) if kind == "avg" else AF.global_max_pool(x)
    if not keepdim:
        return pooled
    n, c = pooled.shape
    return pooled.reshape(n, 1, 1, c) if channels_last else pooled.reshape(n, c, 1, 1)


def map_cat(maps: Sequence[MultiResMap], dim: int) -> MultiResMap:
    """Maps on one layout concatenated along the channels (``dim`` is only checked by the converter)."""
    first = maps[0]
    for other in maps[1:]:
        if not other.layout.same_as(first.layout):
            raise ValueError(f"cannot concatenate maps on different layouts: {first.layout} vs {other.layout}")
    return first.with_values(torch.cat([m.values for m in maps], 1))


def map_size(x: MultiResMap, channels_last: bool, dim: int | None = None) -> torch.Size | int:
    """The shape of the densified map, ``(N, C, Hf, Wf)`` (``(N, Hf, Wf, C)`` channels-last), without
    densifying; ``dim`` picks one entry as ``Tensor.size(dim)`` does."""
    n, h, w = x.layout.levelmap.shape
    size = torch.Size((n, h, w, x.channels) if channels_last else (n, x.channels, h, w))
    return size if dim is None else size[dim]


def map_stochastic_depth(module: StochasticDepth, x: MultiResMap) -> MultiResMap:
    """torchvision's ``StochasticDepth`` on a map: identity in eval mode; in training every sample (``"row"``)
    or the whole batch (``"batch"``) is dropped with probability ``p``, the rest scaled by ``1 / (1 - p)``."""
    if not module.training or module.p == 0.0:
        return x
    survival = 1.0 - module.p
    rows = x.layout.levelmap.batch if module.mode == "row" else 1
    noise = x.values.new_empty(rows, 1).bernoulli_(survival)
    if survival > 0.0:
        noise.div_(survival)
    return AF.per_sample(x, noise)


def map_densify(x: MultiResMap, backend: str | None, channels_last: bool) -> Tensor:
    """The densified map (docs/semantics.md §2): ``(N, C, Hf, Wf)``, or ``(N, Hf, Wf, C)`` for a channels-last
    view."""
    dense = x.densify(backend=backend)
    return dense.permute(*_TO_LAST) if channels_last else dense


def _wrapper_name(prefix: str, fn: Callable) -> str:
    name = re.sub(r"\W", "_", getattr(fn, "__name__", type(fn).__name__)).strip("_") or "fn"
    return f"{prefix}_{name}"


@functools.cache
def on_values(fn: Callable) -> Callable:
    """``fn`` applied to the element values: a function of maps on one layout and constants that returns the map
    of ``fn(values...)`` on that layout (an activation, a binary op of two maps, ``F.layer_norm`` / ``F.linear``
    over the channels of a channels-last map).

    Returns:
        A wrapper, one per ``fn`` (its ``__name__`` is ``on_values_<fn>``, which the generated code shows).
    """

    def apply(*args, **kwargs):
        first = next(a for a in itertools.chain(args, kwargs.values()) if isinstance(a, MultiResMap))
        for a in itertools.chain(args, kwargs.values()):
            if isinstance(a, MultiResMap) and not a.layout.same_as(first.layout):
                raise ValueError(f"maps on different layouts: {first.layout} vs {a.layout}")
        args = [a.values if isinstance(a, MultiResMap) else a for a in args]
        kwargs = {k: v.values if isinstance(v, MultiResMap) else v for k, v in kwargs.items()}
        return first.with_values(fn(*args, **kwargs))

    apply.__name__ = apply.__qualname__ = _wrapper_name("on_values", fn)
    return apply


@functools.cache
def on_vectors(fn: Callable) -> Callable:
    """``fn`` between every element and its sample's vector (:func:`adatriton.ops.per_sample`): ``fn(x, v)`` or,
    ``reflected``, ``fn(v, x)`` with ``v`` a dense tensor without spatial extent (``(N, C, 1, 1)`` from a global
    pool, ``(C, 1, 1)`` per-channel constants, ...), channels-last shapes for a channels-last view.

    Returns:
        A wrapper ``apply(x, v, reflected, channels_last, **kwargs)``, one per ``fn``.
    """

    def apply(x: MultiResMap, v: Tensor, reflected: bool, channels_last: bool, **kwargs):
        v4 = v.reshape((1,) * (4 - v.dim()) + tuple(v.shape))
        rows = v4[:, 0, 0, :] if channels_last else v4[:, :, 0, 0]
        op = functools.partial(fn, **kwargs) if kwargs else fn
        return AF.per_sample(x, rows, op, reflected)

    apply.__name__ = apply.__qualname__ = _wrapper_name("on_vectors", fn)
    return apply


# ---------------------------------------------------------------------------------------------- tracing
class _Tracer(fx.Tracer):
    """torch.fx's tracer with more leaves: torchvision's ``StochasticDepth``, so that its ``training`` flag is read
    when the converted model runs rather than frozen at tracing; adatriton's drop-in modules (a model that
    ``convert`` swapped for the ResNet path), whose forward branches on the input type; and ``leaf_modules``."""

    def __init__(self, leaf_modules: Sequence[type[nn.Module]] = ()):
        super().__init__()
        self.leaf_types = (StochasticDepth, *ADAPTIVE_MODULES.values(), DeformableConv2d, *leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaf_types) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, leaf_modules: Sequence[type[nn.Module]] = ()) -> fx.Graph:
    """The model's symbolically traced graph (targets are module paths in ``model``)."""
    try:
        return _Tracer(leaf_modules).trace(model)
    except Exception as err:  # noqa: BLE001 -- fx raises many types (TraceError, TypeError, ...) for untraceable code
        raise GraphConversionError(
            f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}. Data-dependent Python "
            "control flow must be removed, or the module doing it passed in leaf_modules"
        ) from err


# ---------------------------------------------------------------------------------------------- planning
def _fetch(root: nn.Module, target: str) -> Any:
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _run(root: nn.Module, op: str, target: Any, args: tuple, kwargs: dict) -> Any:
    """Evaluate one node (``op``, ``target``) on concrete (here: meta) arguments, modules resolved in ``root``."""
    if op == "call_module":
        return _fetch(root, target)(*args, **kwargs)
    if op == "call_function":
        return target(*args, **kwargs)
    if op == "call_method":
        return getattr(args[0], target)(*args[1:], **kwargs)
    if op == "get_attr":
        return _fetch(root, target)
    raise ValueError(f"cannot evaluate a {op} node")


def _target_name(node: fx.Node) -> str:
    if node.op in ("call_module", "get_attr", "call_method"):
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return int(value[0]), int(value[0])
    return None


@dataclass
class _Value:
    """A value of the converted graph while it is written.

    Attributes:
        node: its node in the new graph (or a constant).
        kind: ``"map"``, ``"dense"`` (a tensor) or ``"other"``.
        meta: its meta value; for a map the dense surrogate ``(N, C, Hf, Wf)`` of the densified map.
        t: output stride of the node in the original network (spatial tensors), else None.
        stage: maps: adaptive downsamplings done.
        last: maps: a channels-last view (after ``permute(0, 2, 3, 1)``).
    """

    node: Any
    kind: str
    meta: Any
    t: int | None = None
    stage: int = 0
    last: bool = False
    original: bool = False  # dense / other: the very value of the original network (its meta is the original's)


@dataclass
class _Pool:
    kind: str  # "max" / "avg"
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    exotic: str  # return_indices / divisor_override: what the merge rules do not cover, or ""


def _keeps_shape(root: nn.Module, node: fx.Node, args: tuple, kwargs: dict) -> bool:
    """An activation, BatchNorm or dropout on one tensor (its output has the input's shape and dtype)."""
    if not args or not isinstance(args[0], Tensor) or any(isinstance(a, Tensor) for a in (*args[1:], *kwargs.values())):
        return False
    if node.op == "call_module":
        return isinstance(_fetch(root, node.target), (*POINTWISE_MODULES, nn.BatchNorm2d, nn.Identity))
    if node.op == "call_function":
        return node.target in POINTWISE_FUNCTIONS and node.target is not F.prelu
    return False


def _pool_geometry(fn_or_module: Any, args: tuple, kwargs: dict) -> _Pool | None:
    """The geometry of a max / average pool module or function call (after its input), or None."""
    if isinstance(fn_or_module, nn.MaxPool2d):
        m = fn_or_module
        return _Pool(
            "max", _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), _pair(m.dilation),
            "return_indices" if m.return_indices else "",
        )  # fmt: skip
    if isinstance(fn_or_module, nn.AvgPool2d):
        m = fn_or_module
        return _Pool(
            "avg", _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), (1, 1),
            "divisor_override" if m.divisor_override else "",
        )  # fmt: skip
    if fn_or_module is F.max_pool2d:
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        kind = "max"
    elif fn_or_module is F.avg_pool2d:
        names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        kind = "avg"
    else:
        return None
    bound = {**dict(zip(names, args)), **kwargs}
    kernel = _pair(bound["kernel_size"])
    stride = _pair(bound.get("stride") or bound["kernel_size"])
    exotic = "return_indices" if bound.get("return_indices") else ""
    exotic = exotic or ("divisor_override" if bound.get("divisor_override") else "")
    return _Pool(kind, kernel, stride, _pair(bound.get("padding", 0)), _pair(bound.get("dilation", 1)), exotic)


def _conv_problem(m: nn.Conv2d) -> str:
    """Why a conv cannot run on a map (or at another dilation), or ""."""
    k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    if k is None or k[0] != k[1] or k[0] % 2 == 0:
        return f"kernel {tuple(m.kernel_size)} is not odd and square"
    if s is None or s[0] != s[1] or s[0] not in (1, 2):
        return f"stride {tuple(m.stride)} is not 1 or 2 in both directions"
    if d is None or d[0] != d[1]:
        return f"dilation {tuple(m.dilation)} is not square"
    if m.padding_mode != "zeros":
        return f"padding_mode {m.padding_mode!r} is not 'zeros'"
    if m.padding == "same":
        return "" if s[0] == 1 else "padding 'same' with stride 2"
    p = _pair(m.padding)
    if p is None or p != (d[0] * (k[0] // 2),) * 2:
        return f"padding {m.padding} does not centre the kernel (dilation * (k // 2) = {d[0] * (k[0] // 2)})"
    if isinstance(m, DeformableConv2d):
        return "deformable convs are not converted by the graph path"
    return ""


def _permutation(args: tuple) -> tuple[int, ...] | None:
    dims = args[1:]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if len(dims) != 4 or not all(isinstance(d, int) for d in dims):
        return None
    return tuple(d % 4 for d in dims)


def _global_dims(dim: Any, last: bool) -> bool:
    dims = {dim} if isinstance(dim, int) else set(dim) if isinstance(dim, (tuple, list)) else None
    return dims is not None and dims in _HW_DIMS[last]


def _inplace_false(fn: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``fn``'s arguments with ``inplace=False`` (map values are never updated in place)."""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):  # builtins without a signature have no inplace argument
        return args, kwargs
    if not bound.arguments.get("inplace"):
        return args, kwargs
    bound.arguments["inplace"] = False
    return bound.args, bound.kwargs


@dataclass
class _Plan:
    graph: fx.Graph
    nodes: list[NodePlan] = field(default_factory=list)
    entry: str | None = None  # the traced node whose output is the finest grid


class _Converter:
    """Writes the converted graph of ``graph`` (see the module docstring); runs under meta parameters."""

    def __init__(
        self, root: nn.Module, graph: fx.Graph, finest: int, num_levels: int, unsupported: str, inputs: Sequence
    ):
        self.root, self.source = root, graph
        self.a, self.k, self.b = finest, num_levels, finest << num_levels
        self.unsupported = unsupported
        self.inputs = list(inputs)
        image = next((x for x in self.inputs if isinstance(x, Tensor) and x.dim() == 4), None)
        if image is None:
            raise GraphConversionError("the model's inputs hold no image batch (N, C, H, W) to measure strides on")
        self.image = tuple(image.shape[-2:])
        self.g = fx.Graph()
        self.values: dict[fx.Node, _Value] = {}
        self.orig: dict[fx.Node, Any] = {}
        self.plan = _Plan(self.g)
        self.levels_node: fx.Node | None = None
        self.lm_node: fx.Node | None = None
        self.backend_node: fx.Node | None = None
        self.checked = False
        self.finest: tuple[int, int, int] | None = None
        # id(value) -> (value, its map / dense form); holding the value keeps its id from being reused
        self.entered: dict[int, tuple[_Value, _Value]] = {}
        self.densified: dict[int, tuple[_Value, _Value]] = {}

    # ------------------------------------------------------------------ strides
    def stride_of(self, value: Any) -> tuple[int | None, bool]:
        """``(output stride, channels_last)`` of a spatial 4-D tensor; ``(None, False)`` for anything else (a
        pooled ``(N, C, 1, 1)`` vector is not spatial)."""
        if not isinstance(value, Tensor) or value.dim() != 4:
            return None, False
        for last, (h, w) in ((False, value.shape[2:]), (True, value.shape[1:3])):
            if (h, w) == (1, 1):
                continue
            for p in (1 << i for i in range(max(self.image).bit_length() + 1)):
                fits = all(size in (-(-full // p), full // p) for full, size in zip(self.image, (h, w)))
                if fits:
                    return p, last
        return None, False

    def t_of(self, node: fx.Node) -> int | None:
        return self.stride_of(self.orig[node])[0]

    def res(self, v: _Value) -> int | None:
        """The stride a dense value is actually computed at (from its meta shape in the converted graph)."""
        return self.stride_of(v.meta)[0] if v.kind == "dense" else None

    # ------------------------------------------------------------------ bookkeeping
    def record(self, node: fx.Node, op: str, **info) -> None:
        self.plan.nodes.append(NodePlan(node.name, _target_name(node), op, **info))

    def problem(self, node: fx.Node, reason: str) -> None:
        """A layer the rules cannot express: raise, or (``unsupported="densify"``) let it run densely."""
        if self.unsupported == "error":
            raise GraphConversionError(
                f"node {node.name!r} ({node.op} {_target_name(node)}): {reason}. The rules of docs/semantics.md §8 "
                "cannot express it; convert(..., unsupported='densify') runs it densely on the densified map instead"
            )

    def backend(self) -> fx.Node:
        if self.backend_node is None:
            self.backend_node = self.g.get_attr("backend")
        return self.backend_node

    def meta_of(self, struct: Any) -> Any:
        return fx.node.map_aggregate(struct, lambda a: a.meta if isinstance(a, _Value) else a)

    def nodes_of(self, struct: Any) -> Any:
        return fx.node.map_aggregate(struct, lambda a: a.node if isinstance(a, _Value) else a)

    def emit(self, node: fx.Node, op: str, target: Any, args: tuple, kwargs: dict, name: str | None = None) -> _Value:
        """A dense node: created in the new graph and evaluated on meta (unless it is the original node on the
        original values, whose meta value the first pass has)."""
        new = self.g.create_node(op, target, self.nodes_of(args), self.nodes_of(kwargs), name=name or node.name)
        inputs: list[_Value] = []
        fx.node.map_aggregate((args, kwargs), lambda a: inputs.append(a) if isinstance(a, _Value) else None)
        original = (op, target) == (node.op, node.target) and all(v.original for v in inputs)
        if original:
            meta = self.orig[node]
        else:
            try:
                meta = _run(self.root, op, target, self.meta_of(args), self.meta_of(kwargs))
            except Exception as err:  # noqa: BLE001 -- name the node whatever the op raised
                raise GraphConversionError(
                    f"node {node.name!r} ({node.op} {_target_name(node)}) fails in the converted network: "
                    f"{type(err).__name__}: {err}"
                ) from err
        kind = "dense" if isinstance(meta, Tensor) else "other"
        return _Value(new, kind, meta, self.t_of(node) if kind == "dense" else None, original=original)

    def map_value(self, node: fx.Node, new: Any, like: _Value, stage: int | None = None, last: bool | None = None):
        """A map produced by ``node``: its surrogate has the finest grid and the node's channels."""
        last = like.last if last is None else last
        out = self.orig[node]
        channels = out.shape[-1] if last else out.shape[1]
        n, h, w = self.finest
        shape = (n, h, w, channels) if last else (n, channels, h, w)
        meta = torch.empty(shape, dtype=like.meta.dtype, device="meta")
        stage = like.stage if stage is None else stage
        return _Value(new, "map", meta, self.t_of(node), stage, last)

    def call(self, fn: Callable, args: tuple, kwargs: dict | None = None, name: str | None = None) -> fx.Node:
        return self.g.call_function(fn, self.nodes_of(tuple(args)), self.nodes_of(kwargs or {}), name=name)

    def module_node(self, node: fx.Node) -> fx.Node:
        """The node's module as an argument (named apart, so that the call keeps the traced node's name)."""
        return self.g.create_node("get_attr", node.target, name=f"{node.name}_module")

    # ------------------------------------------------------------------ entering and leaving maps
    def enter(self, v: _Value, node: fx.Node) -> _Value:
        """The stage-0 map of dense finest-grid features (one per value)."""
        if id(v) in self.entered:
            return self.entered[id(v)][1]
        n, _, h, w = v.meta.shape
        if self.lm_node is None:
            self.finest = (n, h, w)
            self.plan.entry = next((k.name for k, val in self.values.items() if val is v), None)
            self.lm_node = self.call(level_map, (self.levels_node, v, self.k), name="levelmap")
        elif (n, h, w) != self.finest:
            raise GraphConversionError(
                f"node {node.name!r}: features of grid {(n, h, w)} enter the adaptive part, whose finest grid is "
                f"{self.finest}"
            )
        new = self.call(enter, (v, self.lm_node), name=f"{v.node.name if isinstance(v.node, fx.Node) else 'x'}_map")
        out = _Value(new, "map", v.meta, self.a, 0, False)
        self.entered[id(v)] = (v, out)
        return out

    def densify(self, v: _Value) -> _Value:
        """The dense form of a map on the finest grid (one per value)."""
        if id(v) not in self.densified:
            name = f"{v.node.name}_dense" if isinstance(v.node, fx.Node) else None
            new = self.call(map_densify, (v, self.backend(), v.last), name=name)
            self.densified[id(v)] = (v, _Value(new, "dense", v.meta, v.t))
        return self.densified[id(v)][1]

    def entering(self, node: fx.Node, ins: list[_Value]) -> list[_Value]:
        """Dense inputs of ``node`` that must enter the adaptive part: ``node`` takes the stride past ``a``."""
        t_out = self.t_of(node)
        if self.k == 0 and self.checked:
            return []
        if t_out is None or t_out <= self.a:
            return []
        spatial = [v for v in ins if v.kind == "dense" and v.t is not None]
        at_finest = [v for v in spatial if v.t == self.a and self.res(v) == self.a]
        jumped = [v for v in spatial if v.t < self.a and self.res(v) == v.t]
        if jumped and not at_finest:
            self.problem(node, f"the stride goes from OS{jumped[0].t} to OS{t_out}, past the finest OS{self.a}")
        return at_finest

    # ------------------------------------------------------------------ the pass
    def run(self) -> _Plan:
        self.orig = self.run_original()
        placeholders = [n for n in self.source.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.inputs):
            raise GraphConversionError(
                f"the model takes {len(placeholders)} inputs but {len(self.inputs)} example inputs were given"
            )
        for node in self.source.nodes:
            if node.op == "placeholder":
                default = node.args[0] if node.args else inspect.Parameter.empty
                new = self.g.placeholder(node.target, default_value=default)
                new.meta.update(node.meta)
                meta = self.orig[node]
                kind = "dense" if isinstance(meta, Tensor) else "other"
                self.values[node] = _Value(new, kind, meta, self.t_of(node) if kind == "dense" else None, original=True)
                if node is placeholders[-1]:
                    self.levels_node = self.g.placeholder("levels", default_value=None)
            elif node.op == "get_attr":
                self.values[node] = _Value(self.g.get_attr(node.target), "other", self.orig[node], original=True)
            elif node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: self.values[n])
                out = fx.node.map_aggregate(
                    out, lambda v: self.densify(v) if isinstance(v, _Value) and v.kind == "map" else v
                )
                self.finish()
                self.g.output(self.nodes_of(out))
            else:
                self.values[node] = self.convert(node)
        return self.plan

    def run_original(self) -> dict[fx.Node, Any]:
        env: dict[fx.Node, Any] = {}
        inputs = iter(self.inputs)
        for node in self.source.nodes:
            if node.op == "placeholder":
                env[node] = next(inputs)
            elif node.op != "output":
                args = fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
                if _keeps_shape(self.root, node, args, kwargs):
                    # Shape-preserving ops need no meta kernel (some run as slow Python decompositions on meta).
                    env[node] = torch.empty_like(args[0])
                    continue
                try:
                    env[node] = _run(self.root, node.op, node.target, args, kwargs)
                except Exception as err:  # noqa: BLE001
                    shapes = [tuple(x.shape) if isinstance(x, Tensor) else x for x in self.inputs]
                    raise GraphConversionError(
                        f"the traced model fails on meta inputs of shape {shapes} at node {node.name!r} "
                        f"({_target_name(node)}): {type(err).__name__}: {err}. Pass an example_input the model accepts"
                    ) from err
        return env

    def finish(self) -> None:
        strides = [t for t in (self.t_of(n) for n in self.orig) if t is not None]
        deepest = max(strides, default=1)
        if self.k == 0:
            if self.a > deepest:
                raise GraphConversionError(f"the model reaches output stride {deepest} at most, not {self.a}")
            if not self.checked:  # nothing goes past the output stride: check levels on its last grid, if any
                at_stride = [v for v in self.values.values() if v.kind == "dense" and v.t == self.a == self.res(v)]
                self.call(check_dense_levels, (self.levels_node, at_stride[-1] if at_stride else None))
            return
        if self.b > deepest or self.lm_node is None:
            raise GraphConversionError(
                f"conversion {self.a}->{self.b} needs {self.k} stride-2 layers after OS{self.a}; the model reaches "
                f"output stride {deepest} at most"
                + ("" if self.lm_node is not None else f" and never takes the stride past OS{self.a}")
            )

    def convert(self, node: fx.Node) -> _Value:
        args = fx.node.map_arg(node.args, lambda n: self.values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.values[n])
        ins: list[_Value] = []
        fx.node.map_aggregate((args, kwargs), lambda a: ins.append(a) if isinstance(a, _Value) else None)
        maps = [v for v in ins if v.kind == "map"]
        if maps and any(m.stage == 0 for m in maps):  # a dense finest-grid tensor is a stage-0 map
            join = [v for v in ins if v.kind == "dense" and v.t == self.a and self.res(v) == self.a]
        else:
            join = [] if maps else self.entering(node, ins)
        if join and self.k == 0:  # a dense conversion: check the levels once where the adaptive part would start
            self.call(check_dense_levels, (self.levels_node, join[0]))
            self.checked = True
            join = []
        if join:
            swap = {id(v): self.enter(v, node) for v in join}
            args, kwargs = fx.node.map_aggregate(
                (args, kwargs), lambda a: swap.get(id(a), a) if isinstance(a, _Value) else a
            )
            maps = True
        reason = ""
        if maps:
            out = self.on_map(node, args, kwargs)
            if not isinstance(out, str):
                return out
            reason = out
            args, kwargs = fx.node.map_aggregate(
                (args, kwargs), lambda a: self.densify(a) if isinstance(a, _Value) and a.kind == "map" else a
            )
        return self.dense(node, args, kwargs, reason)

    # ------------------------------------------------------------------ dense nodes
    def dense(self, node: fx.Node, args: tuple, kwargs: dict, densified: str = "") -> _Value:
        """A node on dense values; a spatial layer beyond the finest stride runs as in the dense dilated network.

        ``densified``: why its map inputs were densified (then the record says ``"densify"`` with that note).
        """

        def record(op: str, **info) -> None:
            if densified:
                note = (
                    densified
                    + (f"; then {op}" if op != "dense" else "")
                    + (f" ({info['note']})" if "note" in info else "")
                )
                info = {**info, "note": note}
                op = "densify"
            self.record(node, op, **info)

        module = _fetch(self.root, node.target) if node.op == "call_module" else None
        x = args[0] if args and isinstance(args[0], _Value) else None
        pool = _pool_geometry(module if module is not None else node.target, args[1:], kwargs)
        spatial = isinstance(module, nn.Conv2d) or pool is not None
        if not spatial or x is None or x.kind != "dense" or x.t is None or self.res(x) is None:
            record("dense")
            return self.emit(node, node.op, node.target, args, kwargs)
        t, r = x.t, self.res(x)
        if isinstance(module, nn.Conv2d):
            stride = _pair(module.stride)
            strided = stride is not None and stride[0] == 2 and t >= self.a
            k = _pair(module.kernel_size)
            if not strided and (r == t or k == (1, 1)):
                record("dense")
                return self.emit(node, node.op, node.target, args, kwargs)
            why = _conv_problem(module)
            if why:
                self.problem(node, why)
                record("dense", note=f"as is: {why}")
                return self.emit(node, node.op, node.target, args, kwargs)
            dilation = _pair(module.dilation)[0] * t // r
            record("dense-dilated", kernel=k[0], tap_spacing=dilation)
            conv = _Value(self.module_node(node), "other", module)
            return self.emit(node, "call_function", conv_at, (conv, x, 1, dilation), {})
        strided = pool.stride == (2, 2) and t >= self.a
        if not strided and (r == t or pool.kernel == (1, 1)):
            record("dense")
            return self.emit(node, node.op, node.target, args, kwargs)
        simple = pool.padding == (0, 0) and pool.dilation == (1, 1) and not pool.exotic
        if strided and simple and pool.kernel in ((2, 2), (1, 1)):
            record("dense-identity")  # the dilated network does not merge: the pool disappears
            return _Value(x.node, "dense", x.meta, self.t_of(node))
        self.problem(node, self.pool_problem(pool))
        record("dense", note=f"as is: {self.pool_problem(pool)}")
        return self.emit(node, node.op, node.target, args, kwargs)

    @staticmethod
    def pool_problem(pool: _Pool) -> str:
        return (
            f"{pool.kind} pool with kernel {pool.kernel}, stride {pool.stride}, padding {pool.padding}, dilation "
            f"{pool.dilation}{' and ' + pool.exotic if pool.exotic else ''}: only 2x2 / stride 2 (a merge step) "
            "and 1x1 pools have rules"
        )

    # ------------------------------------------------------------------ map nodes
    def on_map(self, node: fx.Node, args: tuple, kwargs: dict) -> _Value | str:
        """The node on its map inputs, or the reason it needs dense inputs."""
        if node.op == "call_module":
            out = self.module_on_map(node, _fetch(self.root, node.target), args, kwargs)
        elif node.op == "call_function":
            out = self.function_on_map(node, node.target, args, kwargs)
        else:
            out = self.method_on_map(node, node.target, args, kwargs)
        return out

    def first_map(self, args: tuple) -> _Value | None:
        x = args[0] if args else None
        return x if isinstance(x, _Value) and x.kind == "map" else None

    def only_first_is_map(self, args: tuple, kwargs: dict) -> bool:
        rest: list[_Value] = []
        fx.node.map_aggregate((args[1:], kwargs), lambda a: rest.append(a) if isinstance(a, _Value) else None)
        return self.first_map(args) is not None and not any(v.kind == "map" for v in rest)

    def module_on_map(self, node: fx.Node, m: nn.Module, args: tuple, kwargs: dict) -> _Value | str:
        x = self.first_map(args)
        if x is None or len(args) != 1 or kwargs:
            return "a module with a map that is not its only input"
        mod = _Value(self.module_node(node), "other", m)
        if isinstance(m, nn.Conv2d):
            return self.conv(node, m, x, mod)
        if isinstance(m, nn.BatchNorm2d) and not x.last:
            self.record(node, "batch_norm", on_map=True, stage=x.stage)
            return self.map_value(node, self.call(map_batch_norm, (mod, x), name=node.name), x)
        if isinstance(m, POINTWISE_MODULES) or (isinstance(m, (nn.LayerNorm, nn.Linear)) and x.last):
            if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
                return f"LayerNorm over {tuple(m.normalized_shape)}, not over the channels"
            self.record(node, "pointwise", on_map=True, stage=x.stage)
            return self.map_value(node, self.call(map_module, (mod, x), name=node.name), x)
        if isinstance(m, nn.Identity):
            self.record(node, "identity", on_map=True, stage=x.stage)
            return self.map_value(node, x.node, x)
        if isinstance(m, StochasticDepth):
            self.record(node, "per_sample", on_map=True, stage=x.stage, note="stochastic depth")
            return self.map_value(node, self.call(map_stochastic_depth, (mod, x), name=node.name), x)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return self.pool(node, x, _pool_geometry(m, (), {}))
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and not x.last:
            if _pair(m.output_size) == (1, 1) and not getattr(m, "return_indices", False):
                return self.global_pool(node, x, "avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "max", True)
            return f"adaptive pooling to {m.output_size} (only global pooling has a rule)"
        return f"{type(m).__name__} has no rule on maps"

    def conv(self, node: fx.Node, m: nn.Conv2d, x: _Value, mod: _Value) -> _Value | str:
        if x.last:
            return "a conv on a channels-last view"
        why = _conv_problem(m)
        if why:
            self.problem(node, why)
            return f"as is: {why}"
        k, stride, dilation = m.kernel_size[0], m.stride[0], m.dilation[0]
        spacing = dilation * x.t // self.a
        step = stride == 2 and x.t < self.b
        self.check_stage(node, x, step)
        self.record(node, "conv", on_map=True, stage=x.stage, downsample=step, kernel=k, tap_spacing=spacing)
        new = self.call(map_conv, (mod, x, spacing, step, self.backend()), name=node.name)
        return self.map_value(node, new, x, stage=x.stage + int(step))

    def pool(self, node: fx.Node, x: _Value, pool: _Pool) -> _Value | str:
        if x.last:
            return "a pool on a channels-last view"
        simple = pool.padding == (0, 0) and pool.dilation == (1, 1) and not pool.exotic
        if simple and pool.kernel == (1, 1) and pool.stride == (1, 1):
            self.record(node, "identity", on_map=True, stage=x.stage)
            return self.map_value(node, x.node, x)
        if simple and pool.stride == (2, 2) and pool.kernel in ((2, 2), (1, 1)):
            if x.t >= self.b:  # past the coarsest stride: dilated, i.e. no merge at all
                self.record(node, "identity", on_map=True, stage=x.stage, note="stride beyond the coarsest level")
                return self.map_value(node, x.node, x)
            variant = "top_left" if pool.kernel == (1, 1) else pool.kind
            self.check_stage(node, x, True)
            self.record(node, "downsample", on_map=True, stage=x.stage, downsample=True, note=variant)
            new = self.call(map_downsample, (x, variant), name=node.name)
            return self.map_value(node, new, x, stage=x.stage + 1)
        self.problem(node, self.pool_problem(pool))
        return f"as is: {self.pool_problem(pool)}"

    def check_stage(self, node: fx.Node, x: _Value, step: bool) -> None:
        """A step leaves OS ``a * 2^j`` from stage ``j``: anything else means strides the rules cannot follow."""
        if step and self.a << x.stage != x.t:
            raise GraphConversionError(
                f"node {node.name!r} ({_target_name(node)}): a downsampling step at OS{x.t} on a map at stage "
                f"{x.stage} (OS{self.a << x.stage}); strides must double one step at a time after OS{self.a}"
            )

    def global_pool(self, node: fx.Node, x: _Value, kind: str, keepdim: bool) -> _Value:
        self.record(node, "global_pool", on_map=True, stage=x.stage, note=kind)
        new = self.call(map_global_pool, (x, kind, keepdim, x.last), name=node.name)
        meta = self.orig[node]
        return _Value(new, "dense", torch.empty(meta.shape, dtype=x.meta.dtype, device="meta"), None)

    def binary(self, node: fx.Node, fn: Callable, args: tuple, kwargs: dict) -> _Value | str:
        if len(args) != 2 or any(isinstance(v, _Value) and v.kind == "map" for v in kwargs.values()):
            return "a binary op with other than two operands"
        a, b = args
        a_map = isinstance(a, _Value) and a.kind == "map"
        b_map = isinstance(b, _Value) and b.kind == "map"
        if a_map and b_map:
            if a.stage != b.stage or a.last != b.last:
                return f"maps at stages {a.stage} and {b.stage} (different layouts)"
            self.record(node, "binary", on_map=True, stage=a.stage)
            return self.map_value(node, self.call(on_values(fn), (a, b), kwargs, name=node.name), a)
        x, other, reflected = (a, b, False) if a_map else (b, a, True)
        if not isinstance(other, _Value) or not isinstance(other.meta, Tensor):
            if not isinstance(other, (int, float, bool)) and not (
                isinstance(other, _Value) and isinstance(other.meta, (int, float, bool))
            ):
                return f"a map and a {type(getattr(other, 'meta', other)).__name__}"
            self.record(node, "binary", on_map=True, stage=x.stage, note="scalar")
            return self.map_value(node, self.call(on_values(fn), (a, b), kwargs, name=node.name), x)
        v = other.meta
        n, c = x.meta.shape[0], x.meta.shape[-1] if x.last else x.meta.shape[1]
        v4 = (1,) * (4 - v.dim()) + tuple(v.shape) if v.dim() <= 4 else None
        spatial = (v4[1], v4[2]) if x.last else (v4[2], v4[3]) if v4 else None
        batch, chans = (v4[0], v4[3] if x.last else v4[1]) if v4 else (None, None)
        if v4 is None or spatial != (1, 1) or batch not in (1, n) or chans not in (1, c):
            return f"a map and a dense tensor of shape {tuple(v.shape)}"
        self.record(node, "per_sample", on_map=True, stage=x.stage)
        new = self.call(on_vectors(fn), (x, other, reflected, x.last), kwargs, name=node.name)
        return self.map_value(node, new, x)

    def pointwise(self, node: fx.Node, fn: Callable, args: tuple, kwargs: dict) -> _Value:
        x = self.first_map(args)
        args, kwargs = _inplace_false(fn, tuple(args), dict(kwargs))
        self.record(node, "pointwise", on_map=True, stage=x.stage)
        return self.map_value(node, self.call(on_values(fn), args, kwargs, name=node.name), x)

    def function_on_map(self, node: fx.Node, fn: Any, args: tuple, kwargs: dict) -> _Value | str:
        x = self.first_map(args)
        if fn is getattr and x is not None and len(args) == 2:
            attr = args[1]
            if attr == "shape":
                self.record(node, "shape", on_map=True, stage=x.stage)
                new = self.call(map_size, (x, x.last), name=node.name)
                return _Value(new, "other", x.meta.shape)
            if attr == "ndim":
                self.record(node, "shape", on_map=True, stage=x.stage)
                return _Value(4, "other", 4)
            if attr in ("dtype", "device"):
                self.record(node, "shape", on_map=True, stage=x.stage)
                return _Value(self.call(getattr, (x, attr), name=node.name), "other", getattr(x.meta, attr))
            return f"attribute {attr!r} of a map"
        if fn in BINARY_FUNCTIONS:
            return self.binary(node, fn, args, kwargs)
        if fn in POINTWISE_FUNCTIONS and self.only_first_is_map(args, kwargs):
            return self.pointwise(node, fn, args, kwargs)
        if fn in (F.layer_norm, F.linear) and self.only_first_is_map(args, kwargs):
            if not x.last:
                return f"{fn.__name__} over the last dim of an NCHW map (not the channels)"
            shape = args[1] if fn is F.layer_norm and len(args) > 1 else kwargs.get("normalized_shape")
            if fn is F.layer_norm and (not isinstance(shape, (tuple, list)) or len(shape) != 1):
                return f"layer_norm over {shape}, not over the channels"
            return self.pointwise(node, fn, args, kwargs)
        if fn in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d) and x is not None and not x.last:
            size = args[1] if len(args) > 1 else kwargs.get("output_size")
            if _pair(size) == (1, 1) and not kwargs.get("return_indices") and len(args) <= 2:
                return self.global_pool(node, x, "avg" if fn is F.adaptive_avg_pool2d else "max", True)
            return f"adaptive pooling to {size} (only global pooling has a rule)"
        if fn in (torch.mean, torch.amax) and x is not None:
            return self.reduction(node, "avg" if fn is torch.mean else "max", x, args[1:], kwargs)
        pool = _pool_geometry(fn, args[1:], kwargs)
        if pool is not None and x is not None:
            return self.pool(node, x, pool)
        if fn in _CAT:
            return self.cat(node, args, kwargs)
        if fn is torch.permute and x is not None:
            return self.permute(node, x, args)
        return f"{_target_name(node)} has no rule on maps"

    def method_on_map(self, node: fx.Node, name: str, args: tuple, kwargs: dict) -> _Value | str:
        x = self.first_map(args)
        if x is None:
            return f"method {name} of a non-map with map arguments"
        base = name[:-1] if name.endswith("_") and not name.startswith("_") else name  # out of place on maps
        if base == "size":
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            self.record(node, "shape", on_map=True, stage=x.stage)
            meta = x.meta.size() if dim is None else x.meta.size(dim)
            return _Value(self.call(map_size, (x, x.last, dim), name=node.name), "other", meta)
        if base in ("dim", "ndimension") and len(args) == 1:
            self.record(node, "shape", on_map=True, stage=x.stage)
            return _Value(4, "other", 4)
        if base == "contiguous":
            self.record(node, "identity", on_map=True, stage=x.stage)
            return self.map_value(node, x.node, x)
        if base == "permute":
            return self.permute(node, x, args)
        if base in BINARY_METHODS:
            return self.binary(node, getattr(torch.Tensor, base), args, kwargs)
        if base in POINTWISE_METHODS and self.only_first_is_map(args, kwargs):
            return self.pointwise(node, getattr(torch.Tensor, base), args, kwargs)
        if base in ("mean", "amax"):
            return self.reduction(node, "avg" if base == "mean" else "max", x, args[1:], kwargs)
        return f"method {name} has no rule on maps"

    def reduction(self, node: fx.Node, kind: str, x: _Value, rest: tuple, kwargs: dict) -> _Value | str:
        dim = rest[0] if rest else kwargs.get("dim")
        keepdim = rest[1] if len(rest) > 1 else kwargs.get("keepdim", False)
        if not _global_dims(dim, x.last) or len(rest) > 2 or set(kwargs) - {"dim", "keepdim"}:
            return f"a reduction over dims {dim} (only the spatial dims have a rule)"
        return self.global_pool(node, x, kind, bool(keepdim))

    def cat(self, node: fx.Node, args: tuple, kwargs: dict) -> _Value | str:
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if not isinstance(tensors, (tuple, list)) or not tensors:
            return "cat of an unknown sequence"
        if not all(isinstance(v, _Value) and v.kind == "map" for v in tensors):
            return "cat of maps and dense tensors"
        first = tensors[0]
        if any(v.stage != first.stage or v.last != first.last for v in tensors):
            return "cat of maps on different layouts"
        if dim % 4 != (3 if first.last else 1):
            return f"cat along dim {dim} (only the channels have a rule)"
        self.record(node, "cat", on_map=True, stage=first.stage)
        new = self.g.call_function(map_cat, (self.nodes_of(list(tensors)), dim), name=node.name)
        return self.map_value(node, new, first)

    def permute(self, node: fx.Node, x: _Value, args: tuple) -> _Value | str:
        dims = _permutation(args)
        if dims == (_TO_FIRST if x.last else _TO_LAST):
            self.record(node, "permute", on_map=True, stage=x.stage)
            return self.map_value(node, x.node, x, last=not x.last)  # the values stay: a view changes its name
        return f"permute{dims} (only NCHW <-> NHWC views have a rule)"


def _meta_inputs(model: nn.Module, example_input: Any) -> list:
    """Meta versions of the example inputs (float32: counts and strides do not depend on the dtype)."""
    if example_input is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            raise GraphConversionError("the model has no Conv2d to guess its input channels from: pass example_input")
        return [torch.empty(1, conv.in_channels, PLANNING_SIZE, PLANNING_SIZE, device="meta")]
    items = list(example_input) if isinstance(example_input, (tuple, list)) else [example_input]
    return [torch.empty(tuple(x.shape), device="meta") if isinstance(x, Tensor) else x for x in items]


class _PlanRunner(nn.Module):
    """Holds the model so that :func:`torch.func.functional_call` swaps in meta parameters while ``fn`` runs."""

    def __init__(self, root: nn.Module, fn: Callable):
        super().__init__()
        self.root, self.fn = root, fn

    def forward(self, *inputs):
        return self.fn(self.root, list(inputs))


def with_meta_parameters(root: nn.Module, inputs: Sequence, fn: Callable[[nn.Module, list], Any]) -> Any:
    """``fn(root, inputs)`` with every parameter and buffer of ``root`` replaced by a float32 meta tensor, in eval
    mode (restored afterwards), without gradients; ``root``'s own tensors are untouched."""
    state = {}
    for n, t in itertools.chain(root.named_parameters(), root.named_buffers()):
        dtype = torch.float32 if t.is_floating_point() else t.dtype
        state[f"root.{n}"] = torch.empty(t.shape, dtype=dtype, device="meta")
    modes = [(m, m.training) for m in root.modules()]
    root.eval()
    try:
        with torch.no_grad():
            return torch.func.functional_call(_PlanRunner(root, fn), state, tuple(inputs), strict=False)
    finally:
        for m, training in modes:
            m.training = training


def _check_options(unsupported: str) -> None:
    if unsupported not in UNSUPPORTED:
        raise ValueError(f"unsupported must be one of {UNSUPPORTED}, got {unsupported!r}")


# ---------------------------------------------------------------------------------------------- the module
class AdaptiveGraphModule(nn.Module):
    """A CNN converted by rewriting its traced graph (docs/semantics.md §8). Build one with
    :func:`adatriton.convert` (or :func:`convert_graph`).

    The module holds the source model's children (and its own parameters and buffers) under the same names:
    parameters are shared, state_dict keys are the model's, and ``.to()`` / ``.eval()`` act on the same layers.

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace symbolically.
        output_stride: a dense output stride (``"8"``, ``"16"``, ...: the dense network whose strides past it are
            turned into dilation) or an adaptive conversion ``"a->b"`` (``"8->32"``, ``"8->16"``, ...).
        example_input: a tensor (or a tuple, one per input) with the shape of an input the model accepts; only
            shapes are used (the graph is planned on meta tensors). Default: ``(1, C, 512, 512)``, ``C`` the first
            conv's input channels. Its size should be a multiple of the model's coarsest output stride.
        backend: conv backend of the adaptive part (``"torch"``, ``"dense"``, ``"triton"``, ``"auto"``) and of
            densifying; None resolves per call.
        unsupported: ``"error"`` (default): a layer the rules cannot express (an even kernel with stride 2, a conv
            whose padding does not centre it, a 3x3 pool with stride 2, ...) raises :class:`GraphConversionError`
            naming its node; ``"densify"``: it runs densely, as it is, on the densified map.
        leaf_modules: module classes to keep as single calls while tracing (their forward is not traced; on a map
            they are ops without a rule, so the map is densified before them).

    Attributes:
        output_stride, finest_stride, num_levels: ``"8->32"``, 8, 2 (a dense ``"8"``: 8, 8, 0).
        plan: one :class:`NodePlan` per traced node, in order.
        graph: the rewritten ``torch.fx.Graph``; ``code``: the generated forward.
        source_graph: the traced graph of the source model.
    """

    def __init__(
        self,
        model: nn.Module,
        output_stride: str | int,
        example_input: Any = None,
        backend: str | None = None,
        unsupported: str = "error",
        leaf_modules: Sequence[type[nn.Module]] = (),
        *,
        source_graph: fx.Graph | None = None,
    ):
        super().__init__()
        _check_options(unsupported)
        self.output_stride, self.finest_stride, self.num_levels = parse_graph_output_stride(output_stride)
        self.backend, self.unsupported, self.leaf_modules = backend, unsupported, tuple(leaf_modules)
        self.source_graph = trace(model, self.leaf_modules) if source_graph is None else source_graph
        inputs = _meta_inputs(model, example_input)
        self.example_shapes = [tuple(x.shape) if isinstance(x, Tensor) else x for x in inputs]

        def plan_on_meta(root: nn.Module, meta_inputs: list) -> _Plan:
            converter = _Converter(
                root, self.source_graph, self.finest_stride, self.num_levels, unsupported, meta_inputs
            )
            return converter.run()

        plan = with_meta_parameters(model, inputs, plan_on_meta)
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in model._non_persistent_buffers_set)
        self.graph, self.plan, self.entry = plan.graph, tuple(plan.nodes), plan.entry
        self._compile()

    def _compile(self) -> None:
        code = self.graph.python_code(root_module="self")
        self.code = code.src
        key = f"<adatriton graph {self.output_stride} {id(self):x}>"
        linecache.cache[key] = (len(code.src), None, code.src.splitlines(True), key)  # tracebacks show the code
        scope = dict(code.globals)
        exec(compile(code.src, key, "exec"), scope)  # noqa: S102 -- fx's generated forward, as GraphModule does
        self.forward_code = scope["forward"]

    @property
    def adaptive(self) -> bool:
        return self.num_levels > 0

    def extra_repr(self) -> str:
        return f"output_stride={self.output_stride!r}, backend={self.backend!r}, unsupported={self.unsupported!r}"

    def forward(self, *inputs, **kwargs):
        """The source model's forward with a level map: ``net(x, levels)``.

        Args:
            inputs: the model's inputs (an image batch ``(N, C, H, W)``).
            levels: (last positional or keyword) the level map on the finest grid ``(N, Hf, Wf)``: a
                :class:`LevelMap`, an integer tensor, or a callable mapping the finest-grid features to one;
                None (or an all-zero map of the output grid) for a dense output stride.

        Returns:
            What the model returns; maps that reach the output are densified to the finest grid.
        """
        if torch.compiler.is_compiling():
            return self.forward_code(self, *inputs, **kwargs)
        with environment_snapshot():  # each environment variable read once per forward, not once per conv
            return self.forward_code(self, *inputs, **kwargs)

    def with_output_stride(self, output_stride: str | int) -> AdaptiveGraphModule:
        """The same model at another output stride, sharing every parameter (e.g. the dense ``"8"`` network that a
        uniform level-0 map of ``"8->32"`` equals)."""
        return AdaptiveGraphModule(
            self,
            output_stride,
            tuple(torch.empty(s, device="meta") if isinstance(s, tuple) else s for s in self.example_shapes),
            self.backend,
            self.unsupported,
            self.leaf_modules,
            source_graph=self.source_graph,
        )

    def finest_network(self) -> AdaptiveGraphModule:
        """The dense network at the finest output stride (what a uniform level-0 map equals), sharing every
        parameter; built once and kept (outside the module tree, so it adds no state_dict keys)."""
        if not self.adaptive:
            return self
        net = self.__dict__.get("_finest_network")
        if net is None or net.backend != self.backend:
            net = self.with_output_stride(str(self.finest_stride))
            self.__dict__["_finest_network"] = net
        return net

    def adaptive_convs(self) -> list[NodePlan]:
        """The convs that run on maps, in execution order (``target`` is the module path)."""
        return [p for p in self.plan if p.op == "conv" and p.on_map]

    def finest_grid(self, *inputs: Tensor) -> tuple[int, int, int]:
        """``(N, Hf, Wf)`` of the finest grid for inputs of these shapes (any device, meta included)."""
        if self.entry is None:
            raise ValueError(f"output stride {self.output_stride!r} has no adaptive part")
        shapes = [torch.empty(tuple(x.shape), device="meta") if isinstance(x, Tensor) else x for x in inputs]

        def run(root: nn.Module, meta_inputs: list) -> tuple[int, int, int]:
            converter = _Converter(root, self.source_graph, self.finest_stride, 0, self.unsupported, meta_inputs)
            env = converter.run_original()
            node = next(n for n in env if n.name == self.entry)
            n, _, h, w = env[node].shape
            return int(n), int(h), int(w)

        return with_meta_parameters(self, shapes, run)

    def build_tables(self, levels: LevelMap | Tensor) -> LevelMap:
        """Validate ``levels`` and build every index table the adaptive convs and steps read (layouts, downsampling
        sources, tap tables), so that a timed or compiled call does no bookkeeping.

        Returns:
            The :class:`LevelMap` to pass to the network.
        """
        lm = levels if isinstance(levels, LevelMap) else LevelMap(levels, self.num_levels)
        for stage in range(lm.num_levels + 1):
            layout = lm.layout(stage)
            if stage < lm.num_levels:
                layout.downsample_sources("top_left")
                layout.downsample_sources("max")
        for p in self.adaptive_convs():
            if p.kernel > 1:
                lm.layout(p.stage).tap_index(p.kernel, p.tap_spacing, p.downsample)
        return lm


def convert_graph(
    model: nn.Module,
    output_stride: str | int,
    example_input: Any = None,
    backend: str | None = None,
    unsupported: str = "error",
    leaf_modules: Sequence[type[nn.Module]] = (),
) -> AdaptiveGraphModule:
    """Convert any traceable CNN (docs/semantics.md §8); see :class:`AdaptiveGraphModule` for the arguments.

    The source model is not modified; the converted module shares its layers.

    Example:
        >>> net = convert_graph(torchvision.models.mobilenet_v3_large(), "8->32").eval()
        >>> logits = net(images, levels)          # levels: (N, ceil(H/8), ceil(W/8)) in {0, 1, 2}
        >>> print(net.code)                       # the generated forward
    """
    return AdaptiveGraphModule(model, output_stride, example_input, backend, unsupported, leaf_modules)
