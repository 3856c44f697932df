"""Optional dependencies, imported where they are used: ``import adatriton`` and the op path need only torch,
torchvision, triton and numpy.

- extra ``bench``: pandas (tables of ``count_macs``, ``explain``, ``tune_model``, calibration), matplotlib (plots),
  tqdm (progress bars);
- extra ``masks``: OpenCV (SIFT keypoints, HPatches images) and scikit-image (bundled photographs);
- extra ``deploy``: onnx, onnxscript and onnxruntime (ONNX export, :mod:`adatriton.ops.onnx`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

#: Top-level module -> the extra that installs it.
EXTRAS = {
    "pandas": "bench",
    "matplotlib": "bench",
    "tqdm": "bench",
    "cv2": "masks",
    "skimage": "masks",
    "onnx": "deploy",
    "onnxscript": "deploy",
    "onnxruntime": "deploy",
    "onnx_ir": "deploy",
}


def require(module: str) -> ModuleType:
    """Import ``module`` (e.g. ``"pandas"``, ``"tqdm.auto"``), or say which extra installs it.

    Raises:
        ImportError: naming the module and the extra (``pip install 'adatriton[<extra>]'``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.partition(".")[0]
        extra = EXTRAS.get(top)
        hint = f"; install the '{extra}' extra: pip install 'adatriton[{extra}]'" if extra else ""
        raise ImportError(f"this needs {top}, which is not installed{hint}") from err
