"""adatriton: content-adaptive downsampling for CNNs, exact on every backend.

Public API: :class:`LevelMap`, :class:`MultiResMap`, :func:`densify`, :func:`convert`, the ops in
:mod:`adatriton.functional`, backend selection (:func:`use_backend`, ``$ADATRITON_BACKEND``, the per-layer ``"auto"``
dispatcher :mod:`adatriton.dispatch` and :func:`explain`), segmentation models (:mod:`adatriton.segmentation`), mask
sources (:mod:`adatriton.masks`) and :func:`load_authors_state_dict`.
"""

from . import dispatch, functional, masks, segmentation
from .backends import BACKENDS, resolve_backend, use_backend
from .checkpoints import CheckpointError, load_authors_state_dict
from .convert import convert
from .dispatch import explain
from .levelmap import Layout, LevelMap, LevelMapDtypeError, LevelMapError
from .multires import MultiResMap, densify
from .resnet import OUTPUT_STRIDES, AdaptiveResNet
from .segmentation import AdaptiveSegmentationModel, DeepLabV3Plus

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "OUTPUT_STRIDES",
    "AdaptiveResNet",
    "AdaptiveSegmentationModel",
    "CheckpointError",
    "DeepLabV3Plus",
    "Layout",
    "LevelMap",
    "LevelMapDtypeError",
    "LevelMapError",
    "MultiResMap",
    "convert",
    "densify",
    "dispatch",
    "explain",
    "functional",
    "load_authors_state_dict",
    "masks",
    "resolve_backend",
    "segmentation",
    "use_backend",
]
