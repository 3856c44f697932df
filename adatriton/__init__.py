"""adatriton: content-adaptive downsampling for CNNs, exact on every backend.

Public API: :class:`LevelMap`, :class:`MultiResMap`, :func:`densify`, :func:`convert`, the ops in
:mod:`adatriton.functional`, and backend selection (:func:`use_backend`, ``$ADATRITON_BACKEND``).
"""

from . import functional
from .backends import BACKENDS, resolve_backend, use_backend
from .convert import convert
from .levelmap import Layout, LevelMap, LevelMapDtypeError, LevelMapError
from .multires import MultiResMap, densify
from .resnet import OUTPUT_STRIDES, AdaptiveResNet

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "OUTPUT_STRIDES",
    "AdaptiveResNet",
    "Layout",
    "LevelMap",
    "LevelMapDtypeError",
    "LevelMapError",
    "MultiResMap",
    "convert",
    "densify",
    "functional",
    "resolve_backend",
    "use_backend",
]
