"""Ops on multi-resolution maps, one module per op, each with its torch reference and its custom-op registration.

Importing this package registers the ``adatriton::*`` custom ops (``gather_conv``, ``gather_conv_backward``,
``triton_conv``, ``densify``).
"""

from .batchnorm import add, batch_norm, bn_add_act, relu
from .conv import conv2d, conv_bn_act
from .deform import deform_conv2d
from .densify import densify
from .downsample import downsample, softpool2d

__all__ = [
    "add",
    "batch_norm",
    "bn_add_act",
    "conv2d",
    "conv_bn_act",
    "deform_conv2d",
    "densify",
    "downsample",
    "relu",
    "softpool2d",
]
