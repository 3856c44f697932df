"""Drop-in modules: torch layers that also run on multi-resolution maps, and :func:`swap_modules`; a converted model
as a CUDA graph: :func:`cuda_graph`."""

from .graphs import GraphedForward, StaleGraphError, cuda_graph
from .modules import (
    ADAPTIVE_MODULES,
    AdaptiveBatchNorm2d,
    AdaptiveConv2d,
    AdaptiveMaxPool2d,
    AdaptiveReLU,
    DeformableConv2d,
    conv_at,
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
    "conv_at",
    "cuda_graph",
    "make_deformable",
    "swap_modules",
]
