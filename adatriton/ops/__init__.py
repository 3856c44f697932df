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
    eager_plans,
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
    fixed_backend,
    force,
    forced,
    forced_backend,
    is_recording,
    recording,
    select,
)
from .downsample import downsample, softpool2d
from .onnx import ONNX_OPS, export_onnx, global_average_pools, onnx_translation_table, register_onnx_translations
from .pool import avg_downsample, element_areas, global_avg_pool, global_max_pool, layer_norm, linear, per_sample

__all__ = [
    "CPU_CROSSOVER",
    "CPU_GROUPED_CROSSOVER",
    "CUDA_CROSSOVER",
    "Signature",
    "choose",
    "fixed_backend",
    "force",
    "forced",
    "forced_backend",
    "is_recording",
    "recording",
    "select",
    "ACTIVATIONS",
    "EvalStats",
    "MAX_GATHER_BYTES",
    "ONNX_OPS",
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
    "eager_plans",
    "element_areas",
    "eval_stats",
    "export_onnx",
    "folded_bn",
    "gather_conv_torch",
    "global_average_pools",
    "global_avg_pool",
    "global_max_pool",
    "layer_norm",
    "linear",
    "onnx_translation_table",
    "per_sample",
    "register_onnx_translations",
    "relu",
    "softpool2d",
]
