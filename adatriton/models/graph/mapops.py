"""Ops on maps that the converted module's generated forward calls (docs/semantics.md §8).

fx writes every non-node argument as a Python literal, so functions are never arguments: :func:`on_values` /
:func:`on_vectors` / :func:`with_module_hooks` make one named wrapper per function instead.

Module hooks: an op that stands for a call of one of the model's modules (a conv, BatchNorm or activation on a
map, a pool that became a downsampling step or the identity, a conv at another dilation) runs that module's
forward and forward-pre hooks around it (:func:`adatriton.nn.hooks.call_with_hooks`): on maps they receive the
:class:`~adatriton.core.multires.MultiResMap`, on dense values tensors. :func:`map_conv_bn_act`, the fusion of a
conv with its BatchNorm, residual add and activation, runs unfused while one of its modules has hooks.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from ... import ops as AF
from ...core.levelmap import LevelMap
from ...core.multires import MultiResMap
from ...nn.hooks import call_with_hooks, has_hooks, run_forward_hooks, run_forward_pre_hooks
from ...nn.modules import DeformableConv2d, conv_at
from ...ops.batchnorm import ACTIVATIONS
from .rules import TO_LAST

__all__ = [
    "check_dense_levels",
    "enter",
    "level_map",
    "map_batch_norm",
    "map_cat",
    "map_conv",
    "map_conv_at",
    "map_conv_bn_act",
    "map_densify",
    "map_downsample",
    "module_enter",
    "module_exit",
    "map_global_pool",
    "map_identity",
    "map_module",
    "map_size",
    "map_stochastic_depth",
    "on_values",
    "on_vectors",
    "with_module_hooks",
]


def level_map(levels: Any, features: Tensor, num_levels: int, output_stride: str = "") -> LevelMap:
    """The validated level map of one call, at the first tensor that enters the adaptive part.

    Args:
        levels: a :class:`LevelMap`, an integer tensor ``(N, Hf, Wf)``, or a callable mapping the finest-grid
            features to one of those.
        features: ``(N, C, Hf, Wf)`` dense features at the finest output stride.
        num_levels: ``K`` of the conversion.
        output_stride: the conversion's name (``"8->32"``), for the messages.
    """
    if callable(levels) and not isinstance(levels, (LevelMap, Tensor)):
        levels = levels(features)
    grid = f"the finest grid, here {tuple(features.shape[:1] + features.shape[2:])}"
    needs = f"output_stride {output_stride!r}" if output_stride else "this conversion"
    return LevelMap.checked(levels, num_levels, needs, call="forward(..., levels)", grid=grid, device=features.device)


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
    dispatcher; with ``downsample`` it performs the next step and computes only the survivors. Runs the module's
    hooks."""

    if has_hooks(module):
        return call_with_hooks(module, lambda v: _conv(module, v, tap_spacing, downsample, backend), x)
    return _conv(module, x, tap_spacing, downsample, backend)


def _conv(module: nn.Conv2d, x: MultiResMap, tap_spacing: int, downsample: bool, backend: str | None) -> MultiResMap:
    if isinstance(module, DeformableConv2d):  # its offsets from its offset conv, then the step (docs/semantics.md §7)
        return module.multires(x, tap_spacing=tap_spacing, downsample=downsample, backend=backend)
    return AF.conv2d(x, module.weight, module.bias, tap_spacing, module.groups, downsample, backend)


def map_batch_norm(module: nn.BatchNorm2d, x: MultiResMap) -> MultiResMap:
    """BatchNorm per element (train mode: statistics over the elements, each counting once). Runs the module's
    hooks."""
    if has_hooks(module):
        return call_with_hooks(module, lambda v: AF.batch_norm(v, module), x)
    return AF.batch_norm(x, module)


def _module_values(module: nn.Module, x: MultiResMap) -> MultiResMap:
    values = x.values.clone() if getattr(module, "inplace", False) else x.values
    return x.with_values(module.forward(values))  # forward: the hooks run once, around the map (map_module)


def map_module(module: nn.Module, x: MultiResMap) -> MultiResMap:
    """A per-element module (activation, dropout, channel LayerNorm / Linear) on every element's vector. Runs the
    module's hooks (on the maps).

    An ``inplace`` module works on a copy of the values: map values may be shared by several maps (an identity
    step), which an in-place update would change behind their backs.
    """
    if has_hooks(module):
        return call_with_hooks(module, lambda v: _module_values(module, v), x)
    return _module_values(module, x)


