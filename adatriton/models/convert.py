"""Model conversion: the one entry point that turns a torchvision model into an adaptive one."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import ResNet
from torchvision.models._utils import IntermediateLayerGetter

from ..core.strides import OUTPUT_STRIDES, parse_output_stride
from ..runtime.backend import BACKENDS
from .resnet import AdaptiveResNet
from .segmentation import SEGMENTATION_MODELS, AdaptiveSegmentationModel

__all__ = ["convert"]


def convert(
    model: nn.Module,
    output_stride: str | int,
    backend: str | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    downsampling: str = "top_left",
) -> nn.Module:
    """Convert a torchvision model to run at ``output_stride``, sharing its weights.

    Conversion swaps the model's ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.ReLU`` / ``nn.MaxPool2d`` children,
    recursively and in place, for their drop-in subclasses (:mod:`adatriton.nn.modules`: the same parameter and buffer
    objects, exactly the same outputs on tensors, so the model itself behaves as before), and wraps the model's
    children in a module that runs them at ``output_stride``. No weight is copied.

    Args:
        model: a torchvision ``ResNet`` with bottleneck blocks (ResNet-50/101/152), any
            ``replace_stride_with_dilation``; the ``IntermediateLayerGetter`` over one; or a segmentation model on
            one: torchvision's ``fcn_resnet50/101`` and ``deeplabv3_resnet50/101`` (``FCN`` / ``DeepLabV3``), or
            :func:`adatriton.segmentation.fcn` / ``deeplabv3`` / ``deeplabv3plus`` (also on ResNet-152).
        output_stride: ``"8"``, ``"16"``, ``"32"`` (dense networks; the ints ``8``, ``16``, ``32`` mean the same) or
            ``"8->16"``, ``"8->32"``, ``"16->32"`` (adaptive: finest grid at the first stride, downsampled by a level
            map towards the second).
        backend: conv backend of the adaptive part (``"torch"``, ``"dense"``, ``"triton"``, ``"auto"``); None
            resolves per call (``adatriton.use_backend``, ``$ADATRITON_BACKEND``, else ``"torch"``). Checked here,
            before anything is converted.
        filter_fn: ``filter_fn(module, fqn) -> bool`` chooses which layers are swapped (``fqn`` is the dotted name
            in ``model``, e.g. ``"layer3.0.conv2"``); None swaps all. The convs of the adaptive layers must be
            swapped (a TypeError says which one is not).
        downsampling: ``"top_left"`` (docs/semantics.md §3: the strided network's subsampling) or ``"softpool"``: every
        2x2
            merge from OS8 on (layer3, layer4; adaptive steps and dense strides alike) is a SoftPool, so a uniform
            level map equals the dense network that SoftPools at those strides.

    Raises:
        ValueError: an unknown ``output_stride`` or ``backend`` (the message names the argument, the value given
            and the accepted ones), before the model is touched.
        TypeError: a model of another kind.

    Returns:
        A module with the same state_dict keys and shared parameters, whose ``forward(x, levels)`` takes the
        image batch ``(N, 3, H, W)`` and a level map (``LevelMap`` or integer tensor ``(N, Hf, Wf)`` on the finest
        grid; optional for dense strides) and returns what the model returns: logits for a ``ResNet``, the
        getter's ``OrderedDict`` (adaptive layers densified to the finest grid) for an ``IntermediateLayerGetter``
        (:class:`~adatriton.resnet.AdaptiveResNet`), ``OrderedDict(out=...[, aux=...])`` at the input size for a
        segmentation model (:class:`~adatriton.segmentation.AdaptiveSegmentationModel`; heads on the densified
        finest-grid maps).

    Example:
        >>> net = adatriton.convert(torchvision.models.resnet101(), "8->32").eval()
        >>> logits = net(images, levels)          # levels: (N, H/8, W/8) with values in {0, 1, 2}
        >>> seg = adatriton.convert(adatriton.segmentation.deeplabv3plus("resnet152"), "8->32").eval()
        >>> masks = seg(images, levels)["out"]    # (N, 21, H, W)
    """
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise ValueError(f"convert: unknown backend {backend!r}; backend must be one of {list(BACKENDS)} or None")
    output_stride = parse_output_stride(output_stride)[0]  # raises naming the accepted ones; 8 -> "8"
    if isinstance(model, (ResNet, IntermediateLayerGetter)):
        return AdaptiveResNet(model, output_stride, backend, filter_fn, downsampling)
    if isinstance(model, SEGMENTATION_MODELS):
        return AdaptiveSegmentationModel(model, output_stride, backend, filter_fn, downsampling)
    raise TypeError(
        f"convert supports torchvision ResNet models (bottleneck ResNet-50/101/152) and FCN / DeepLabV3 / "
        f"DeepLabV3+ segmentation models on them, got {type(model).__name__}; output strides: {list(OUTPUT_STRIDES)}"
    )
