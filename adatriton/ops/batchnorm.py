"""Per-element BatchNorm, ReLU, residual add, and the unfused conv epilogue ``act(bn(x) + residual)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.multires import MultiResMap, expect_map
from ..runtime.host import module_attrs

__all__ = ["ACTIVATIONS", "EvalStats", "activation_name", "add", "batch_norm", "bn_add_act", "eval_stats", "relu"]

#: ``(weight, bias, running_mean, running_var, eps)`` of an eval-mode BatchNorm (``weight`` / ``bias`` None without
#: ``affine``): what the conv epilogue applies.
EvalStats = tuple[Tensor | None, Tensor | None, Tensor, Tensor, float]

#: The activations of the conv epilogue by name: each is the torch function the fused epilogue equals.
ACTIVATIONS = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu}


def activation_name(activation: str | None, relu: bool = False) -> str | None:
    """The one activation that ``activation=`` and the older spelling ``relu=True`` ask for (None: none).

    Raises:
        ValueError: an unknown name, or ``relu=True`` with another activation.
    """
    if activation is None:
        return "relu" if relu else None
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: the conv epilogue has {', '.join(ACTIVATIONS)} (or None)")
    if relu and activation != "relu":
        raise ValueError(f"relu=True and activation={activation!r} ask for two activations: pass one of them")
    return activation


def batch_norm(x: MultiResMap, bn: nn.modules.batchnorm._BatchNorm) -> MultiResMap:
    """Apply a BatchNorm module per element; in training mode statistics are over elements, each counting once.

    The module's own forward runs (running-stat updates, momentum, ``num_batches_tracked``), on the values
    viewed as ``(E, C, 1, 1)``; its hooks do not (a converted network runs them with the map:
    :func:`adatriton.nn.hooks.call_with_hooks`).
    """
    expect_map(x, "batch_norm")
    e, c = x.values.shape
    stats = eval_stats(bn) if torch.compiler.is_compiling() else None
    if stats is not None:
        # Inside a compiled or exported graph the element count may be an unbacked size (LevelMap.layout), on which
        # the module's forward guards (is the input empty?); the eval-mode op without that check computes the same.
        weight, bias, mean, var, eps = stats
        out = torch.ops.aten._native_batch_norm_legit_no_training(x.values, weight, bias, mean, var, 0.0, eps)[0]
        return x.with_values(out)
    # forward, not __call__: the module's hooks are the caller's to run, with the map (adatriton.nn.hooks)
    return x.with_values(bn.forward(x.values.reshape(e, c, 1, 1)).reshape(e, c))


def relu(x: MultiResMap) -> MultiResMap:
    """ReLU of every element's vector."""
    expect_map(x, "relu")
    return x.relu()


def add(x: MultiResMap, y: MultiResMap) -> MultiResMap:
    """Residual add of two maps on the same layout."""
    expect_map(x, "add")
    expect_map(y, "add", "y")
    return x + y


def eval_stats(bn: nn.Module) -> EvalStats | None:
    """The tensors of an eval-mode BatchNorm with running statistics (a per-channel affine map, foldable into a conv's
    epilogue), read at this call; None in training mode or without running statistics.
    """
    if bn.training:
        return None
    weight, bias, mean, var = module_attrs(bn, "weight", "bias", "running_mean", "running_var")
    if mean is None or var is None:
        return None
    return weight, bias, mean, var, bn.eps


def bn_add_act(
    x: MultiResMap,
    bn: nn.modules.batchnorm._BatchNorm | None = None,
    relu: bool = False,
    residual: MultiResMap | None = None,
    activation: str | None = None,
) -> MultiResMap:
    """``act(bn(x) + residual)`` op by op: the epilogue of :func:`conv_bn_act` when it is not fused (``relu=True``
    is the spelling of ``activation="relu"``, see :func:`activation_name`)."""
    expect_map(x, "bn_add_act")
    if residual is not None:
        expect_map(residual, "bn_add_act", "residual")
    activation = activation_name(activation, relu)
    if bn is not None:
        x = batch_norm(x, bn)
    if residual is not None:
        x = x + residual
    return x if activation is None else x.with_values(ACTIVATIONS[activation](x.values))
