"""Operations on multi-resolution maps (docs/semantics.md §3), each exact on every backend: the public facade of
:mod:`adatriton.ops`.

Shapes: a :class:`~adatriton.MultiResMap` holds ``(E, C)`` values; conv weights are ``(Cout, Cin / groups, k, k)``
as in :func:`torch.nn.functional.conv2d`.
"""

from .ops.batchnorm import add, batch_norm, bn_add_act, relu
from .ops.conv import conv2d, conv_bn_act
from .ops.deform import deform_conv2d
from .ops.downsample import downsample, softpool2d
from .ops.pool import avg_downsample, element_areas, global_avg_pool, global_max_pool, layer_norm, linear, per_sample

__all__ = [
    "conv2d",
    "conv_bn_act",
    "bn_add_act",
    "downsample",
    "softpool2d",
    "deform_conv2d",
    "batch_norm",
    "relu",
    "add",
    "avg_downsample",
    "element_areas",
    "global_avg_pool",
    "global_max_pool",
    "layer_norm",
    "linear",
    "per_sample",
]
