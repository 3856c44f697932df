"""The converter's fusion pass: conv -> BatchNorm -> add -> activation on maps become one conv_bn_act call.

It runs on the converted graph, after it is written: a :func:`~adatriton.models.graph.mapops.map_conv` node whose
value only feeds an eval-able BatchNorm (:func:`~adatriton.models.graph.mapops.map_batch_norm`), then optionally a
residual add of another map on the same layout (either operand order) and optionally an activation the conv
epilogue has (ReLU, ReLU6, Hardswish, SiLU: modules or functions, in place or not), each value used only by the
next, becomes one :func:`~adatriton.models.graph.mapops.map_conv_bn_act` node. A conv followed by an activation
without BatchNorm fuses too; the end of a container module's forward right after the BatchNorm
(:func:`~adatriton.models.graph.mapops.module_exit`, where its forward hooks run) is taken in. The fused op
computes the same function: in eval mode one fused :func:`adatriton.ops.conv_bn_act` (BatchNorm folded, epilogue
fused), in train mode or with gradients the ops one after the other, and with hooks on one of the modules
unfused (:mod:`adatriton.nn.hooks`).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...nn.modules import ADAPTIVE_MODULES, DeformableConv2d
from .mapops import map_batch_norm, map_conv, map_conv_bn_act, map_module, module_exit
from .rules import NodePlan, fetch

__all__ = ["ACTIVATION_FUNCTIONS", "ACTIVATION_MODULES", "fuse_conv_groups"]

#: Activation modules the conv epilogue has, by type (ReLU6 before its base class Hardtanh, which is not one).
ACTIVATION_MODULES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU, "relu"),
    (nn.ReLU6, "relu6"),
    (nn.Hardswish, "hardswish"),
    (nn.SiLU, "silu"),
)
#: Activation functions the conv epilogue has (``inplace`` is dropped on maps by the converter).
ACTIVATION_FUNCTIONS: dict[Callable, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.Tensor.relu: "relu",
    F.relu6: "relu6",
    F.hardswish: "hardswish",
    F.silu: "silu",
}
_ADDS = (operator.add, torch.add, torch.Tensor.add)
_DROP_IN_BASES = {drop_in: base for base, drop_in in ADAPTIVE_MODULES.items()}


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _wrapped(node: fx.Node) -> Callable | None:
    """The function an ``on_values`` wrapper node applies, or None."""
    return getattr(node.target, "__wrapped__", None) if node.op == "call_function" else None


def _activation(root: nn.Module, node: fx.Node, x: fx.Node) -> tuple[str, fx.Node | None] | None:
    """``(name, module node or None)`` where ``node`` applies an epilogue activation to ``x`` alone, else None."""
    if node.op != "call_function":
        return None
    if node.target is map_module and node.args[1] is x and not node.kwargs:
        module = fetch(root, node.args[0].target)
        kind = _DROP_IN_BASES.get(type(module), type(module))  # adatriton's drop-in ReLU is a ReLU
        name = next((n for cls, n in ACTIVATION_MODULES if kind is cls), None)
        return None if name is None else (name, node.args[0])
    fn = _wrapped(node)
    name = ACTIVATION_FUNCTIONS.get(fn)
    if name is None or node.args != (x,) or any(k != "inplace" for k in node.kwargs):
        return None
    return name, None


def _residual(node: fx.Node, x: fx.Node, maps: set[fx.Node]) -> fx.Node | None:
    """The other operand where ``node`` adds a map on the same layout to ``x`` (the converter checked the layout),
    else None."""
    if _wrapped(node) not in _ADDS or node.kwargs or len(node.args) != 2:
        return None
    a, b = node.args
    other = b if a is x else a if b is x else None
    return other if isinstance(other, fx.Node) and other is not x and other in maps else None


def fuse_conv_groups(graph: fx.Graph, root: nn.Module, maps: set[fx.Node], records: list[NodePlan]) -> int:
    """Fuse every conv group of ``graph`` (see the module docstring) in place; ``maps`` holds the nodes whose
    values are maps, ``records`` the converter's node plans, whose conv records get a ``fused: ...`` note and whose
    fused BatchNorm, add and activation records say which conv took them in.

    Returns:
        The number of fused groups.
    """
    by_name = {r.node: i for i, r in enumerate(records)}
    position = {n: i for i, n in enumerate(graph.nodes)}
    fused = 0
    for conv in list(graph.nodes):
        if conv.op != "call_function" or conv.target is not map_conv:
            continue
        conv_module = fetch(root, conv.args[0].target)
        if isinstance(conv_module, DeformableConv2d):
            continue
        group, last = [conv], conv
        bn = residual = act = None
        activation = None
        nxt = _only_user(last)
        if nxt is not None and nxt.op == "call_function" and nxt.target is map_batch_norm and nxt.args[1] is last:
            bn, last = nxt.args[0], nxt
            group.append(nxt)
            nxt = _only_user(last)
        exits = []  # containers whose forward ends with the BatchNorm (a block's conv Sequential, before the add)
        while bn is not None and nxt is not None and nxt.target is module_exit and nxt.args[2] is last:
            exits.append((nxt.args[0], nxt.args[1]))
            group.append(nxt)
            last, nxt = nxt, _only_user(nxt)
        if bn is not None and nxt is not None:
            other = _residual(nxt, last, maps)
            # Only a residual computed before the conv: the fused op then runs where the conv ran, and the convs
            # keep their order (a projection shortcut computed after the main branch's last conv takes the add).
            if other is not None and position[other] < position[conv]:
                residual, last = other, nxt
                group.append(nxt)
                nxt = _only_user(last)
        if nxt is not None:
            found = _activation(root, nxt, last)
            if found is not None:
                (activation, act), last = found, nxt
                group.append(nxt)
        if len(group) == 1:
            continue
        module, x, spacing, step, backend = conv.args
        for attr in (bn, act, *(m for m, _ in exits)):  # the modules' get_attr nodes written after the conv
            if attr is not None and position[attr] > position[conv]:
                conv.prepend(attr)
        with graph.inserting_before(conv):
            new = graph.call_function(
                map_conv_bn_act,
                (module, bn, act, x, residual, spacing, step, backend, activation, tuple(exits)),
                name=f"{conv.name}_fused",
            )
        position[new] = position[conv]
        if last in maps:
            maps.add(new)
        last.replace_all_uses_with(new)
        for node in reversed(group):
            graph.erase_node(node)
        fused += 1
        parts = [n.name for n in group[1:] if n.target is not module_exit]
        i = by_name.get(conv.name)
        if i is not None:
            records[i] = dataclasses.replace(records[i], note=f"fused: {', '.join(parts)}")
        for name in parts:
            j = by_name.get(name)
            if j is not None:
                records[j] = dataclasses.replace(records[j], note=f"fused into {conv.name}")
    return fused
