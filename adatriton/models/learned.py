"""Learned masks (docs/semantics.md §6, last-but-one item): a shallow CNN on the ``layer2`` features picks, per OS16
cell, whether the adaptive network keeps the OS8 resolution there or downsamples to OS16.

- :class:`~adatriton.masks.learned.LearnedMask` (in :mod:`adatriton.masks`): the mask estimator.
- :class:`LearnedMaskModel`: a segmentation model plus the estimator. In training mode it runs the authors' scheme:
  ``layer3`` densely at OS8 (dilated) and at OS16 (strided) with shared weights, the two outputs blended at the
  input of ``layer4`` by the hard mask (straight-through gradients), ``layer4`` and the heads at OS8. In eval mode
  the mask becomes a :class:`~adatriton.LevelMap` that drives the ``"8->16"`` adaptive network.

Logit convention: channel 0 = keep (OS8), channel 1 = downsample (OS16). The mask ``m`` is the downsample
indicator (1 = downsample).

Training with these models: :func:`adatriton.tools.train.train`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from ..core.levelmap import LevelMap
from ..masks.learned import DOWNSAMPLE, KEEP, LEARNED_CONVERSION, LearnedMask, upsample_mask
from .convert import convert
from .resnet import restrided
from .segmentation import SEGMENTATION_MODELS, segmentation_heads

__all__ = ["KEEP", "DOWNSAMPLE", "LearnedMask", "LearnedMaskModel", "upsample_mask"]


class LearnedMaskModel(nn.Module):
    """A segmentation model with a learned ``"8->16"`` mask (docs/semantics.md §6).

    Args:
        model: torchvision ``FCN`` / ``DeepLabV3`` or :class:`~adatriton.DeepLabV3Plus` on a bottleneck ResNet, e.g.
            ``adatriton.models.segmentation.deeplabv3("resnet101")`` or
            ``torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None)``. Its backbone's
            own strides do not matter.
        mask: the estimator; None builds a :class:`LearnedMask` for the ``layer2`` width (512).
        backend: conv backend of the adaptive network at inference (see :func:`adatriton.convert`).

    Attributes:
        model: the segmentation model (its parameters are the network's; state_dict keys ``model.*``).
        mask: the estimator (state_dict keys ``mask.*``).
        adaptive_model: ``adatriton.convert(model, "8->16", method="graph")``: the graph path's conversion, sharing
            the weights (not a registered submodule, so the state_dict holds every weight once); it equals the ResNet
            path's exactly (tests/models/test_learned.py).
        last_fraction: fraction of the OS8 grid downsampled by the last forward (a differentiable 0-dim tensor in
            training mode, detached in eval mode).
        last_levels: the last eval forward's :class:`~adatriton.LevelMap` (None after a training forward).

    ``forward(x)`` returns the model's ``OrderedDict(out=...[, aux=...])`` in both modes: :meth:`forward_train` in
    training mode (without the fraction; read ``last_fraction``), :meth:`forward_adaptive` in eval mode.
    """

    def __init__(self, model: nn.Module, mask: LearnedMask | None = None, backend: str | None = None):
        super().__init__()
        if not isinstance(model, SEGMENTATION_MODELS):
            raise TypeError(
                f"expected a torchvision FCN / DeepLabV3 or an adatriton DeepLabV3Plus, got {type(model).__name__}"
            )
        self.model = model
        self.mask = LearnedMask() if mask is None else mask
        # Plain attributes: these wrappers hold the same modules, so registering them would repeat every weight
        # in the state_dict; .to() / .train() reach the shared modules through self.model.
        self.__dict__["adaptive_model"] = convert(model, LEARNED_CONVERSION, backend, method="graph")
        self.last_fraction: Tensor | None = None
        self.last_levels: LevelMap | None = None

    def _stem_to_layer2(self, os8: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(layer1, layer2)`` outputs: dense and identical at OS8 and OS16 (both are strided up to layer2)."""
        x1 = os8.layer1(os8.maxpool(os8.relu(os8.bn1(os8.conv1(x)))))
        return x1, os8.layer2(x1)

    def layer2_features(self, x: Tensor) -> Tensor:
        """The estimator's input: ``layer2`` output ``(N, 512, H8, W8)`` for images ``(N, 3, H, W)``."""
        return self._stem_to_layer2(restrided(self.model.backbone, 8), x)[1]

    def forward_train(
        self, x: Tensor, mask: Tensor | None = None, sample: bool | None = None
    ) -> tuple[OrderedDict[str, Tensor], Tensor]:
        """The authors' training forward: dense OS8 and OS16 ``layer3`` blended at the ``layer4`` input.

        ``x4_in = m_up * up(layer3_os16) + (1 - m_up) * layer3_os8`` with ``m`` the hard downsample mask at OS16,
        ``m_up`` and ``up`` the 2x2 nearest upsampling cropped to the OS8 grid; then ``layer4`` at OS8 (dilated)
        and the heads (an auxiliary head reads ``x4_in``). With ``m = 0`` everywhere this is the dense OS8
        network; with ``m = 1`` everywhere the ``"8->16"`` network at level 1 (exactly for even OS8 grids; at odd
        ones the last row/column of OS16 cells is cropped, which changes the zero padding of ``layer4``).

        Args:
            x: images ``(N, 3, H, W)``.
            mask: override ``(N, 1, h16, w16)`` downsample indicator (tests, ablations); None asks the estimator.
            sample: see :meth:`LearnedMask.hard_mask` (None: Gumbel sampling in training mode, argmax in eval).

        Returns:
            ``(OrderedDict(out=(N, classes, H, W)[, aux=...]), fraction)``: ``fraction`` is the mean of ``m_up``
            (share of the OS8 grid downsampled), differentiable through the straight-through estimator.
        """
        # The backbone as torchvision's dense OS8 and OS16 networks (shallow copies of the re-strided convs, made per
        # call so that they follow any change to the model; parameters and BatchNorms are the model's).
        os8, os16 = restrided(self.model.backbone, 8), restrided(self.model.backbone, 16)
        x1, x2 = self._stem_to_layer2(os8, x)
        if mask is None:
            mask = self.mask.hard_mask(self.mask(x2), sample=sample)
        h8, w8 = x2.shape[-2:]
        m_up = upsample_mask(mask, h8, w8).to(x2.dtype)
        x3_os8 = os8.layer3(x2)
        x3_os16 = upsample_mask(os16.layer3(x2), h8, w8)
        x3 = m_up * x3_os16 + (1 - m_up) * x3_os8
        x4 = os8.layer4(x3)
        by_layer = {"layer1": x1, "layer2": x2, "layer3": x3, "layer4": x4}
        features = {out: by_layer[layer] for layer, out in os8.return_layers.items()}
        fraction = m_up.float().mean()  # float32 also under autocast: counts up to 2^24 cells stay exact
        self.last_fraction, self.last_levels = fraction, None
        return segmentation_heads(self.model.classifier, self.model.aux_classifier, features, x.shape[-2:]), fraction

    def forward_adaptive(
        self, x: Tensor, sample: bool | None = None, levels: LevelMap | None = None
    ) -> OrderedDict[str, Tensor]:
        """Inference: the estimator's level map drives the ``"8->16"`` adaptive network.

        The estimator reads the ``layer2`` features the adaptive network computes anyway (its level map is
        predicted inside the backbone's forward), so the stem, ``layer1`` and ``layer2`` run once.

        Args:
            x: images ``(N, 3, H, W)``.
            sample: see :meth:`LearnedMask.hard_mask` (None: argmax in eval mode).
            levels: override level map (K=1, OS8 grid); None asks the estimator.

        Returns:
            The adaptive model's ``OrderedDict(out=(N, classes, H, W)[, aux=...])``. ``last_levels`` holds the level
            map and ``last_fraction`` its level-1 share.
        """

        def predict(features: Tensor) -> LevelMap:
            with torch.no_grad():
                self.last_levels = self.mask.level_map(features, LEARNED_CONVERSION, sample=sample)
            return self.last_levels

        self.last_levels = levels
        out = self.adaptive_model(x, predict if levels is None else levels)
        self.last_fraction = torch.tensor(float(self.last_levels.fractions()[1]))
        return out

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """:meth:`forward_train` in training mode (fraction in ``last_fraction``), :meth:`forward_adaptive` in eval."""
        if self.training:
            return self.forward_train(x)[0]
        return self.forward_adaptive(x)