def module_enter(module: nn.Module, x: Any) -> Any:
    """Where the traced forward of a container module (a block, a ``Sequential``, ...) starts: its forward-pre hooks
    on its input ``x`` (a map or a tensor); returns the input its body gets."""
    if not has_hooks(module):
        return x
    return run_forward_pre_hooks(module, (x,), {})[0][0]


def module_exit(module: nn.Module, x: Any, out: Any) -> Any:
    """Where the traced forward of a container module ends: its forward hooks on its input ``x`` (what
    :func:`module_enter` returned) and output ``out``; returns the output."""
    if not has_hooks(module):
        return out
    return run_forward_hooks(module, (x,), {}, out)


def map_conv_bn_act(
    conv: nn.Conv2d,
    bn: nn.BatchNorm2d | None,
    act: nn.Module | None,
    x: MultiResMap,
    residual: MultiResMap | None,
    tap_spacing: int,
    downsample: bool,
    backend: str | None,
    activation: str | None,
    exits: Sequence[tuple[nn.Module, Any]] = (),
) -> MultiResMap:
    """``act(bn(conv(x)) + residual)``: a conv with its BatchNorm, residual add and activation (the converter's
    fusion, each part optional) as one :func:`adatriton.ops.conv_bn_act` call, whose eval-mode epilogue is fused
    (train mode or gradients: the ops one after the other, as unfused).

    ``act`` is the activation's module (None for a functional one), ``activation`` its name. ``exits``: the
    ``(module, input)`` of the container modules whose forward ends with the BatchNorm (before the add: a
    MobileNet block's ``conv`` Sequential), innermost first. Where one of these modules has hooks, the group
    runs unfused, each module through its own op with its hooks, so that they see that module's own input and
    output.
    """
    if has_hooks(conv, bn, act) or (exits and has_hooks(*(m for m, _ in exits))):
        out = map_conv(conv, x, tap_spacing, downsample, backend)
        if bn is not None:
            out = map_batch_norm(bn, out)
        for module, module_input in exits:
            out = module_exit(module, module_input, out)
        if residual is not None:
            out = out + residual
        if act is not None:
            return map_module(act, out)
        return out if activation is None else out.with_values(ACTIVATIONS[activation](out.values))
    params = conv._parameters
    if "weight" in params and "bias" in params:  # the usual tables, read directly: ~1 µs of a ~16 µs eager conv
        weight, bias = params["weight"], params["bias"]
    else:
        weight, bias = conv.weight, conv.bias
    relu = activation == "relu"  # the spelling the eager plans are keyed on first
    return AF.conv_bn_act(
        x, weight, bias, bn, relu, residual, tap_spacing, conv.groups, downsample, backend, None if relu else activation
    )


def map_conv_at(module: nn.Conv2d, x: Tensor, stride: int, dilation: int) -> Tensor:
    """A dense conv at another stride and dilation than its own (:func:`~adatriton.nn.modules.conv_at`), running
    the module's hooks."""
    return call_with_hooks(module, lambda v: conv_at(module, v, stride, dilation), x)


def map_identity(x: Any) -> Any:
    """A module that the conversion turned into the identity (``nn.Identity``, a 1x1 pool, a stride-2 pool past the
    coarsest level or of the dense dilated network), called through :func:`with_module_hooks` so that its hooks
    run."""
    return x


@functools.cache
def with_module_hooks(fn: Callable) -> Callable:
    """``fn(x, *rest)`` standing for a call of a module on ``x``: a wrapper ``apply(module, x, *rest, **kwargs)``
    that runs the module's hooks around it (their input is ``(x,)``), one per ``fn`` (named
    ``with_module_hooks_<fn>`` in the generated code)."""

    def apply(module: nn.Module, x: Any, *rest, **kwargs):
        if not has_hooks(module):
            return fn(x, *rest, **kwargs)
        return call_with_hooks(module, lambda v: fn(v, *rest, **kwargs), x)

    apply.__name__ = apply.__qualname__ = _wrapper_name("with_module_hooks", fn)
    return apply


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
    or the whole batch (``"batch"``) is dropped with probability ``p``, the rest scaled by ``1 / (1 - p)``. Runs the
    module's hooks."""
    if has_hooks(module):
        return call_with_hooks(module, lambda v: _stochastic_depth(module, v), x)
    return _stochastic_depth(module, x)


def _stochastic_depth(module: StochasticDepth, x: MultiResMap) -> MultiResMap:
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
    return dense.permute(*TO_LAST) if channels_last else dense


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
    apply.__wrapped__ = fn  # what the converter's fusion pass reads back
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
