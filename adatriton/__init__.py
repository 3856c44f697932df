"""adatriton: content-adaptive downsampling for CNNs, exact on every backend.

Public API: :class:`LevelMap`, :class:`MultiResMap`, :func:`densify`, :func:`convert`, the ops in
:mod:`adatriton.functional`, backend selection (:func:`use_backend`, ``$ADATRITON_BACKEND``, the per-layer ``"auto"``
dispatcher :mod:`adatriton.dispatch` and :func:`explain`), segmentation models (:mod:`adatriton.segmentation`), mask
sources (:mod:`adatriton.masks`), :func:`load_authors_state_dict`, drop-in modules (:mod:`adatriton.modules`:
:class:`AdaptiveConv2d` and friends, :func:`swap_modules`, :func:`make_deformable`), :func:`count_macs`, and the
D2-Net / VGG-16 case study (:mod:`adatriton.d2net`, :mod:`adatriton.hpatches`).
"""

from . import d2net, dispatch, functional, hpatches, masks, modules, segmentation
from .backends import BACKENDS, resolve_backend, use_backend
from .checkpoints import CheckpointError, load_authors_state_dict
from .convert import convert
from .d2net import D2Net, D2NetCheckpointError, load_d2net_state_dict
from .dispatch import explain
from .levelmap import Layout, LevelMap, LevelMapDtypeError, LevelMapError
from .macs import count_macs
from .modules import (
    AdaptiveBatchNorm2d,
    AdaptiveConv2d,
    AdaptiveMaxPool2d,
    AdaptiveReLU,
    DeformableConv2d,
    make_deformable,
    swap_modules,
)
from .multires import MultiResMap, densify
from .resnet import OUTPUT_STRIDES, AdaptiveResNet
from .segmentation import AdaptiveSegmentationModel, DeepLabV3Plus

__version__ = "0.1.0"

__all__ = [
    "AdaptiveBatchNorm2d",
    "AdaptiveConv2d",
    "AdaptiveMaxPool2d",
    "AdaptiveReLU",
    "AdaptiveResNet",
    "AdaptiveSegmentationModel",
    "BACKENDS",
    "CheckpointError",
    "D2Net",
    "D2NetCheckpointError",
    "DeepLabV3Plus",
    "DeformableConv2d",
    "Layout",
    "LevelMap",
    "LevelMapDtypeError",
    "LevelMapError",
    "MultiResMap",
    "OUTPUT_STRIDES",
    "convert",
    "count_macs",
    "d2net",
    "densify",
    "dispatch",
    "explain",
    "functional",
    "hpatches",
    "load_authors_state_dict",
    "load_d2net_state_dict",
    "make_deformable",
    "masks",
    "modules",
    "resolve_backend",
    "segmentation",
    "swap_modules",
    "use_backend",
]
