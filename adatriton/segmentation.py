"""Segmentation models on (adaptive) ResNets (:mod:`adatriton.models.segmentation`)."""

from .models.segmentation import (
    BACKBONES,
    AdaptiveSegmentationModel,
    DeepLabHeadV3Plus,
    DeepLabV3Plus,
    deeplabv3,
    deeplabv3plus,
    fcn,
)

__all__ = [
    "AdaptiveSegmentationModel",
    "BACKBONES",
    "DeepLabHeadV3Plus",
    "DeepLabV3Plus",
    "deeplabv3",
    "deeplabv3plus",
    "fcn",
]
