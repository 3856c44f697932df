"""Model conversion: the one entry point that turns a torchvision model into an adaptive one."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import ResNet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck

from ..core.strides import parse_output_stride
from ..runtime.backend import BACKENDS
from .graph import UNSUPPORTED, convert_graph
from .resnet import LAYERS, STEM, AdaptiveResNet
from .segmentation import SEGMENTATION_MODELS, AdaptiveSegmentationModel

__all__ = ["convert"]


def convert(
    model: nn.Module,
    output_stride: str | int,
    backend: str | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    downsampling: str = "top_left",
    example_input=None,
    unsupported: str = "error",
    method: str = "auto",
) -> nn.Module:
    """Convert a torchvision model to run at ``output_stride``, sharing its weights.

    Conversion swaps the model's ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.ReLU`` / ``nn.MaxPool2d`` children,
    recursively and in place, for their drop-in subclasses (:mod:`adatriton.nn.modules`: the same parameter and buffer
    objects, exactly the same outputs on tensors, so the model itself behaves as before), and wraps the model's
    children in a module that runs them at ``output_stride``. No weight is copied.

    Args:
        model: a torchvision ``ResNet`` with bottleneck blocks (ResNet-50/101/152), any
            ``replace_stride_with_dilation``; the ``IntermediateLayerGetter`` over one; or a segmentation model on one:
            torchvision's ``fcn_resnet50/101`` and ``deeplabv3_resnet50/101`` (``FCN`` / ``DeepLabV3``), or
            :func:`adatriton.models.segmentation.fcn` / ``deeplabv3`` / ``deeplabv3plus`` (also on ResNet-152). Any
            other model goes through the ``torch.fx`` graph path (:func:`adatriton.models.graph.convert_graph`:
            MobileNets, EfficientNets, RegNets, VGG, LRASPP, ...), which does not modify it.
        output_stride: ``"8"``, ``"16"``, ``"32"`` (dense networks; the ints ``8``, ``16``, ``32`` mean the same) or
            ``"8->16"``, ``"8->32"``, ``"16->32"`` (adaptive: finest grid at the first stride, downsampled by a level
            map towards the second); the graph path takes any power of two and any ``"a->b"`` with powers of two
            ``a < b``.
        backend: conv backend of the adaptive part (``"torch"``, ``"dense"``, ``"triton"``, ``"auto"``); None
            resolves per call (``adatriton.use_backend``, ``$ADATRITON_BACKEND``, else ``"torch"``). Checked here,
            before anything is converted.
        filter_fn: ``filter_fn(module, fqn) -> bool`` chooses which layers are swapped (``fqn`` is the dotted name
            in ``model``, e.g. ``"layer3.0.conv2"``); None swaps all. The convs of the adaptive layers must be
            swapped (a TypeError says which one is not).
        downsampling: ``"top_left"`` (docs/semantics.md §3: the strided network's subsampling) or ``"softpool"``: every
            2x2 merge from OS8 on (layer3, layer4; adaptive steps and dense strides alike) is a SoftPool, so a uniform
            level map equals the dense network that SoftPools at those strides.
        example_input, unsupported: the graph path's (:class:`~adatriton.models.graph.AdaptiveGraphModule`): an
            input of the model's shape to plan on (default ``(1, C, 512, 512)``), and what to do with a layer the
            rules cannot express (``"error"`` or ``"densify"``).
        method: ``"auto"``: bottleneck ResNets and the segmentation models on them take the ResNet path, every
            other model the ``torch.fx`` graph path (docs/semantics.md §8); ``"graph"`` forces the graph path.

    Raises:
        ValueError: an unknown ``output_stride`` or ``backend`` (the message names the argument, the value given
            and the accepted ones), before the model is touched.
        TypeError: a model of another kind.

    Returns:
        A module with the same state_dict keys and shared parameters (the graph path:
        :class:`~adatriton.models.graph.AdaptiveGraphModule`), whose ``forward(x, levels)`` takes the
        image batch ``(N, 3, H, W)`` and a level map (``LevelMap`` or integer tensor ``(N, Hf, Wf)`` on the finest
        grid; optional for dense strides) and returns what the model returns: logits for a ``ResNet``, the
        getter's ``OrderedDict`` (adaptive layers densified to the finest grid) for an ``IntermediateLayerGetter``
        (:class:`~adatriton.models.AdaptiveResNet`), ``OrderedDict(out=...[, aux=...])`` at the input size for a
        segmentation model (:class:`~adatriton.models.segmentation.AdaptiveSegmentationModel`; heads on the densified
        finest-grid maps).

    Example:
        >>> net = adatriton.convert(torchvision.models.resnet101(), "8->32").eval()
        >>> logits = net(images, levels)          # levels: (N, H/8, W/8) with values in {0, 1, 2}
        >>> seg = adatriton.convert(adatriton.models.segmentation.deeplabv3plus("resnet152"), "8->32").eval()
        >>> masks = seg(images, levels)["out"]    # (N, 21, H, W)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"convert expects the model to convert, an nn.Module (e.g. torchvision.models.resnet50()), got "
            f"{type(model).__name__}"
        )
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise ValueError(f"convert: unknown backend {backend!r}; backend must be one of {list(BACKENDS)} or None")
    if method not in ("auto", "graph"):
        raise ValueError(f"method must be 'auto' or 'graph', got {method!r}")
    resnet = method == "auto" and _bottleneck_resnet(model)
    segmentation = method == "auto" and isinstance(model, SEGMENTATION_MODELS) and _bottleneck_resnet(model.backbone)
    if resnet or segmentation:
        output_stride = parse_output_stride(output_stride)[0]  # raises naming the accepted ones; 8 -> "8"
    if resnet:
        return AdaptiveResNet(model, output_stride, backend, filter_fn, downsampling)
    if segmentation:
        return AdaptiveSegmentationModel(model, output_stride, backend, filter_fn, downsampling)
    if filter_fn is not None or downsampling != "top_left":
        raise ValueError("filter_fn and downsampling apply to bottleneck ResNets; the graph path takes neither")
    if unsupported not in UNSUPPORTED:
        raise ValueError(f"unsupported must be one of {UNSUPPORTED}, got {unsupported!r}")
    return convert_graph(model, output_stride, example_input, backend, unsupported)


def _bottleneck_resnet(model: nn.Module) -> bool:
    """A torchvision ``ResNet`` (or the ``IntermediateLayerGetter`` over one) with bottleneck blocks: the models
    the ResNet path converts."""
    if not isinstance(model, (ResNet, IntermediateLayerGetter)):
        return False
    children = dict(model.named_children())
    if any(name not in children for name in STEM + LAYERS):
        return False
    return all(isinstance(block, Bottleneck) for name in LAYERS for block in children[name])
