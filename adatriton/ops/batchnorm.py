"""Per-element BatchNorm, ReLU, residual add, and the unfused conv epilogue ``act(bn(x) + residual)``."""

from __future__ import annotations

from torch import nn

from ..core.multires import MultiResMap

__all__ = ["add", "batch_norm", "bn_add_act", "foldable", "relu"]


def batch_norm(x: MultiResMap, bn: nn.modules.batchnorm._BatchNorm) -> MultiResMap:
    """Apply a BatchNorm module per element; in training mode statistics are over elements, each counting once.

    The module's own forward runs (running-stat updates, momentum, ``num_batches_tracked``), on the values
    viewed as ``(E, C, 1, 1)``.
    """
    e, c = x.values.shape
    return x.with_values(bn(x.values.reshape(e, c, 1, 1)).reshape(e, c))


def relu(x: MultiResMap) -> MultiResMap:
    return x.relu()


def add(x: MultiResMap, y: MultiResMap) -> MultiResMap:
    """Residual add of two maps on the same layout."""
    return x + y


def foldable(bn: nn.Module | None) -> bool:
    """Eval-mode BatchNorm with running statistics is a per-channel affine map, foldable into the epilogue."""
    return bn is None or (not bn.training and bn.running_mean is not None and bn.running_var is not None)


def bn_add_act(
    x: MultiResMap,
    bn: nn.modules.batchnorm._BatchNorm | None = None,
    relu: bool = False,
    residual: MultiResMap | None = None,
) -> MultiResMap:
    """``act(bn(x) + residual)`` op by op: the epilogue of :func:`conv_bn_act` when it is not fused."""
    if bn is not None:
        x = batch_norm(x, bn)
    if residual is not None:
        x = x + residual
    return x.relu() if relu else x
