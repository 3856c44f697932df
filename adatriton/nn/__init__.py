"""Drop-in modules: torch layers that also run on multi-resolution maps, :func:`swap_modules` and
:func:`copied_with`; a converted model as a CUDA graph: :func:`cuda_graph`; module hooks for the modules a converted
network runs on maps: :func:`call_with_hooks`, :func:`has_hooks`, :func:`hooks_silenced`."""

from .graphs import GraphedForward, StaleGraphError, cuda_graph
from .hooks import call_with_hooks, has_hooks, hooks_silenced, run_forward_hooks, run_forward_pre_hooks
from .modules import (
    ADAPTIVE_MODULES,
    AdaptiveBatchNorm2d,
    AdaptiveConv2d,
    AdaptiveMaxPool2d,
    AdaptiveReLU,
    DeformableConv2d,
    conv_at,
    copied_with,
    make_deformable,
    swap_modules,
)

__all__ = [
    "ADAPTIVE_MODULES",
    "AdaptiveBatchNorm2d",
    "AdaptiveConv2d",
    "AdaptiveMaxPool2d",
    "AdaptiveReLU",
    "DeformableConv2d",
    "GraphedForward",
    "StaleGraphError",
    "call_with_hooks",
    "conv_at",
    "copied_with",
    "cuda_graph",
    "has_hooks",
    "hooks_silenced",
    "make_deformable",
    "run_forward_hooks",
    "run_forward_pre_hooks",
    "swap_modules",
]
