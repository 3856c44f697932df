"""The converted module: :class:`AdaptiveGraphModule` (the model's children and the generated forward) and
:func:`convert_graph`."""

from __future__ import annotations

import linecache
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ...core.levelmap import LevelMap
from ...runtime.context import environment_snapshot
from ..attach import attached_levels, mask_source_of
from .converter import Converter, Plan, planning_inputs, run_original, trace, with_meta_parameters
from .rules import NodePlan, check_options, parse_graph_output_stride

__all__ = [
    "AdaptiveGraphModule",
    "ConvCallRecorder",
    "conv_calls",
    "convert_graph",
    "generated_forward",
    "kept_network",
]


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
        heads: paths of modules that run as they are built, on the densified finest-grid features, as single calls:
            the heads of a segmentation model built for the dilated network at the finest stride (their convs keep
            their own dilation, and their outputs are at the finest stride). :func:`adatriton.convert` passes the
            heads of the segmentation models it knows.
        downsampling: ``"top_left"`` (a stride-2 conv subsamples) or ``"softpool"``: a stride-2 conv whose input is at
            OS8 or coarser merges 2x2 blocks by SoftPool, a 1x1 conv after it and a larger one before it, in the
            adaptive part (a SoftPool step) and the dense part alike (a ResNet's layer3 and layer4, as
            ``adatriton.convert(resnet, ..., downsampling="softpool")``).
        map_outputs: (keyword) return the maps that reach the output as
            :class:`~adatriton.core.multires.MultiResMap` s instead of densifying them (e.g. to read descriptors at
            a few elements, as :meth:`adatriton.models.d2net.D2Net.features_multires` does).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        GraphConversionError: the graph cannot be converted as asked (naming the node and why); an
            ``example_input`` too small for the conversion gets one that says so and gives the smallest size that
            works.

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
        heads: Sequence[str] = (),
        downsampling: str = "top_left",
        *,
        map_outputs: bool = False,
        source_graph: fx.Graph | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"convert_graph expects an nn.Module that torch.fx can trace, got {type(model).__name__}")
        super().__init__()
        check_options(unsupported, downsampling)
        self.output_stride, self.finest_stride, self.num_levels = parse_graph_output_stride(output_stride)
        self.backend, self.unsupported, self.leaf_modules = backend, unsupported, tuple(leaf_modules)
        self.heads, self.downsampling, self.map_outputs = tuple(heads), downsampling, map_outputs
        self.source_graph = trace(model, self.leaf_modules, self.heads) if source_graph is None else source_graph
        inputs = planning_inputs(model, example_input)
        self.example_shapes = [tuple(x.shape) if isinstance(x, Tensor) else x for x in inputs]

        def plan_on_meta(root: nn.Module, meta_inputs: list) -> Plan:
            converter = Converter(
                root, self.source_graph, self.finest_stride, self.num_levels, unsupported, meta_inputs, self.heads,
                downsampling, map_outputs,
            )  # fmt: skip
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
        self.code, self.forward_code = generated_forward(self.graph, f"{self.output_stride} {id(self):x}")

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
                None (or an all-zero map of the output grid) for a dense output stride; left out (or None) with a
                mask source attached (``adatriton.convert(..., mask=...)``): the source's map of the first input.

        Returns:
            What the model returns; maps that reach the output are densified to the finest grid (returned as maps
            with ``map_outputs=True``).
        """
        for i, (value, example) in enumerate(zip(inputs, self.example_shapes)):
            if isinstance(example, tuple) and not isinstance(value, Tensor):
                raise TypeError(
                    f"input {i} must be an image batch, expected a torch.Tensor of shape (N, C, H, W) like "
                    f"{example}, got {type(value).__name__}"
                )
        if mask_source_of(self) is not None:
            inputs, kwargs = self._with_attached_levels(inputs, kwargs)
        if torch.compiler.is_compiling():
            return self.forward_code(self, *inputs, **kwargs)
        with environment_snapshot():  # each environment variable read once per forward, not once per conv
            return self.forward_code(self, *inputs, **kwargs)

    def _with_attached_levels(self, inputs: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """``(inputs, kwargs)`` with ``levels`` from the attached mask source where the call leaves it out: the
        model's own inputs are the source graph's placeholders, ``levels`` the one past them (or the keyword)."""
        count = sum(n.op == "placeholder" for n in self.source_graph.nodes)
        if "levels" in kwargs:
            return inputs, {**kwargs, "levels": attached_levels(self, kwargs["levels"], inputs[0] if inputs else None)}
        if len(inputs) > count:
            images = inputs[0]
            return (*inputs[:count], attached_levels(self, inputs[count], images), *inputs[count + 1 :]), kwargs
        images = inputs[0] if inputs else next(iter(kwargs.values()), None)
        return inputs, {**kwargs, "levels": attached_levels(self, None, images)}

    def with_output_stride(self, output_stride: str | int) -> AdaptiveGraphModule:
        """The same model at another output stride, sharing every parameter (e.g. the dense ``"8"`` network that a
        uniform level-0 map of ``"8->32"`` equals)."""
        return AdaptiveGraphModule(
            self,
            output_stride,
            tuple(self.example_inputs()),
            self.backend,
            self.unsupported,
            self.leaf_modules,
            self.heads,
            self.downsampling,
            map_outputs=self.map_outputs,
            source_graph=self.source_graph,
        )

    def example_inputs(self) -> list:
        """Meta tensors of the shapes the conversion was planned on (``example_shapes``; other inputs as given)."""
        return [torch.empty(s, device="meta") if isinstance(s, tuple) else s for s in self.example_shapes]

    def finest_network(self) -> AdaptiveGraphModule:
        """The dense network at the finest output stride (what a uniform level-0 map equals), sharing every
        parameter; kept (:func:`kept_network`: built again after a child of this module is replaced)."""
        if not self.adaptive:
            return self
        key = ("finest", self.backend)
        return kept_network(self, key, self._modules.values(), lambda: self.with_output_stride(str(self.finest_stride)))

    def adaptive_convs(self) -> list[NodePlan]:
        """The convs that run on maps, in execution order (``target`` is the module path)."""
        return [p for p in self.plan if p.op == "conv" and p.on_map]

    def conversion_summary(self, limit: int = 10) -> str:
        """What the conversion did, in a few lines: the layers converted to run on the multi-resolution map, the convs
        fused with their BatchNorm, residual add and activation (:mod:`~adatriton.models.graph.fusion`), those run
        densely at another stride or dilation, those densified (each with why) and how many were left alone.

        :func:`adatriton.convert` prints it in a :class:`~adatriton.models.convert.ConversionWarning` when a
        conversion does nothing or costs more than the original.

        Args:
            limit: at most this many layers are named per group (the counts are always complete).

        Returns:
            The summary, one line per group.
        """
        convs = self.adaptive_convs()
        fused = [p for p in self.plan if p.op == "conv" and p.note.startswith("fused: ")]
        on_map = [p for p in self.plan if p.on_map and p.op != "conv"]
        strided = [p for p in self.plan if p.op in ("dense-dilated", "dense-identity")]
        densified = [p for p in self.plan if p.op == "densify"]
        unchanged = sum(p.op == "dense" for p in self.plan)

        def names(plans: list[NodePlan]) -> str:
            shown = ", ".join(p.target for p in plans[:limit])
            return f": {shown}" + (f", ... ({len(plans) - limit} more)" if len(plans) > limit else "") if plans else ""

        lines = [
            f"conversion {self.output_stride!r} (unsupported={self.unsupported!r}) of {len(self.plan)} traced nodes:",
            f"  converted: {len(convs)} adaptive convs{names(convs)}; {len(on_map)} other nodes on the map",
            f"  fused (conv with its BatchNorm / residual add / activation, one conv_bn_act call): {len(fused)}"
            + names(fused),
            f"  dense at another stride or dilation: {len(strided)}{names(strided)}",
            f"  densified (run densely on the densified map): {len(densified)}",
        ]
        lines += [f"    {p.target} (node {p.node!r}): {p.note}" for p in densified[:limit]]
        if len(densified) > limit:
            lines.append(f"    ... ({len(densified) - limit} more)")
        lines.append(f"  left alone (dense, as in the original): {unchanged} nodes")
        return "\n".join(lines)

    def finest_grid(self, *inputs: Tensor) -> tuple[int, int, int]:
        """``(N, Hf, Wf)`` of the finest grid for inputs of these shapes (any device, meta included)."""
        if self.entry is None:
            raise ValueError(f"output stride {self.output_stride!r} has no adaptive part")
        shapes = planning_inputs(self, list(inputs))

        def run(root: nn.Module, meta_inputs: list) -> tuple[int, int, int]:
            env = run_original(root, self.source_graph, meta_inputs)
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


def kept_network(
    owner: nn.Module, key: Hashable, modules: Iterable[nn.Module], build: Callable[[], AdaptiveGraphModule]
) -> AdaptiveGraphModule:
    """A network derived from ``owner`` (its conversion at another stride, or over other outputs), built by ``build``
    once per ``key`` and kept outside the module tree (no state_dict keys); built again where one of ``modules``, the
    modules it is built over, was replaced since. The modules are compared by identity: a kept network holds the old
    ones, so they stay alive and no new module can reuse their ids. ``.data`` writes and dtype or device moves need
    no rebuild: the kept network shares the modules and their parameters."""
    cache = owner.__dict__.setdefault("_kept_networks", {})
    ids = tuple(map(id, modules))
    hit = cache.get(key)
    if hit is None or hit[0] != ids:
        hit = cache[key] = (ids, build())
    return hit[1]


def generated_forward(graph: fx.Graph, label: str = "") -> tuple[str, Callable]:
    """The Python source fx generates for a converted graph and its function, ``forward(module, *inputs)`` (the
    module whose attributes the graph reads; modules fetched once per call, :func:`_fetching_parents_once`).
    Tracebacks show the source."""
    code = _fetching_parents_once(graph).python_code(root_module="self")
    key = f"<adatriton graph {label or f'{id(graph):x}'}>"
    linecache.cache[key] = (len(code.src), None, code.src.splitlines(True), key)
    scope = dict(code.globals)
    exec(compile(code.src, key, "exec"), scope)  # noqa: S102 -- fx's generated forward, as GraphModule does
    return code.src, scope["forward"]


def _fetching_parents_once(graph: fx.Graph) -> fx.Graph:
    """A copy of ``graph`` whose dotted ``get_attr`` nodes read the attribute from their parent module's node, each
    module fetched once per forward: ``layer3_0.conv1`` instead of ``getattr(self.layer3, "0").conv1`` for every
    module argument. A ResNet-101 forward fetched ~930 attributes through ``nn.Module.__getattr__`` (~0.5 µs each, a
    third of its per-conv host time beside the former hand-written ResNet runner's); the modules are still fetched on
    every call, so a layer replaced after conversion is the one that runs."""
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    fetched: dict[str, fx.Node] = {}

    def fetch(path: str) -> fx.Node:
        if path not in fetched:
            parent, _, name = path.rpartition(".")
            label = path.replace(".", "_")
            if parent:
                fetched[path] = new.call_function(getattr, (fetch(parent), name), name=label)
            else:
                fetched[path] = new.get_attr(path)
        return fetched[path]

    for node in graph.nodes:
        if node.op == "get_attr":
            env[node] = fetch(node.target)
        else:
            env[node] = new.node_copy(node, lambda n: env[n])
    return new


def convert_graph(
    model: nn.Module,
    output_stride: str | int,
    example_input: Any = None,
    backend: str | None = None,
    unsupported: str = "error",
    leaf_modules: Sequence[type[nn.Module]] = (),
    heads: Sequence[str] = (),
    downsampling: str = "top_left",
) -> AdaptiveGraphModule:
    """Convert any traceable CNN (docs/semantics.md §8); see :class:`AdaptiveGraphModule` for the arguments.

    The source model is not modified; the converted module shares its layers.

    Example:
        >>> net = convert_graph(torchvision.models.mobilenet_v3_large(), "8->32").eval()
        >>> logits = net(images, levels)          # levels: (N, ceil(H/8), ceil(W/8)) in {0, 1, 2}
        >>> print(net.code)                       # the generated forward
    """
    return AdaptiveGraphModule(
        model, output_stride, example_input, backend, unsupported, leaf_modules, heads, downsampling
    )


_CONVS = (torch.conv1d, torch.conv2d, torch.conv3d)
#: torchvision's deformable conv (``DeformableConv2d`` on tensors): a k x k conv per output element.
_DEFORM = (torch.ops.torchvision.deform_conv2d, torch.ops.torchvision.deform_conv2d.default)


class ConvCallRecorder(TorchFunctionMode):
    """Records every conv / linear call on a weight of ``names`` (id -> name) whose id is not in ``skip`` (read at
    each call) into ``rows``: one dict per call, the columns of :func:`conv_calls`."""

    def __init__(self, names: dict[int, str], rows: list | None = None, skip: Collection[int] = ()):
        super().__init__()
        self.names, self.rows, self.skip = names, [] if rows is None else rows, skip

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not (func in _CONVS or func in _DEFORM or func is F.linear):
            return out
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        name = self.names.get(id(weight))
        if name is None or id(weight) in self.skip:
            return out
        if func is F.linear:  # weight (out_features, in_features); every leading dim of the output is a row
            op, groups, dilation, k = "linear", 1, 1, 1
        elif func in _CONVS:
            op, k = "conv", weight.shape[-1]
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            dilation = args[5] if len(args) > 5 else kwargs.get("dilation", 1)
        else:  # deform_conv2d(input, weight, offset, mask, bias, stride h/w, pad h/w, dilation h/w, groups, ...)
            op, k, groups, dilation = "conv", weight.shape[-1], args[11], args[9]
        dilation = dilation[0] if isinstance(dilation, (tuple, list)) else dilation
        cout = weight.shape[0]
        self.rows.append(
            {
                "layer": name, "op": op, "adaptive": False, "stage": -1, "downsample": False,
                "cin": int(weight.shape[1]) * int(groups), "cout": int(cout), "k": int(k), "spacing": int(dilation),
                "groups": int(groups), "elements": int(out.numel() // cout), "per_output": int(weight.numel()),
            }
        )  # fmt: skip
        return out


def conv_calls(model: nn.Module, inputs: Sequence, elements: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The conv and linear calls of ``model`` on inputs of these shapes, counted on ``meta`` tensors
    (docs/semantics.md §5): the one multiply-add counter, which :func:`adatriton.count_macs` tabulates.

    An adaptive :class:`AdaptiveGraphModule` runs as its dense network at the finest stride, which calls the same
    convs in the same order; each conv that runs on the map then computes the elements of its output stage instead of
    the finest grid's pixels.

    Args:
        model: any module; its own tensors are untouched (it runs on meta copies, without hooks).
        inputs: its inputs (tensors on any device, meta included: only their shapes are read).
        elements: an adaptive network's elements per stage, ``E_0 .. E_K`` (required for one, else ignored).

    Returns:
        One dict per call in execution order: ``layer`` (the weight's name without ``.weight``), ``op`` (``"conv"`` /
        ``"linear"``), ``adaptive``, ``stage`` (downsamplings before an adaptive conv, -1 for dense ones),
        ``downsample`` (computes only the survivors of the next step), ``cin``, ``cout``, ``k``, ``spacing``
        (dilation, or tap spacing on the finest grid), ``groups``, ``elements`` (output positions computed, whole
        batch) and ``per_output`` (multiply-adds per output position: every weight entry once).
    """
    adaptive = isinstance(model, AdaptiveGraphModule) and model.adaptive
    if adaptive and elements is None:
        raise ValueError("the conv calls of an adaptive network need its elements per stage (E_0 .. E_K)")
    shapes = planning_inputs(model, list(inputs))

    def run(root: nn.Module, meta_inputs: list) -> list[dict[str, Any]]:
        recorder = ConvCallRecorder({id(t): n.removesuffix(".weight") for n, t in root.named_parameters()})
        with recorder:
            root(*meta_inputs)
        return recorder.rows

    rows = with_meta_parameters(model.finest_network() if adaptive else model, shapes, run)
    if adaptive:
        pending: dict[str, list[NodePlan]] = {}
        for plan in model.adaptive_convs():  # in execution order, as the rows
            pending.setdefault(plan.target, []).append(plan)
        for row in rows:
            if pending.get(row["layer"]):
                plan = pending[row["layer"]].pop(0)
                row.update(adaptive=True, stage=plan.stage, downsample=plan.downsample, spacing=plan.tap_spacing)
                row["elements"] = int(elements[plan.stage + int(plan.downsample)])
    return rows
