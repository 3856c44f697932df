"""Ops on multi-resolution maps, one module per op, each with its torch reference and its custom-op registration.

Importing this package registers the conv custom ops ``adatriton::gather_conv``, ``adatriton::gather_conv_backward``
and ``adatriton::triton_conv``; ``adatriton::densify`` is registered by :mod:`adatriton.core.multires`.
"""

from .batchnorm import add, batch_norm, bn_add_act, relu
from .conv import conv2d, conv_bn_act
from .deform import deform_conv2d
from .densify import densify
from .downsample import downsample, softpool2d
from .pool import avg_downsample, element_areas, global_avg_pool, global_max_pool, layer_norm, linear, per_sample

__all__ = [
    "add",
    "avg_downsample",
    "batch_norm",
    "bn_add_act",
    "conv2d",
    "conv_bn_act",
    "deform_conv2d",
    "densify",
    "downsample",
    "element_areas",
    "global_avg_pool",
    "global_max_pool",
    "layer_norm",
    "linear",
    "per_sample",
    "relu",
    "softpool2d",
]
