"""The dense simulation of docs/semantics.md §8 (any CNN), written from the rules and independent of
``adatriton.models.graph``: no index tables, no element lists, no code of the converter.

The model's traced graph (``torch.fx.symbolic_trace``) runs node by node on real tensors. A multi-resolution map
is held densified on the finest grid (``Map``: ``(N, C, Hf, Wf)`` plus its stage); the ops of §3 / §8 act on that
dense form: a conv runs densely and is read at the element centres (:class:`tests.reference.simulation.DenseSim`),
a 2x2 pool with stride 2 merges blocks, per-element ops run per pixel (which is per element, every pixel of an
element holding its value), global average pooling is the mean over the finest grid. Everything the rules do not
name densifies: the value becomes an ordinary tensor on the finest grid, and from there spatial layers run as in
the dense network at the finest stride (strides turned into dilation).

Output strides come from the traced graph run on ``meta`` tensors at 512x512, where every stride is exact.
"""

from __future__ import annotations

import copy
import functools
import inspect
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from tests.reference.simulation import DenseSim

#: Modules that act on every pixel on its own, hence on every element on its own.
PER_PIXEL_MODULES = (
    nn.ReLU,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Dropout,
    nn.Identity,
    nn.BatchNorm2d,
    StochasticDepth,
)
PER_PIXEL_FUNCTIONS = {F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, torch.sigmoid, torch.relu}
BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.mul}
PLANNING = 512


@dataclass
class Map:
    """A multi-resolution map, densified on the finest grid ``(N, C, Hf, Wf)`` (or ``(N, Hf, Wf, C)`` when
    ``last``), after ``stage`` steps."""

    dense: Tensor
    stage: int
    last: bool = False


@dataclass
class Dense:
    """An ordinary tensor: original output stride ``t`` and the stride ``res`` it is computed at."""

    x: Tensor
    t: int | None
    res: int | None


class _Shapes(nn.Module):
    def __init__(self, gm: fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, x: Tensor) -> dict[str, Any]:
        env = {}

        class Record(fx.Interpreter):
            def run_node(self, n):
                if n.op == "call_module" and isinstance(self.fetch_attr(n.target), PER_PIXEL_MODULES):
                    # Shapes only: some activations run as slow Python decompositions on meta tensors.
                    out = env[n.name] = torch.empty_like(env[n.args[0].name])
                    return out
                out = super().run_node(n)
                env[n.name] = out
                return out

        Record(self.gm).run(x)
        return env


def original_strides(gm: fx.GraphModule, channels: int) -> dict[str, int | None]:
    """Output stride of every node of the traced graph (None for non-spatial values)."""
    state = {f"gm.{n}": torch.empty(t.shape, device="meta") for n, t in gm.state_dict(keep_vars=True).items()}
    state = {k: v if v.is_floating_point() else v.long() for k, v in state.items()}
    x = torch.empty(1, channels, PLANNING, PLANNING, device="meta")
    with torch.no_grad():
        env = torch.func.functional_call(_Shapes(gm), state, (x,), strict=False)
    strides = {}
    for name, value in env.items():
        t = None
        if isinstance(value, Tensor) and value.dim() == 4 and tuple(value.shape[2:]) != (1, 1):
            h, w = value.shape[2:]
            if PLANNING % h == 0 and PLANNING // h == PLANNING // w:
                t = PLANNING // h
        strides[name] = t
    return strides


class _Tracer(fx.Tracer):
    """Leaves: torch.nn's modules (also subclasses, such as adatriton's drop-in ones) and StochasticDepth."""

    def is_leaf_module(self, m, name):
        leaves = (StochasticDepth, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)
        return isinstance(m, leaves) or super().is_leaf_module(m, name)


