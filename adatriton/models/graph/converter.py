"""The graph converter: traces a model, runs the traced graph on ``meta`` tensors to learn every value's output
stride, and writes the converted graph node by node (docs/semantics.md §8; the module docstring of
:mod:`adatriton.models.graph`)."""

from __future__ import annotations

import collections
import dataclasses
import inspect
import itertools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ...nn.hooks import hooks_silenced
from ...nn.modules import ADAPTIVE_MODULES, DeformableConv2d
from ...ops import softpool2d
from .fusion import fuse_conv_groups
from .mapops import (
    check_dense_levels,
    enter,
    level_map,
    map_batch_norm,
    map_cat,
    map_conv,
    map_conv_at,
    map_conv_bn_act,
    map_densify,
    map_downsample,
    map_global_pool,
    map_identity,
    map_module,
    map_size,
    map_stochastic_depth,
    module_enter,
    module_exit,
    on_values,
    on_vectors,
    with_module_hooks,
)
from .rules import (
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    CAT_FUNCTIONS,
    PLANNING_SIZE,
    POINTWISE_FUNCTIONS,
    POINTWISE_METHODS,
    POINTWISE_MODULES,
    SOFTPOOL_FROM_STRIDE,
    TO_FIRST,
    TO_LAST,
    GraphConversionError,
    NodePlan,
    PoolGeometry,
    conv_problem,
    fetch,
    global_dims,
    grid_problem,
    inplace_false,
    keeps_shape,
    pair,
    permutation,
    pool_geometry,
    upsampling,
)

__all__ = ["Converter", "Plan", "planning_inputs", "run_original", "trace", "with_meta_parameters"]


class _Tracer(fx.Tracer):
    """torch.fx's tracer with more leaves: torchvision's ``StochasticDepth``, so that its ``training`` flag is read
    when the converted model runs rather than frozen at tracing; adatriton's drop-in modules (``swap_modules``, or
    ``convert``'s ``filter_fn``), whose forward branches on the input type; ``leaf_modules``; and the
    modules at the paths ``heads``."""

    def __init__(self, leaf_modules: Sequence[type[nn.Module]] = (), heads: Sequence[str] = ()):
        super().__init__()
        self.leaf_types = (StochasticDepth, *ADAPTIVE_MODULES.values(), DeformableConv2d, *leaf_modules)
        self.heads = frozenset(heads)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, self.leaf_types)
            or module_qualified_name in self.heads
            or super().is_leaf_module(m, module_qualified_name)
        )


def trace(model: nn.Module, leaf_modules: Sequence[type[nn.Module]] = (), heads: Sequence[str] = ()) -> fx.Graph:
    """The model's symbolically traced graph (targets are module paths in ``model``)."""
    for path in heads:
        try:
            model.get_submodule(path)
        except AttributeError as err:
            raise GraphConversionError(f"head {path!r} is not a module of {type(model).__name__}") from err
    try:
        return _Tracer(leaf_modules, heads).trace(model)
    except Exception as err:  # noqa: BLE001 -- fx raises many types (TraceError, TypeError, ...) for untraceable code
        raise GraphConversionError(
            f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}. Data-dependent Python "
            "control flow must be removed, or the module doing it passed in leaf_modules"
        ) from err


def _run(root: nn.Module, op: str, target: Any, args: tuple, kwargs: dict) -> Any:
    """Evaluate one node (``op``, ``target``) on concrete (here: meta) arguments, modules resolved in ``root``."""
    if op == "call_module":
        return fetch(root, target)(*args, **kwargs)
    if op == "call_function":
        return target(*args, **kwargs)
    if op == "call_method":
        return getattr(args[0], target)(*args[1:], **kwargs)
    if op == "get_attr":
        return fetch(root, target)
    raise ValueError(f"cannot evaluate a {op} node")


def _target_name(node: fx.Node) -> str:
    if node.op in ("call_module", "get_attr", "call_method"):
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


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


@dataclass(frozen=True)
class _Scope:
    """The traced forward of a container module: its nodes run from ``first`` to ``last`` (whose value is its only
    output), reading one value from outside, ``input``; ``parents``: the enclosing such scopes, innermost first."""

    path: str
    input: fx.Node
    first: fx.Node
    last: fx.Node
    parents: tuple[str, ...]


