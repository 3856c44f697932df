"""Segmentation models on adaptive ResNet backbones (docs/semantics.md §7).

Builders for the paper's models on ResNet-50/101/152 backbones, in torchvision's layout so that
:func:`adatriton.convert` and checkpoints treat them like torchvision's own:

- :func:`fcn`, :func:`deeplabv3`: torchvision's ``FCN`` / ``DeepLabV3`` with ``FCNHead`` / ``DeepLabHead`` (and the
  optional auxiliary ``FCNHead`` on ``layer3``), as ``torchvision.models.segmentation.fcn_resnet50`` and friends
  build them, but also on ResNet-152.
- :func:`deeplabv3plus`: DeepLabv3+ as in the DeepLabV3Plus-Pytorch reference (VainF), which the authors' code
  builds on: ASPP on ``layer4``, a 48-channel projection of ``layer1``, one 3x3 conv on their concatenation.

:class:`AdaptiveSegmentationModel` is what ``convert`` returns for these models (and torchvision's): their graph-path
conversion (the backbone with torchvision's strides back, :func:`graph_source`), the heads run as built on the
densified finest-grid outputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import ResNet
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCN, FCNHead

from ..nn.modules import swap_modules
from .graph import AdaptiveGraphModule
from .resnet import graph_source

__all__ = [
    "BACKBONES",
    "segmentation_heads",
    "AdaptiveSegmentationModel",
    "DeepLabHeadV3Plus",
    "DeepLabV3Plus",
    "deeplabv3",
    "deeplabv3plus",
    "fcn",
]

#: Backbones the builders accept (torchvision builder names).
BACKBONES = ("resnet50", "resnet101", "resnet152")
#: ASPP atrous rates per output stride of the dense network the head was built for (DeepLab's convention).
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}
#: replace_stride_with_dilation of the backbone per output stride (torchvision's segmentation builders: OS8).
_DILATION = {8: [False, True, True], 16: [False, False, True]}


def _resnet(backbone: str, output_stride: int, weights_backbone) -> ResNet:
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {backbone!r}")
    if output_stride not in _DILATION:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    builder = getattr(torchvision.models, backbone)
    return builder(weights=weights_backbone, replace_stride_with_dilation=_DILATION[output_stride])


def _getter(resnet: ResNet, aux: bool) -> IntermediateLayerGetter:
    # Same return_layers (and insertion order) as torchvision's _fcn_resnet / _deeplabv3_resnet.
    return_layers = {"layer4": "out"}
    if aux:
        return_layers["layer3"] = "aux"
    return IntermediateLayerGetter(resnet, return_layers=return_layers)


def fcn(backbone: str = "resnet50", num_classes: int = 21, aux: bool = False, weights_backbone=None) -> FCN:
    """torchvision's FCN (``FCNHead`` on ``layer4``, optional auxiliary ``FCNHead`` on ``layer3``) on a dilated
    ResNet-50/101/152, built as ``torchvision.models.segmentation.fcn_resnet50`` builds it.

    Args:
        backbone: ``"resnet50"``, ``"resnet101"`` or ``"resnet152"``.
        num_classes: output channels of the heads.
        aux: add the auxiliary head on ``layer3`` (the model then returns ``"out"`` and ``"aux"``).
        weights_backbone: torchvision weights for the backbone (e.g. ``"IMAGENET1K_V2"``); None for random weights
            (nothing is downloaded).

    Returns:
        A torchvision ``FCN``; ``forward(x)`` returns ``OrderedDict(out=(N, num_classes, H, W)[, aux=...])``.
    """
    body = _getter(_resnet(backbone, 8, weights_backbone), aux)
    return FCN(body, FCNHead(2048, num_classes), FCNHead(1024, num_classes) if aux else None)


def deeplabv3(
    backbone: str = "resnet50", num_classes: int = 21, aux: bool = False, output_stride: int = 8, weights_backbone=None
) -> DeepLabV3:
    """torchvision's DeepLabv3 (``DeepLabHead``: ASPP + 3x3 conv, optional auxiliary ``FCNHead`` on ``layer3``) on
    a ResNet-50/101/152, built as ``torchvision.models.segmentation.deeplabv3_resnet50`` builds it.

    Args:
        backbone: ``"resnet50"``, ``"resnet101"`` or ``"resnet152"``.
        num_classes: output channels of the heads.
        aux: add the auxiliary head on ``layer3``.
        output_stride: 8 (torchvision's default: ASPP rates 12/24/36, backbone dilated ``[False, True, True]``) or
            16 (rates 6/12/18, dilated ``[False, False, True]``). Only the rates matter after
            :func:`adatriton.convert`, which picks the backbone strides itself.
        weights_backbone: torchvision weights for the backbone; None for random weights.

    Returns:
        A torchvision ``DeepLabV3``; ``forward(x)`` returns ``OrderedDict(out=(N, num_classes, H, W)[, aux=...])``.
    """
    body = _getter(_resnet(backbone, output_stride, weights_backbone), aux)
    head = DeepLabHead(2048, num_classes, ASPP_RATES[output_stride])
    return DeepLabV3(body, head, FCNHead(1024, num_classes) if aux else None)


class DeepLabHeadV3Plus(nn.Module):
    """The DeepLabv3+ head of the DeepLabV3Plus-Pytorch reference (VainF), with the same parameter names.

    ``project``: 1x1 conv of the low-level (``layer1``) features to 48 channels + BN + ReLU; ``aspp``: torchvision's
    ``ASPP`` (256 channels; its dropout set to the reference's 0.1); ``classifier``: 3x3 conv on the concatenation
    (48 + 256 = 304 channels) to 256 + BN + ReLU, then a 1x1 conv to the classes. (The DeepLabv3+ paper uses two
    3x3 convs in the decoder; the reference, and the authors' code built on it, one.)

    Args:
        in_channels: channels of the high-level features (2048 for ResNet-50/101/152 ``layer4``).
        low_level_channels: channels of the low-level features (256 for ``layer1``).
        num_classes: output channels.
        atrous_rates: ASPP rates (12/24/36 at OS8, 6/12/18 at OS16).
    """

    def __init__(
        self, in_channels: int, low_level_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36)
    ):
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(low_level_channels, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(inplace=True)
        )
        self.aspp = ASPP(in_channels, list(atrous_rates))
        self.aspp.project[3].p = 0.1  # the reference's ASPP dropout (torchvision's is 0.5); no parameters change
        self.classifier = nn.Sequential(
            nn.Conv2d(304, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1),
        )
        # The reference's initialisation, so training from scratch starts where it does.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Logits at the low-level resolution.

        Args:
            features: ``"out"``: ``(N, in_channels, h, w)`` high-level features; ``"low_level"``:
                ``(N, low_level_channels, H4, W4)`` low-level features (output stride 4).

        Returns:
            ``(N, num_classes, H4, W4)``.
        """
        low = self.project(features["low_level"])
        high = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, high], dim=1))


