"""Ops on multi-resolution maps, one module per op, each with its torch reference and its custom-op registration.

Importing this package registers the conv custom ops ``adatriton::gather_conv``, ``adatriton::gather_conv_backward``
and ``adatriton::triton_conv``; ``adatriton::densify`` is registered by :mod:`adatriton.core.multires`.
"""

from .batchnorm import ACTIVATIONS, EvalStats, activation_name, add, batch_norm, bn_add_act, eval_stats, relu
from .conv import (
    MAX_GATHER_BYTES,
    autocast_conv_inputs,
    check_conv_args,
    conv2d,
    conv_bn_act,
    folded_bn,
    gather_conv_torch,
)
from .deform import deform_conv2d
from .densify import densify
from .dispatch import (
    CPU_CROSSOVER,
    CPU_GROUPED_CROSSOVER,
    CUDA_CROSSOVER,
    Signature,
    choose,
    force,
    forced,
    recording,
    select,
)
from .downsample import downsample, softpool2d
from .pool import avg_downsample, element_areas, global_avg_pool, global_max_pool, layer_norm, linear, per_sample

__all__ = [
    "CPU_CROSSOVER",
    "CPU_GROUPED_CROSSOVER",
    "CUDA_CROSSOVER",
    "Signature",
    "choose",
    "force",
    "forced",
    "recording",
    "select",
    "ACTIVATIONS",
    "EvalStats",
    "MAX_GATHER_BYTES",
    "activation_name",
    "add",
    "autocast_conv_inputs",
    "avg_downsample",
    "batch_norm",
    "bn_add_act",
    "check_conv_args",
    "conv2d",
    "conv_bn_act",
    "deform_conv2d",
    "densify",
    "downsample",
    "element_areas",
    "eval_stats",
    "folded_bn",
    "gather_conv_torch",
    "global_avg_pool",
    "global_max_pool",
    "layer_norm",
    "linear",
    "per_sample",
    "relu",
    "softpool2d",
]
