"""adatriton: content-adaptive downsampling for CNNs, exact on every backend.

The names most programs need live here: :class:`LevelMap`, :class:`MultiResMap`, :func:`densify`, :func:`convert`,
backend selection (:func:`use_backend`, ``$ADATRITON_BACKEND``) and :func:`explain`, :func:`count_macs`,
:func:`load_authors_state_dict`, the drop-in modules (:class:`AdaptiveConv2d` and friends, :func:`swap_modules`,
:func:`make_deformable`) and the models. Everything else is public in the package of its layer (the README's
"Package map"), each package's ``__init__`` listing its names: :mod:`adatriton.ops` (the ops on multi-resolution
maps), :mod:`adatriton.runtime` (settings, the per-layer ``"auto"`` dispatcher, caches), :mod:`adatriton.core`,
:mod:`adatriton.nn`, :mod:`adatriton.masks`, :mod:`adatriton.models`, :mod:`adatriton.analysis`,
:mod:`adatriton.eval` (HPatches, matching) and :mod:`adatriton.tools` (autotuning, calibration, training).
"""

from . import masks
from .analysis.explain import explain
from .analysis.macs import count_macs
from .core.layout import Layout
from .core.levelmap import LevelMap, LevelMapDtypeError, LevelMapError, LevelMapExportError
from .core.multires import MultiResMap
from .core.strides import OUTPUT_STRIDES
from .models.checkpoints import CheckpointError, load_authors_state_dict, load_d2net_state_dict
from .models.convert import ConversionWarning, convert
from .models.d2net import D2Net, D2NetCheckpointError
from .models.resnet import AdaptiveResNet
from .models.segmentation import AdaptiveSegmentationModel, DeepLabV3Plus
from .nn.modules import (
    AdaptiveBatchNorm2d,
    AdaptiveConv2d,
    AdaptiveMaxPool2d,
    AdaptiveReLU,
    DeformableConv2d,
    make_deformable,
    swap_modules,
)
from .ops.densify import densify
from .runtime.backend import BACKENDS, resolve_backend, use_backend

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
    "LevelMapExportError",
    "MultiResMap",
    "OUTPUT_STRIDES",
    "ConversionWarning",
    "convert",
    "count_macs",
    "densify",
    "explain",
    "load_authors_state_dict",
    "load_d2net_state_dict",
    "make_deformable",
    "masks",
    "resolve_backend",
    "swap_modules",
    "use_backend",
]