def _module_stack(node: fx.Node) -> list[str]:
    """The paths of the modules whose forward the node was traced in, outermost first (fx's ``nn_module_stack``),
    without the node's own module."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
    return [p for p in paths if p and not (node.op == "call_module" and p == node.target)]


def container_scopes(graph: fx.Graph) -> dict[str, _Scope]:
    """The container modules whose hooks the converted forward runs: those whose traced nodes are contiguous, read
    one value from outside (besides parameters) and give one value to the rest, their last node's (the forward of
    a block or a ``Sequential`` on one tensor). Others (several inputs or outputs) are not hooked."""
    order = [n for n in graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    members: dict[str, list[fx.Node]] = {}
    for n in order:
        for path in _module_stack(n):
            members.setdefault(path, []).append(n)
    position = {n: i for i, n in enumerate(order)}
    found: dict[str, tuple[fx.Node, fx.Node, fx.Node]] = {}
    for path, nodes in members.items():
        first, last = nodes[0], nodes[-1]
        if position[last] - position[first] + 1 != len(nodes):
            continue
        inside = set(nodes)
        outside_inputs = {i for n in nodes for i in n.all_input_nodes if i not in inside and i.op != "get_attr"}
        outputs = [n for n in nodes if any(u not in inside for u in n.users)]
        if len(outside_inputs) == 1 and outputs == [last]:
            found[path] = (next(iter(outside_inputs)), first, last)
    scopes = {}
    for path, (inp, first, last) in found.items():
        stack = _module_stack(first)
        parents = tuple(p for p in reversed(stack[: stack.index(path)]) if p in found)
        scopes[path] = _Scope(path, inp, first, last, parents)
    return scopes


@dataclass
class Plan:
    graph: fx.Graph
    nodes: list[NodePlan] = field(default_factory=list)
    entry: str | None = None  # the traced node whose output is the finest grid
    fused: int = 0  # conv groups fused into one map_conv_bn_act call (adatriton.models.graph.fusion)


class Converter:
    """Writes the converted graph of ``graph`` (see the module docstring); runs under meta parameters."""

    def __init__(
        self,
        root: nn.Module,
        graph: fx.Graph,
        finest: int,
        num_levels: int,
        unsupported: str,
        inputs: Sequence,
        heads: Sequence[str] = (),
        downsampling: str = "top_left",
        map_outputs: bool = False,
    ):
        self.root, self.source, self.heads = root, graph, frozenset(heads)
        self.downsampling, self.map_outputs = downsampling, map_outputs
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
        self.plan = Plan(self.g)
        self.levels_node: fx.Node | None = None
        self.lm_node: fx.Node | None = None
        self.backend_node: fx.Node | None = None
        self.checked = False
        self.smoothed: list[str] = []  # non-nearest upsamplings of densified values (see :meth:`upsample`)
        self.jump: tuple[fx.Node, int, int] | None = None  # the first layer that jumps past OS a: (node, from, to)
        self.finest: tuple[int, int, int] | None = None
        # id(value) -> (value, its map / dense form); holding the value keeps its id from being reused
        self.entered: dict[int, tuple[_Value, _Value]] = {}
        self.densified: dict[int, tuple[_Value, _Value]] = {}
        # Container modules whose hooks run (module_enter / module_exit around their traced nodes): by path, the
        # scopes starting and ending at a node, each node's scopes (innermost first), and per entered scope its
        # input node, the input value its body reads and the module's get_attr node.
        self.scopes: dict[str, _Scope] = {}
        self.scope_starts: dict[fx.Node, list[str]] = {}
        self.scope_ends: dict[fx.Node, list[str]] = {}
        self.node_scopes: dict[fx.Node, tuple[str, ...]] = {}
        self.scope_inputs: dict[str, tuple[fx.Node, _Value, fx.Node]] = {}

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

    def problem(self, node: fx.Node, reason: str, fix: str = "") -> None:
        """A layer the rules cannot express: raise, or (``unsupported="densify"``) let it run densely.

        ``fix``: what the user can do, where the default advice (``unsupported='densify'``) is not it."""
        if self.unsupported == "error":
            raise GraphConversionError(
                f"node {node.name!r} ({node.op} {_target_name(node)}): {reason}. The rules of docs/semantics.md §8 "
                "cannot express it; "
                + (fix or "convert(..., unsupported='densify') runs it densely on the densified map instead")
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
        t = self.t_of(node)
        if t is None:  # 1x1 features show no output stride: only a too small example input gets here
            raise GraphConversionError(
                f"node {node.name!r} ({_target_name(node)}): its features {tuple(out.shape)} on the example input "
                "show no output stride"
            )
        return _Value(new, "map", meta, t, stage, last)

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
            self.plan.entry = next((k.name for k, val in self.values.items() if val is v), None) or next(
                (node.name for node, val, _ in self.scope_inputs.values() if val is v), None
            )
            conversion = f"{self.a}->{self.b}"
            self.lm_node = self.call(level_map, (self.levels_node, v, self.k, conversion), name="levelmap")
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
            return self.entering_early(node, ins)
        spatial = [v for v in ins if v.kind == "dense" and v.t is not None]
        at_finest = [v for v in spatial if v.t == self.a and self.res(v) == self.a]
        jumped = [v for v in spatial if v.t < self.a and self.res(v) == v.t]
        if jumped and not at_finest:
            self.jump = self.jump or (node, jumped[0].t, t_out)
            before = (
                f"convert with a finest stride of OS{jumped[0].t} or finer, so that the adaptive part starts before "
                "this layer (if the layers from there on have rules)"
                if jumped[0].t > 1
                else "no conversion starts before this layer (its input is the image)"
            )
            fix = (
                f"{before}; unsupported='densify' runs it densely, which helps only where another layer leaves "
                f"OS{self.a} from a value at OS{self.a}"
            )
            self.problem(
                node, f"the stride goes from OS{jumped[0].t} to OS{t_out} in one layer, past the finest OS{self.a}", fix
            )
        return at_finest

    def entering_early(self, node: fx.Node, ins: list[_Value]) -> list[_Value]:
        """Dense finest-grid inputs of a conv that stays at OS ``a`` but shares its block with a layer that takes the
        same value past ``a`` (a bottleneck's ``conv1`` beside its strided shortcut): the conv runs on the map, as
        the block's other branch does, so that the whole block is on the map (its conv-BN-ReLU one fused launch,
        not three dense ops) and the value enters once. A stage-0 map holds every finest-grid pixel, so the conv
        computes what the dense one does."""
        module = fetch(self.root, node.target) if node.op == "call_module" else None
        if self.k == 0 or not isinstance(module, nn.Conv2d):
            return []
        stack = _module_stack(node)
        if not stack:
            return []
        scopes = self.node_scopes.get(node, ())
        early = []
        for source in node.all_input_nodes:
            v = self.value_of(source, scopes)
            if not any(v is i for i in ins) or v.kind != "dense" or v.t != self.a or self.res(v) != self.a:
                continue
            jumps = [
                u
                for u in source.users
                if u is not node
                and (self.stride_of(self.orig.get(u))[0] or 0) > self.a
                and stack[-1] in _module_stack(u)
            ]
            if jumps:
                early.append(v)
        return early

    # ------------------------------------------------------------------ the pass
    def run(self) -> Plan:
        """Write the converted graph.

        Raises:
            GraphConversionError: the graph cannot be converted as asked; one that says so, and gives the smallest
                size that works, where the cause is an example input too small for the conversion.
        """
        try:
            plan = self.write()
        except Exception as err:
            too_small = self.example_too_small(err)
            if too_small is None:
                raise
            raise too_small from err
        maps = {v.node for v in self.values.values() if v.kind == "map" and isinstance(v.node, fx.Node)}
        maps |= {entered.node for _, entered in self.entered.values()}
        maps |= {v.node for _, v, _ in self.scope_inputs.values() if v.kind == "map"}
        plan.fused = fuse_conv_groups(self.g, self.root, maps, plan.nodes)
        if self.smoothed:
            warnings.warn(
                f"decoder upsampling (node {'; node '.join(self.smoothed)}) reads features that the converted network "
                f"holds densified on the finest grid, i.e. nearest-upsampled from their own output stride: a uniform "
                f"level map equals the original network up to there, not after (docs/semantics.md §8, decoders). "
                "Upsampling in 'nearest' mode keeps a uniform level-K map equal to the original network",
                UserWarning,
                stacklevel=2,
            )
        return plan

    def write(self) -> Plan:
        """:meth:`run` without the check of the example input's size."""
        self.orig = run_original(self.root, self.source, self.inputs)
        self.plan_scopes()
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
                if not self.map_outputs:
                    out = fx.node.map_aggregate(
                        out, lambda v: self.densify(v) if isinstance(v, _Value) and v.kind == "map" else v
                    )
                self.finish()
                out = self.nodes_of(out)
                if isinstance(out, dict):  # fx writes an OrderedDict (torchvision's outputs) as a dict literal
                    out = self.g.call_function(collections.OrderedDict, (out,), name="outputs")
                self.g.output(out)
            else:
                for path in self.scope_starts.get(node, ()):
                    self.enter_scope(path)
                self.values[node] = self.convert(node)
                for path in self.scope_ends.get(node, ()):
                    self.exit_scope(path, node)
        return self.plan

    # ------------------------------------------------------------------ container modules' hooks
    def plan_scopes(self) -> None:
        self.scopes = container_scopes(self.source)
        for path, sc in self.scopes.items():  # outer scopes first (the dict follows the first nodes' stacks)
            self.scope_starts.setdefault(sc.first, []).append(path)
            self.scope_ends.setdefault(sc.last, []).insert(0, path)
        for node in self.source.nodes:
            self.node_scopes[node] = tuple(p for p in reversed(_module_stack(node)) if p in self.scopes)

    def value_of(self, n: fx.Node, scopes: Sequence[str]) -> Any:
        """The value of source node ``n`` as read inside ``scopes`` (innermost first): a scope's input as its body
        reads it (after the module's pre-hooks), else the node's value."""
        for path in scopes:
            entry = self.scope_inputs.get(path)
            if entry is not None and entry[0] is n:
                return entry[1]
        return self.values[n]

    def enter_scope(self, path: str) -> None:
        """The start of a container module's forward: its pre-hooks on its input (:func:`module_enter`)."""
        sc = self.scopes[path]
        v = self.value_of(sc.input, sc.parents)
        if not isinstance(v, _Value) or not isinstance(v.node, fx.Node):
            return
        module = self.g.create_node("get_attr", path, name=f"{path.replace('.', '_')}_container")
        new = self.call(module_enter, (module, v), name=f"{path.replace('.', '_')}_enter")
        self.scope_inputs[path] = (sc.input, dataclasses.replace(v, node=new), module)

    def exit_scope(self, path: str, node: fx.Node) -> None:
        """The end of a container module's forward: its hooks on its input and output (:func:`module_exit`)."""
        entry = self.scope_inputs.get(path)
        out = self.values[node]
        if entry is None or not isinstance(out, _Value) or not isinstance(out.node, fx.Node):
            return
        _, x, module = entry
        new = self.call(module_exit, (module, x, out), name=f"{path.replace('.', '_')}_exit")
        self.values[node] = dataclasses.replace(out, node=new)

    # ------------------------------------------------------------------ a too small example input
    def resized(self, side: int) -> list:
        """The example inputs with the image (the first ``(N, C, H, W)`` tensor) resized to ``side x side``."""
        inputs = list(self.inputs)
        at = next(i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.dim() == 4)
        n, c = inputs[at].shape[:2]
        inputs[at] = torch.empty(n, c, side, side, dtype=inputs[at].dtype, device="meta")
        return inputs

    def on_inputs(self, inputs: Sequence) -> Converter:
        """A converter with this one's options for other example inputs."""
        return Converter(
            self.root,
            self.source,
            self.a,
            self.k,
            self.unsupported,
            inputs,
            self.heads,
            self.downsampling,
            self.map_outputs,
        )

    def strides_at(self, side: int | None) -> dict[str, int | None] | None:
        """The output stride of every node of the original graph on the example inputs with the image resized to
        ``side x side`` (None: as given), or None where the model fails on them."""
        inputs = self.inputs if side is None else self.resized(side)
        other = self.on_inputs(inputs)
        try:
            env = run_original(self.root, self.source, inputs)
        except GraphConversionError:
            return None
        return {node.name: other.stride_of(value)[0] for node, value in env.items()}

    def converts_at(self, side: int) -> bool:
        """The graph converts with the image of the example inputs resized to ``side x side``."""
        try:
            self.on_inputs(self.resized(side)).write()
        except Exception:  # noqa: BLE001 -- at this size the conversion fails, whatever the reason
            return False
        return True

    def example_too_small(self, err: Exception) -> GraphConversionError | None:
        """The error to raise instead of ``err`` where the example input is too small for the conversion: where the
        original graph fails on it, or some node's features no longer show the output stride they have on a
        ``PLANNING_SIZE`` input (1x1 features, or sizes that fit another stride). None where the size is not the
        cause."""
        h, w = self.image
        if min(h, w) >= PLANNING_SIZE:
            return None
        reference = self.strides_at(PLANNING_SIZE)
        if reference is None or not self.converts_at(PLANNING_SIZE):  # not the size: the conversion fails anyway
            return None

        def fits(strides: dict[str, int | None] | None) -> bool:
            return strides is not None and all(strides.get(k) == t for k, t in reference.items() if t is not None)

        given = self.strides_at(None)
        if fits(given):
            return None
        sides = range(1, PLANNING_SIZE + 1)
        side = next((s for s in sides if fits(self.strides_at(s)) and self.converts_at(s)), None)
        if side is None:
            return None
        if given is None:
            why = f"the model fails on it ({err})"
        else:
            name, t = next((k, t) for k, t in reference.items() if t is not None and given.get(k) != t)
            why = f"the features of node {name!r} (output stride {t}) no longer show their output stride"
        deepest = max(t for t in reference.values() if t is not None)
        conversion = f"{self.a}->{self.b}" if self.k else str(self.a)
        return GraphConversionError(
            f"example_input of size {h}x{w} is too small to convert this model to {conversion!r}: {why}. The "
            f"smallest square example_input that works is {side}x{side}; sides that are multiples of the model's "
            f"deepest output stride, {deepest}, keep every stride exact"
        )

    def finish(self) -> None:
        """Check that the conversion found its adaptive part; the error says what the model has instead."""
        named = [(n, t) for n, t in ((n, self.t_of(n)) for n in self.orig) if t is not None]
        deepest, where = max(((t, n.name) for n, t in reversed(named)), default=(1, None), key=lambda p: p[0])
        found = f"the model reaches output stride {deepest} at most" + (f" (node {where!r})" if where else "")
        strides = ", ".join(str(t) for t in sorted({t for _, t in named}))
        if self.k == 0:
            if self.a > deepest:
                raise GraphConversionError(
                    f"dense conversion {str(self.a)!r}: {found}, not {self.a}. Convert to an output stride the model "
                    f"has (its values have the output strides {strides})"
                )
            if not self.checked:  # nothing goes past the output stride: check levels on its last grid, if any
                at_stride = [v for v in self.values.values() if v.kind == "dense" and v.t == self.a == self.res(v)]
                self.call(check_dense_levels, (self.levels_node, at_stride[-1] if at_stride else None))
            return
        if self.lm_node is not None and self.b <= deepest:
            return
        conversion = f"conversion '{self.a}->{self.b}' needs {self.k} stride-2 layers from OS{self.a} to OS{self.b}"
        if self.jump is not None:
            node, t_in, t_out = self.jump
            fix = (
                f"a conversion whose finest stride is one the model has at or before that layer (OS{t_in} or finer), "
                f"if the layers from there on have rules"
                if t_in > 1
                else "none: this model has no value between the image and that layer's output to start from"
            )
            raise GraphConversionError(
                f"{conversion}, but node {node.name!r} ({_target_name(node)}) takes the stride from OS{t_in} to "
                f"OS{t_out} in one layer, past OS{self.a}, so the model has no value at OS{self.a} for the adaptive "
                f"part to start from (its values have the output strides {strides}). Possible conversions: {fix}"
            )
        if self.b > deepest:
            fix = f"'{self.a}->{deepest}'" if deepest > self.a else f"a dense output stride such as '{deepest}'"
            raise GraphConversionError(
                f"{conversion}, but {found}: it has {max(deepest.bit_length() - self.a.bit_length(), 0)} of them (its "
                f"values have the output strides {strides}). Convert to {fix} instead, or to a conversion ending at "
                f"OS{deepest} or before"
            )
        raise GraphConversionError(
            f"{conversion}, but no layer takes the stride past OS{self.a} from a value at OS{self.a}, although {found} "
            f"(its values have the output strides {strides}); the rules of docs/semantics.md §8 find no adaptive part"
        )

    def convert(self, node: fx.Node) -> _Value:
        scopes = self.node_scopes.get(node, ())
        args = fx.node.map_arg(node.args, lambda n: self.value_of(n, scopes))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.value_of(n, scopes))
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
                return self.with_hooks(node, args, out)
            reason = out
            args, kwargs = fx.node.map_aggregate(
                (args, kwargs), lambda a: self.densify(a) if isinstance(a, _Value) and a.kind == "map" else a
            )
        return self.with_hooks(node, args, self.dense(node, args, kwargs, reason))

    # Ops that stand for a module call and run its hooks themselves (mapops); anything else written for a module
    # call gets with_module_hooks (see with_hooks).
    _RUNS_HOOKS = (map_conv, map_batch_norm, map_module, map_stochastic_depth, map_conv_at, map_conv_bn_act)

    def with_hooks(self, node: fx.Node, args: tuple, out: _Value) -> _Value:
        """``out`` written for the traced node such that, for a module call, the module's forward and forward-pre
        hooks run when the converted network runs (on maps they see the maps): a module still called as a module
        runs them itself, as do the module ops of :mod:`~adatriton.models.graph.mapops`; another op written for it
        (a pool that became a downsampling step or a global pool) becomes its :func:`with_module_hooks` wrapper,
        and a module that became the identity a hooked :func:`map_identity`."""
        if node.op != "call_module" or not isinstance(out, _Value):
            return out
        new = out.node
        if isinstance(new, fx.Node) and new.name == node.name:  # written for this node
            if new.op == "call_module" or new.target in self._RUNS_HOOKS:
                return out
            if new.op == "call_function" and new.args and isinstance(args[0], _Value) and new.args[0] is args[0].node:
                with self.g.inserting_before(new):  # the module's get_attr comes before its use
                    module = self.module_node(node)
                new.target = with_module_hooks(new.target)
                new.args = (module, *new.args)
                return out
        x = args[0] if args and isinstance(args[0], _Value) else None
        if x is None or x.node is not new:  # not an identity of its input: nothing stands for the call
            return out
        hooked = self.call(with_module_hooks(map_identity), (self.module_node(node), x), name=node.name)
        return dataclasses.replace(out, node=hooked)

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
                    + (f" ({info['note']})" if info.get("note", densified) != densified else "")
                )
                info = {**info, "note": note}
                op = "densify"
            self.record(node, op, **info)

        module = fetch(self.root, node.target) if node.op == "call_module" else None
        if node.op == "call_module" and node.target in self.heads:
            # Built for the finest grid (a segmentation head of the dilated network): as is, on the densified maps,
            # and its output is at the output stride it is computed at.
            record("dense")
            out = self.emit(node, node.op, node.target, args, kwargs)
            return dataclasses.replace(out, t=self.res(out))
        x = args[0] if args and isinstance(args[0], _Value) else None
        pool = pool_geometry(module if module is not None else node.target, args[1:], kwargs)
        up = upsampling(module if module is not None else node.target, args[1:], kwargs)
        transposed = isinstance(module, nn.ConvTranspose2d) or node.target is F.conv_transpose2d
        spatial = isinstance(module, nn.Conv2d) or pool is not None or up is not None or transposed
        if not spatial or x is None or x.kind != "dense" or x.t is None or self.res(x) is None:
            record("dense")
            return self.emit(node, node.op, node.target, args, kwargs)
        t, r = x.t, self.res(x)
        if up is not None or transposed:
            return self.upsample(node, x, up, args, kwargs, record)
        self.check_grid(node, module, pool, x)
        if isinstance(module, nn.Conv2d):
            stride = pair(module.stride)
            if stride == (2, 2) and t < self.a and self.softpools(t):  # the dense part's subsampling, by SoftPool
                return self.dense_softpool(node, module, args, kwargs, record)
            strided = stride is not None and stride[0] == 2 and t >= self.a
            k = pair(module.kernel_size)
            if not strided and (r == t or k == (1, 1)):
                record("dense")
                return self.emit(node, node.op, node.target, args, kwargs)
            why = conv_problem(module)
            if why:
                self.problem(node, why)
                record("dense", note=f"as is: {why}")
                return self.emit(node, node.op, node.target, args, kwargs)
            dilation = pair(module.dilation)[0] * t // r
            record("dense-dilated", kernel=k[0], tap_spacing=dilation)
            conv = _Value(self.module_node(node), "other", module)
            return self.emit(node, "call_function", map_conv_at, (conv, x, 1, dilation), {})
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

    def dense_softpool(self, node: fx.Node, module: nn.Conv2d, args: tuple, kwargs: dict, record) -> _Value:
        """A stride-2 conv of the dense part with ``downsampling="softpool"``: at stride 1 with its own dilation, a
        1x1 conv after ``softpool2d`` and a larger one before it (:meth:`softpool_step`'s order)."""
        why = conv_problem(module)
        if why:  # as dense() does: raise, or (unsupported="densify") the conv as it is, with its own padding
            self.problem(node, why)
            record("dense", note=f"as is: {why}")
            return self.emit(node, node.op, node.target, args, kwargs)
        record("dense", note="stride 2 as SoftPool and a stride-1 conv")
        x = args[0]
        conv = _Value(self.module_node(node), "other", module)
        dilation = pair(module.dilation)[0]
        if pair(module.kernel_size) == (1, 1):
            pooled = self.emit(node, "call_function", softpool2d, (x,), {}, name=f"{node.name}_softpool")
            return self.emit(node, "call_function", map_conv_at, (conv, pooled, 1, dilation), {})
        out = self.emit(node, "call_function", map_conv_at, (conv, x, 1, dilation), {})
        return self.emit(node, "call_function", softpool2d, (out,), {}, name=f"{node.name}_softpool")

    def upsample(self, node: fx.Node, x: _Value, up: dict | None, args: tuple, kwargs: dict, record) -> _Value:
        """A decoder's upsampling (or transposed conv) of a dense value (docs/semantics.md §8, "Decoders").

        Where the value is computed at its own output stride it runs as in the original network. Where it is held
        finer (a densified map: at ``r < t``), the dense network at stride ``a`` upsamples only below ``r``: to an
        output stride ``t' >= r`` the upsampling is the identity (as a 2x2 pool with stride 2 is there), below it
        a ``scale_factor`` becomes ``r / t'``; a ``size=`` taken from the skip's shape is right as it is."""
        t, r, t_out = x.t, self.res(x), self.t_of(node)
        if r == t or t_out is None:
            record("dense")
            return self.emit(node, node.op, node.target, args, kwargs)
        if up is None:
            why = f"a transposed conv of features at OS{t} that the converted network holds at OS{r} (densified)"
            self.problem(
                node,
                why,
                "upsample with F.interpolate / nn.Upsample (and a conv), which has a rule, or convert to a "
                f"conversion ending at OS{r}",
            )
            record("dense", note=f"as is: {why}")
            return self.emit(node, node.op, node.target, args, kwargs)
        if up["mode"] != "nearest":
            self.smoothed.append(f"{node.name!r} ({up['mode']}, OS{t} held at OS{r})")
        if t_out >= r:
            record("dense-identity", note=f"upsampling to OS{t_out}: the values are at OS{r} already")
            return _Value(x.node, "dense", x.meta, t_out)
        if up["size"] is not None:
            record("dense")
            return self.emit(node, node.op, node.target, args, kwargs)
        factor = r // t_out
        record("dense", note=f"upsampling from OS{r} (densified) to OS{t_out}: scale_factor {factor}")
        up = {**up, "scale_factor": factor, "recompute_scale_factor": None}
        return self.emit(node, "call_function", F.interpolate, (x,), up)

    def check_grid(self, node: fx.Node, module: nn.Module | None, pool: PoolGeometry | None, x: _Value) -> None:
        """Refuse a conv or pool of the dense part (its output at most at OS ``a``) whose grid is neither the floor
        nor the ceil of its input's over its stride (an unpadded conv, an even kernel with stride 1, ...): the
        finest grid would then depend on the input size in a way the rules of docs/semantics.md §8 do not follow
        (on other input sizes than the example's, its sizes fit no output stride)."""
        if self.k == 0 or x.t != self.res(x):
            return
        if isinstance(module, nn.Conv2d):
            geometry = (module.kernel_size, module.stride, module.padding, module.dilation, False)
        else:
            geometry = (pool.kernel, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
        stride = pair(geometry[1])
        if stride is None or x.t * max(stride) > self.a:  # the adaptive part: the rules on maps check it
            return
        found = grid_problem(*geometry)
        if found is None:
            return
        what, fix = found
        size = tuple(self.orig[node].shape[-2:]) if isinstance(self.orig[node], Tensor) else None
        raise GraphConversionError(
            f"node {node.name!r} ({node.op} {_target_name(node)}) in the dense part (OS{x.t}, before the adaptive part "
            f"at OS{self.a}): its {what} (on the example input {tuple(x.meta.shape[-2:])} -> {size}). "
            f"docs/semantics.md §8 needs the finest grid to be the ceil or the floor of the image over {self.a} at "
            f"every input size (other sizes would fit no output stride), and this layer breaks that. Give it {fix}"
        )

    @staticmethod
    def pool_problem(pool: PoolGeometry) -> str:
        return (
            f"{pool.kind} pool with kernel {pool.kernel}, stride {pool.stride}, padding {pool.padding}, dilation "
            f"{pool.dilation}{' and ' + pool.exotic if pool.exotic else ''}: only 2x2 / stride 2 (a merge step) "
            "and 1x1 pools have rules"
        )

    # ------------------------------------------------------------------ map nodes
    def on_map(self, node: fx.Node, args: tuple, kwargs: dict) -> _Value | str:
        """The node on its map inputs, or the reason it needs dense inputs."""
        if node.op == "call_module":
            out = self.module_on_map(node, fetch(self.root, node.target), args, kwargs)
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
        if node.target in self.heads:
            return "a head: runs as built on the densified finest grid"
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
            return self.pool(node, x, pool_geometry(m, (), {}))
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and not x.last:
            if pair(m.output_size) == (1, 1) and not getattr(m, "return_indices", False):
                return self.global_pool(node, x, "avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "max", True)
            return f"adaptive pooling to {m.output_size} (only global pooling has a rule)"
        return f"{type(m).__name__} has no rule on maps"

    def conv(self, node: fx.Node, m: nn.Conv2d, x: _Value, mod: _Value) -> _Value | str:
        if x.last:
            return "a conv on a channels-last view"
        why = conv_problem(m)
        if why:
            self.problem(node, why)
            return f"as is: {why}"
        k, stride, dilation = m.kernel_size[0], m.stride[0], m.dilation[0]
        spacing = dilation * x.t // self.a
        step = stride == 2 and x.t < self.b
        self.check_stage(node, x, step)
        if step and self.softpools(x.t):
            return self.softpool_step(node, m, x, mod, k, spacing)
        self.record_conv(node, m, x.stage, step, k, spacing)
        new = self.call(map_conv, (mod, x, spacing, step, self.backend()), name=node.name)
        return self.map_value(node, new, x, stage=x.stage + int(step))

    def record_conv(self, node: fx.Node, m: nn.Conv2d, stage: int, step: bool, k: int, spacing: int, note: str = ""):
        """The plan of a conv on a map. A deformable conv computes every pre-step element (its step keeps the
        survivors afterwards), and its offset conv runs on the same elements: two plans, which the multiply-add
        counter and :meth:`~adatriton.models.graph.AdaptiveGraphModule.build_tables` read."""
        deformable = isinstance(m, DeformableConv2d)
        info = {
            "on_map": True,
            "stage": stage,
            "downsample": step and not deformable,
            "kernel": k,
            "tap_spacing": spacing,
        }
        if deformable:
            offsets = NodePlan(node.name, f"{_target_name(node)}.offset", "conv", **info, note="the deformable offsets")
            self.plan.nodes.append(offsets)
        self.record(node, "conv", **info, note=note)

    def softpools(self, t: int) -> bool:
        """Whether a stride-2 conv whose input is at OS ``t`` merges by SoftPool (``downsampling="softpool"``: from
        :data:`SOFTPOOL_FROM_STRIDE` on, the subsamplings of a ResNet's layer3 and layer4)."""
        return self.downsampling == "softpool" and t >= SOFTPOOL_FROM_STRIDE

    def softpool_step(self, node: fx.Node, m: nn.Conv2d, x: _Value, mod: _Value, k: int, spacing: int) -> _Value:
        """A stride-2 conv whose step merges by SoftPool, as the dense SoftPool network does: a 1x1 conv (a
        shortcut) after the step, on the merged elements; a larger one (a bottleneck's conv2) before it, at every
        pre-step element, its output then merged."""
        backend = self.backend()
        if k == 1:
            self.record_conv(node, m, x.stage + 1, False, k, spacing, "SoftPool first")
            pooled = self.call(map_downsample, (x, "softpool"), name=f"{node.name}_softpool")
            new = self.call(map_conv, (mod, pooled, spacing, False, backend), name=node.name)
        else:
            self.record_conv(node, m, x.stage, False, k, spacing, "then SoftPool")
            conv = self.call(map_conv, (mod, x, spacing, False, backend), name=node.name)
            new = self.call(map_downsample, (conv, "softpool"), name=f"{node.name}_softpool")
        return self.map_value(node, new, x, stage=x.stage + 1)

    def pool(self, node: fx.Node, x: _Value, pool: PoolGeometry) -> _Value | str:
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
        args, kwargs = inplace_false(fn, tuple(args), dict(kwargs))
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
            if pair(size) == (1, 1) and not kwargs.get("return_indices") and len(args) <= 2:
                return self.global_pool(node, x, "avg" if fn is F.adaptive_avg_pool2d else "max", True)
            return f"adaptive pooling to {size} (only global pooling has a rule)"
        if fn in (torch.mean, torch.amax) and x is not None:
            return self.reduction(node, "avg" if fn is torch.mean else "max", x, args[1:], kwargs)
        pool = pool_geometry(fn, args[1:], kwargs)
        if pool is not None and x is not None:
            return self.pool(node, x, pool)
        if fn in CAT_FUNCTIONS:
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
        if not global_dims(dim, x.last) or len(rest) > 2 or set(kwargs) - {"dim", "keepdim"}:
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
        dims = permutation(args)
        if dims == (TO_FIRST if x.last else TO_LAST):
            self.record(node, "permute", on_map=True, stage=x.stage)
            return self.map_value(node, x.node, x, last=not x.last)  # the values stay: a view changes its name
        return f"permute{dims} (only NCHW <-> NHWC views have a rule)"


def run_original(root: nn.Module, graph: fx.Graph, inputs: Sequence) -> dict[fx.Node, Any]:
    """Every value of the traced ``graph`` on ``inputs`` (meta tensors), modules resolved in ``root``.

    Raises:
        GraphConversionError: a node fails on them (naming it and the input shapes).
    """
    env: dict[fx.Node, Any] = {}
    values = iter(inputs)
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node] = next(values)
        elif node.op != "output":
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            if keeps_shape(root, node, args, kwargs):
                # Shape-preserving ops need no meta kernel (some run as slow Python decompositions on meta).
                env[node] = torch.empty_like(args[0])
                continue
            try:
                env[node] = _run(root, node.op, node.target, args, kwargs)
            except Exception as err:  # noqa: BLE001
                shapes = [tuple(x.shape) if isinstance(x, Tensor) else x for x in inputs]
                raise GraphConversionError(
                    f"the traced model fails on meta inputs of shape {shapes} at node {node.name!r} "
                    f"({_target_name(node)}): {type(err).__name__}: {err}. Pass an example_input the model accepts"
                ) from err
    return env


def planning_inputs(model: nn.Module, example_input: Any) -> list:
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
    mode (restored afterwards), without gradients and without hooks (:func:`~adatriton.nn.hooks.hooks_silenced`: a
    planning run is no call of the model); ``root``'s own tensors are untouched."""
    state = {}
    for n, t in itertools.chain(root.named_parameters(), root.named_buffers()):
        dtype = torch.float32 if t.is_floating_point() else t.dtype
        state[f"root.{n}"] = torch.empty(t.shape, dtype=dtype, device="meta")
    modes = [(m, m.training) for m in root.modules()]
    root.eval()
    try:
        with torch.no_grad(), hooks_silenced(root):
            return torch.func.functional_call(_PlanRunner(root, fn), state, tuple(inputs), strict=False)
    finally:
        for m, training in modes:
            m.training = training