def simulate(
    model: nn.Module, x: Tensor, levels: Tensor, finest: int, num_levels: int, unsupported: str = "error"
) -> Any:
    """The output of ``model`` converted to ``finest->finest*2^K`` on ``levels (N, Hf, Wf)``, simulated densely.

    Args:
        model: the torchvision model (eval mode).
        x: its input.
        levels: the level map on the finest grid.
        finest, num_levels: ``a`` and ``K``.
        unsupported: ``"densify"`` runs layers without a rule densely on the densified map; ``"error"`` raises.
    """
    gm = fx.GraphModule(model, _Tracer().trace(model))
    strides = original_strides(gm, x.shape[1])
    a, coarsest = finest, finest << num_levels
    sim = DenseSim(levels, num_levels)
    image = x.shape[-2:]
    hf, wf = levels.shape[1:]

    def res_of(t: Tensor) -> int | None:
        """The stride a dense tensor is at, from its size (ceil or floor of the image over a power of two)."""
        if t.dim() != 4 or tuple(t.shape[2:]) == (1, 1):
            return None
        for p in (1 << i for i in range(12)):
            if all(s in (-(-full // p), full // p) for full, s in zip(image, t.shape[2:])):
                return p
        return None

    def densified(v: Any) -> Any:
        if isinstance(v, Map):
            return Dense(v.dense, strides_of_map[id(v)], a)
        return v

    strides_of_map: dict[int, int] = {}

    def make_map(dense: Tensor, stage: int, t: int, last: bool = False) -> Map:
        m = Map(dense, stage, last)
        strides_of_map[id(m)] = t
        return m

    def raw(v: Any) -> Any:
        return v.x if isinstance(v, Dense) else v

    env: dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node.name] = Dense(x, 1, 1)
            continue
        if node.op == "get_attr":
            env[node.name] = functools.reduce(getattr, node.target.split("."), gm)
            continue
        if node.op == "output":
            out = fx.node.map_arg(node.args[0], lambda n: env[n.name])
            return fx.node.map_aggregate(
                out, lambda v: (v.dense if isinstance(v, Map) else raw(v)) if isinstance(v, (Map, Dense)) else v
            )
        args = fx.node.map_arg(node.args, lambda n: env[n.name])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
        t_out = strides[node.name]
        t_in = strides[node.args[0].name] if node.args and isinstance(node.args[0], fx.Node) else None
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        flat = _leaves((args, kwargs))
        maps = [v for v in flat if isinstance(v, Map)]
        # Entering: the first layer that takes the stride past a gets its finest-grid inputs as stage-0 maps.
        if (not maps and t_out is not None and t_out > a) or (maps and any(m.stage == 0 for m in maps)):
            joined = {id(v): make_map(v.x, 0, a) for v in flat if isinstance(v, Dense) and v.t == a and v.res == a}
            if joined:
                args, kwargs = fx.node.map_aggregate((args, kwargs), functools.partial(_swap, joined))
                maps = list(joined.values()) + maps
        result = None
        if maps:
            result = _on_map(node, module, args, kwargs, t_in, t_out, a, coarsest, sim, make_map, unsupported)
        if result is None:  # dense: densify maps, then the dense network at the finest stride
            args, kwargs = fx.node.map_aggregate((args, kwargs), densified)
            result = _dense(node, module, args, kwargs, t_out, a, res_of, unsupported)
        env[node.name] = result
    raise AssertionError("graph without output")


def _leaves(struct: Any) -> list:
    out: list = []
    fx.node.map_aggregate(struct, out.append)
    return out


def _swap(table: dict[int, Map], v: Any) -> Any:
    return table.get(id(v), v) if isinstance(v, Dense) else v


def _on_map(node, module, args, kwargs, t_in, t_out, a, coarsest, sim, make_map, unsupported):
    """The node on maps by the rules, or None when it densifies."""
    x = args[0] if args else None
    if isinstance(module, nn.Conv2d) and isinstance(x, Map) and not x.last:
        k, (s, _), (d, _), (p, _) = module.kernel_size[0], module.stride, module.dilation, module.padding
        if module.kernel_size[0] != module.kernel_size[1] or k % 2 == 0 or p != d * (k // 2) or s not in (1, 2):
            if unsupported == "error":
                raise ValueError(f"{node.name}: no rule for this conv")
            return None
        step = s == 2 and t_in < coarsest
        dense = sim.conv(x.dense, module.weight, module.bias, d * t_in // a, x.stage, step, module.groups)
        return make_map(dense, x.stage + int(step), t_out)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) and isinstance(x, Map):
        if (
            module.kernel_size not in (2, (2, 2))
            or module.stride not in (2, (2, 2))
            or module.padding not in (0, (0, 0))
        ):
            if unsupported == "error":
                raise ValueError(f"{node.name}: no rule for this pool")
            return None
        if t_in >= coarsest:
            return make_map(x.dense, x.stage, t_out)
        if isinstance(module, nn.MaxPool2d):
            return make_map(sim.downsample(x.dense, x.stage, "max"), x.stage + 1, t_out)
        return make_map(_avg_step(sim, x.dense, x.stage), x.stage + 1, t_out)
    if isinstance(module, PER_PIXEL_MODULES) and isinstance(x, Map):
        return make_map(module(x.dense), x.stage, t_out, x.last)
    if isinstance(module, (nn.LayerNorm, nn.Linear)) and isinstance(x, Map) and x.last:
        return make_map(module(x.dense), x.stage, t_out, True)
    if isinstance(module, nn.AdaptiveAvgPool2d) and isinstance(x, Map) and module.output_size in (1, (1, 1)):
        return Dense(x.dense.mean((2, 3), keepdim=True), None, None)
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d and isinstance(x, Map):
        return Dense(x.dense.mean((2, 3), keepdim=True), None, None)
    if node.op == "call_function" and node.target in PER_PIXEL_FUNCTIONS and isinstance(x, Map):
        return make_map(node.target(x.dense, *args[1:], **kwargs), x.stage, t_out, x.last)
    if node.op == "call_function" and node.target in BINARY and len(args) == 2:
        a_, b_ = args
        if isinstance(a_, Map) and isinstance(b_, Map):
            if a_.stage != b_.stage:
                return None
            return make_map(node.target(a_.dense, b_.dense, **kwargs), a_.stage, t_out, a_.last)
        m, other = (a_, b_) if isinstance(a_, Map) else (b_, a_)
        o = other.x if isinstance(other, Dense) else other
        if isinstance(o, Tensor) and (
            o.dim() < 4 or tuple(o.shape[2:]) == (1, 1) or (m.last and o.shape[1:3] == (1, 1))
        ):
            ops = (a_.dense if a_ is m else o, b_.dense if b_ is m else o)
            return make_map(node.target(*ops, **kwargs), m.stage, t_out, m.last)
        if isinstance(o, (int, float)):
            ops = (a_.dense if a_ is m else o, b_.dense if b_ is m else o)
            return make_map(node.target(*ops, **kwargs), m.stage, t_out, m.last)
        return None
    if node.op == "call_method" and node.target == "permute" and isinstance(x, Map):
        dims = tuple(args[1:]) if not isinstance(args[1], (tuple, list)) else tuple(args[1])
        if dims == ((0, 3, 1, 2) if x.last else (0, 2, 3, 1)):
            return make_map(x.dense.permute(*dims), x.stage, t_out, not x.last)
    if node.op == "call_function" and node.target is torch.cat and all(isinstance(v, Map) for v in args[0]):
        first = args[0][0]
        if all(v.stage == first.stage for v in args[0]) and args[1] == 1:
            return make_map(torch.cat([v.dense for v in args[0]], 1), first.stage, t_out)
    if node.op == "call_method" and node.target == "mean" and isinstance(x, Map) and tuple(args[1]) == (2, 3):
        return Dense(x.dense.mean((2, 3), **kwargs), None, None)
    if node.op == "call_function" and node.target is getattr and isinstance(x, Map) and args[1] == "shape":
        return x.dense.shape
    return None


def _dense(node, module, args, kwargs, t_out, a, res_of, unsupported):
    """A dense node: spatial layers whose input is finer than in the original network, or that would take the
    stride past the finest one, run as in the dense network at the finest stride."""
    raw = fx.node.map_aggregate((args, kwargs), lambda v: v.x if isinstance(v, Dense) else v)
    x = args[0] if args else None
    if isinstance(x, Dense) and x.t is not None and x.res is not None:
        t, r = x.t, x.res
        up = _upsampling(node, module, raw[0][1:], raw[1])
        if up is not None and r < t and t_out is not None:
            # Decoders: the dense network at stride a upsamples only below the stride r it holds the values at.
            if t_out >= r:
                return Dense(x.x, t_out, r)
            if up["size"] is None:
                out = F.interpolate(x.x, scale_factor=r // t_out, mode=up["mode"], align_corners=up["align_corners"])
                return Dense(out, t_out, res_of(out))
        if isinstance(module, nn.Conv2d):
            k, (s, _), (d, _) = module.kernel_size[0], module.stride, module.dilation
            if (s == 2 and t >= a) or (r != t and k > 1):
                pad = module.padding[0] if not isinstance(module.padding, str) else d * (k // 2)
                if k % 2 == 0 or pad != d * (k // 2):
                    if unsupported == "error":
                        raise ValueError(f"{node.name}: no dense rule for this conv")
                else:
                    dil = d * t // r
                    out = F.conv2d(x.x, module.weight, module.bias, 1, dil * (k // 2), dil, module.groups)
                    return Dense(out, t_out, r)
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) and module.stride in (2, (2, 2)) and t >= a:
            if module.kernel_size in (2, (2, 2)) and module.padding in (0, (0, 0)):
                return Dense(x.x, t_out, r)
            if unsupported == "error":
                raise ValueError(f"{node.name}: no dense rule for this pool")
    if node.op == "call_module":
        out = module(*raw[0], **raw[1])
    elif node.op == "call_function":
        out = node.target(*raw[0], **raw[1])
    else:
        out = getattr(raw[0][0], node.target)(*raw[0][1:], **raw[1])
    if isinstance(out, Tensor):
        return Dense(out, t_out, res_of(out))
    return out


def _upsampling(node, module, args, kwargs) -> dict | None:
    """``size``, ``mode`` and ``align_corners`` of an ``F.interpolate`` call or ``nn.Upsample`` module, else None."""
    if isinstance(module, nn.Upsample):
        return {"size": module.size, "mode": module.mode, "align_corners": module.align_corners}
    if node.op != "call_function" or node.target is not F.interpolate:
        return None
    bound = inspect.signature(F.interpolate).bind(None, *args, **kwargs)
    bound.apply_defaults()
    return {k: bound.arguments[k] for k in ("size", "mode", "align_corners")}


def _avg_step(sim: DenseSim, dense: Tensor, stage: int) -> Tensor:
    """Step ``stage + 1`` in the average variant: a merging block takes the mean of its real sub-elements."""
    n, c, h, w = dense.shape
    s, sub = 1 << (stage + 1), 1 << stage
    ys, xs = torch.arange(h), torch.arange(w)
    ty, tx = (ys // s * s)[:, None].expand(h, w), (xs // s * s)[None, :].expand(h, w)
    total, count = torch.zeros_like(dense), torch.zeros(h, w, dtype=dense.dtype)
    for dy in (0, sub):
        for dx in (0, sub):
            real = ((ty + dy) < h) & ((tx + dx) < w)
            got = dense[:, :, (ty + dy).clamp(max=h - 1), (tx + dx).clamp(max=w - 1)]
            total = total + torch.where(real, got, torch.zeros_like(got))
            count = count + real.to(dense.dtype)
    merge = (sim.levels > stage)[:, None]
    return torch.where(merge, total / count, dense)


def dilated_network(model: nn.Module, output_stride: int, channels: int = 3) -> nn.Module:
    """The dense network at ``output_stride``, built by editing a deep copy of ``model`` (its own forward runs):
    every conv whose input is at an output stride ``t >= output_stride`` in the original network gets stride 1 and
    dilation ``d * t / output_stride`` (centred padding), and every 2x2 pool with stride 2 there becomes an
    identity, as ``replace_stride_with_dilation`` does for ResNets."""
    gm = fx.GraphModule(model, _Tracer().trace(model))
    strides = original_strides(gm, channels)
    net = copy.deepcopy(model)
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(node.args[0], fx.Node):
            continue
        t = strides[node.args[0].name]
        if t is None or t < output_stride:
            continue
        m = net.get_submodule(node.target)
        if isinstance(m, nn.Conv2d):
            k, d = m.kernel_size[0], m.dilation[0] * t // output_stride
            m.stride, m.dilation, m.padding = (1, 1), (d, d), (d * (k // 2), d * (k // 2))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and m.stride in (2, (2, 2)):
            parent, _, name = node.target.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, name, nn.Identity())
    return net