def segmentation_heads(
    classifier: nn.Module, aux_classifier: nn.Module | None, features: dict[str, Tensor], input_shape
) -> OrderedDict[str, Tensor]:
    """The part of a segmentation model's forward after the backbone, as torchvision's ``_SimpleSegmentationModel``
    does it: heads, then bilinear upsampling to the input size."""
    # A DeepLabv3+ head reads several backbone outputs; torchvision's heads read "out" only.
    logits = classifier(features if isinstance(classifier, DeepLabHeadV3Plus) else features["out"])
    result = OrderedDict()
    result["out"] = F.interpolate(logits, size=input_shape, mode="bilinear", align_corners=False)
    if aux_classifier is not None:
        aux = aux_classifier(features["aux"])
        result["aux"] = F.interpolate(aux, size=input_shape, mode="bilinear", align_corners=False)
    return result


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ in torchvision's segmentation-model layout: ``backbone`` (an ``IntermediateLayerGetter`` returning
    ``layer4`` as ``"out"`` and ``layer1`` as ``"low_level"``) and ``classifier`` (:class:`DeepLabHeadV3Plus`).

    The state_dict keys are those of the DeepLabV3Plus-Pytorch reference (``backbone.*``, ``classifier.project.*``,
    ``classifier.aspp.*``, ``classifier.classifier.*``). Build one with :func:`deeplabv3plus`.

    Args:
        backbone: ``IntermediateLayerGetter`` over a ResNet with ``{"layer4": "out", "layer1": "low_level"}``.
        classifier: the head.
    """

    def __init__(self, backbone: IntermediateLayerGetter, classifier: DeepLabHeadV3Plus):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = None  # the reference has no auxiliary head; kept for torchvision's interface

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Segment a batch.

        Args:
            x: images ``(N, 3, H, W)``.

        Returns:
            ``OrderedDict(out=(N, num_classes, H, W))``, bilinearly upsampled to the input size.
        """
        return segmentation_heads(self.classifier, self.aux_classifier, self.backbone(x), x.shape[-2:])


