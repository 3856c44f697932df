"""adatriton: content-adaptive downsampling for CNNs, exact on every backend.

The names most programs need live here: :class:`LevelMap`, :class:`MultiResMap`, :func:`densify`, :func:`convert`,
backend selection (:func:`use_backend`, ``$ADATRITON_BACKEND``) and :func:`explain`, :func:`count_macs`,
:func:`load_authors_state_dict`, the drop-in modules (:class:`AdaptiveConv2d` and friends, :func:`swap_modules`,
:func:`make_deformable`) and the models. Everything else is public in the package of its layer (the README's
"Package map"), each package's ``__init__`` listing its names: :mod:`adatriton.ops` (the ops on multi-resolution
maps), :mod:`adatriton.runtime` (settings, the per-layer ``"auto"`` dispatcher, caches), :mod:`adatriton.core`,
:mod:`adatriton.nn`, :mod:`adatriton.masks`, :mod:`adatriton.models`, :mod:`adatriton.analysis`,
:mod:`adatriton.eval` (HPatches, matching) and :mod:`adatriton.tools` (autotuning, calibration, training, the
``python -m adatriton.run`` command); :mod:`adatriton.viz` draws level maps (:func:`adatriton.viz.overlay`).
"""

import importlib
import importlib.util
import sys
from pathlib import Path


def _bind_kernels_of_this_tree() -> None:
    """Load ``adatriton.kernels`` from the ``kernels/`` beside this package when the package sits in a source tree.

    An editable install maps ``adatriton.kernels`` to the ``kernels/`` of the clone it was made from, so a second
    clone that borrows that venv would otherwise run its own ``adatriton`` on the first clone's kernels. A source tree
    is recognised by the ``pyproject.toml`` beside ``kernels/``; a wheel has ``adatriton/kernels/`` inside the
    package and no such file, and is left to the normal import.
    """
    root = Path(__file__).resolve().parent.parent
    init = root / "kernels" / "__init__.py"
    name = f"{__name__}.kernels"
    if name in sys.modules or not (init.is_file() and (root / "pyproject.toml").is_file()):
        return
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    globals()["kernels"] = module


# Before the imports below, the first that load kernels; the submodules then come from `module.__path__`.
_bind_kernels_of_this_tree()

from . import masks, viz
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
from .nn.graphs import GraphedForward, StaleGraphError, cuda_graph
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
    "GraphedForward",
    "Layout",
    "LevelMap",
    "LevelMapDtypeError",
    "LevelMapError",
    "LevelMapExportError",
    "MultiResMap",
    "OUTPUT_STRIDES",
    "ConversionWarning",
    "StaleGraphError",
    "convert",
    "count_macs",
    "cuda_graph",
    "densify",
    "explain",
    "load_authors_state_dict",
    "load_d2net_state_dict",
    "make_deformable",
    "masks",
    "resolve_backend",
    "swap_modules",
    "use_backend",
    "viz",
]