def deeplabv3plus(
    backbone: str = "resnet50", num_classes: int = 21, output_stride: int = 8, weights_backbone=None
) -> DeepLabV3Plus:
    """DeepLabv3+ (DeepLabV3Plus-Pytorch reference) on a ResNet-50/101/152.

    Args:
        backbone: ``"resnet50"``, ``"resnet101"`` or ``"resnet152"``.
        num_classes: output channels.
        output_stride: 8 (ASPP rates 12/24/36, backbone dilated ``[False, True, True]``) or 16 (rates 6/12/18,
            dilated ``[False, False, True]``). Only the rates matter after :func:`adatriton.convert`, which picks the
            backbone strides itself.
        weights_backbone: torchvision weights for the backbone; None for random weights.

    Returns:
        A :class:`DeepLabV3Plus`; ``forward(x)`` returns ``OrderedDict(out=(N, num_classes, H, W))``.
    """
    resnet = _resnet(backbone, output_stride, weights_backbone)
    body = IntermediateLayerGetter(resnet, return_layers={"layer4": "out", "layer1": "low_level"})
    return DeepLabV3Plus(body, DeepLabHeadV3Plus(2048, 256, num_classes, ASPP_RATES[output_stride]))


#: Segmentation model classes :class:`AdaptiveSegmentationModel` (and so ``convert``) accepts.
SEGMENTATION_MODELS = (FCN, DeepLabV3, DeepLabV3Plus)


class AdaptiveSegmentationModel(AdaptiveGraphModule):
    """A segmentation model (torchvision ``FCN`` / ``DeepLabV3``, :class:`DeepLabV3Plus`) with an adaptive backbone:
    the graph path's conversion (:class:`~adatriton.models.graph.AdaptiveGraphModule`) of the model with
    torchvision's backbone strides back and its heads run as built (:func:`graph_source`).

    Use :func:`adatriton.convert` to build one. The heads (the model's own ``classifier`` and ``aux_classifier``) run
    densely on the densified finest-grid features (docs/semantics.md §2, §7): ``layer4`` for the main head,
    ``layer3`` for the auxiliary head, the dense ``layer1`` for the DeepLabv3+ decoder. Parameters and state_dict keys
    are the model's; the model is not modified (:func:`~adatriton.models.resnet.restrided`).

    Args:
        model: the segmentation model; its ``backbone`` must be an ``IntermediateLayerGetter`` over a bottleneck
            ResNet (torchvision's ``fcn_resnet50/101``, ``deeplabv3_resnet50/101``, this module's builders).
        output_stride: ``"8"``, ``"16"``, ``"32"`` (dense) or ``"8->16"``, ``"8->32"``, ``"16->32"`` (adaptive).
        backend: conv backend of the adaptive part; None resolves per call.
        filter_fn: None, or ``filter_fn(module, fqn) -> bool`` (``fqn`` in ``model``, e.g.
            ``"backbone.layer3.0.conv2"``): the layers it picks are swapped to their drop-in classes in the model, in
            place, first (exactly :func:`~adatriton.nn.modules.swap_modules`); the conversion runs either kind.
        downsampling: ``"top_left"`` or ``"softpool"`` (every stride-2 conv from OS8 on merges by SoftPool).
        example_input: an image batch of the shape to plan on (default ``(1, 3, 512, 512)``).
    """

    def __init__(
        self,
        model: nn.Module,
        output_stride: str | int,
        backend: str | None = None,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
        downsampling: str = "top_left",
        example_input: Tensor | None = None,
    ):
        if not isinstance(model, SEGMENTATION_MODELS):
            raise TypeError(
                f"expected a torchvision FCN / DeepLabV3 or an adatriton DeepLabV3Plus, got {type(model).__name__}"
            )
        if not isinstance(model.backbone, IntermediateLayerGetter):
            raise TypeError(
                f"the model's backbone must be torchvision's IntermediateLayerGetter over a ResNet, got "
                f"{type(model.backbone).__name__}"
            )
        if filter_fn is not None:
            swap_modules(model, filter_fn)
        source, heads = graph_source(model)
        super().__init__(source, output_stride, example_input, backend, heads=heads, downsampling=downsampling)
