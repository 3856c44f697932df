"""Learned masks (SPEC §6, last-but-one item): a shallow CNN on the ``layer2`` features picks, per OS16 cell,
whether the adaptive network keeps the OS8 resolution there or downsamples to OS16.

- :class:`LearnedMask`: the mask estimator (3x3 convs with 128, 64, 64, 2 output channels, ReLU after the first
  three, a 2x2 max-pool after the second) and the hard keep/downsample decision (Gumbel-softmax while training,
  argmax at inference unless sampling is requested).
- :class:`LearnedMaskModel`: a segmentation model plus the estimator. In training mode it runs the authors' scheme:
  ``layer3`` densely at OS8 (dilated) and at OS16 (strided) with shared weights, the two outputs blended at the
  input of ``layer4`` by the hard mask (straight-through gradients), ``layer4`` and the heads at OS8. In eval mode
  the mask becomes a :class:`~adatriton.LevelMap` that drives the ``"8->16"`` adaptive network.

Logit convention: channel 0 = keep (OS8), channel 1 = downsample (OS16). The mask ``m`` is the downsample
indicator (1 = downsample).

Training with these models: :func:`adatriton.train.train`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convert import convert
from .levelmap import LevelMap
from .resnet import AdaptiveResNet, dense_bottleneck, parse_output_stride
from .segmentation import SEGMENTATION_MODELS, _heads

__all__ = ["KEEP", "DOWNSAMPLE", "LearnedMask", "LearnedMaskModel", "upsample_mask"]

#: Logit channel of the "keep at OS8" decision.
KEEP = 0
#: Logit channel of the "downsample to OS16" decision.
DOWNSAMPLE = 1

_SUPPORTED = "8->16"


def upsample_mask(mask: Tensor, height: int, width: int) -> Tensor:
    """An OS16 map repeated over its 2x2 OS8 cells and cropped to the OS8 grid.

    The crop matches the ceil halving of the strided convs: OS16 cell ``i`` covers OS8 cells ``2i`` and ``2i + 1``.

    Args:
        mask: ``(N, C, ceil(height / 2), ceil(width / 2))``.
        height: OS8 grid height ``H8``.
        width: OS8 grid width ``W8``.

    Returns:
        ``(N, C, height, width)``.
    """
    return mask.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[:, :, :height, :width]


class LearnedMask(nn.Module):
    """The mask estimator of SPEC §6: two logits per OS16 cell from the ``layer2`` (OS8) features.

    Args:
        in_channels: channels of the ``layer2`` features (512 for ResNet-50/101/152).
        tau: Gumbel-softmax temperature (the paper's 1).

    Channel :data:`KEEP` (0) of the logits is "keep at OS8", channel :data:`DOWNSAMPLE` (1) "downsample to OS16".
    """

    def __init__(self, in_channels: int = 512, tau: float = 1.0):
        super().__init__()
        self.tau = float(tau)
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, 128, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            # ceil_mode: an odd OS8 size gives the ceil(H8 / 2) cells of the strided network's OS16 grid.
            nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 2, 3, padding=1),
        )

    def forward(self, features: Tensor) -> Tensor:
        """Keep/downsample logits.

        Args:
            features: ``layer2`` output ``(N, in_channels, H8, W8)``.

        Returns:
            ``(N, 2, ceil(H8 / 2), ceil(W8 / 2))``: channel 0 keep, channel 1 downsample.
        """
        return self.layers(features)

    def hard_mask(self, logits: Tensor, tau: float | None = None, sample: bool | None = None) -> Tensor:
        """The hard downsample indicator, with straight-through gradients where autograd is on.

        Args:
            logits: ``(N, 2, h16, w16)`` from :meth:`forward`.
            tau: softmax temperature; None uses ``self.tau``.
            sample: draw with the Gumbel-softmax (the training scheme); False takes the argmax (deterministic,
                ties keep). None samples in training mode and takes the argmax in eval mode.

        Returns:
            ``(N, 1, h16, w16)`` in ``{0, 1}`` (1 = downsample), the logits' dtype. Its gradient is that of the
            (Gumbel-)softmax probability of downsampling (straight-through estimator).
        """
        tau = self.tau if tau is None else float(tau)
        if sample is None:
            sample = self.training
        if sample:
            return F.gumbel_softmax(logits, tau=tau, hard=True, dim=1)[:, DOWNSAMPLE : DOWNSAMPLE + 1]
        soft = F.softmax(logits / tau, dim=1)
        hard = F.one_hot(logits.argmax(dim=1), 2).permute(0, 3, 1, 2).to(logits.dtype)
        # The same straight-through form as gumbel_softmax(hard=True): value of `hard`, gradient of `soft`.
        return (hard - soft.detach() + soft)[:, DOWNSAMPLE : DOWNSAMPLE + 1]

    @torch.no_grad()
    def level_map(
        self, features: Tensor, output_stride: str = _SUPPORTED, sample: bool | None = None, tau: float | None = None
    ) -> LevelMap:
        """Level map on the OS8 grid from the ``layer2`` features.

        Args:
            features: ``(N, in_channels, H8, W8)``.
            output_stride: only ``"8->16"`` (the paper's learned setting).
            sample: see :meth:`hard_mask`.
            tau: see :meth:`hard_mask`.

        Returns:
            :class:`~adatriton.LevelMap` ``(N, H8, W8)`` with K=1: each OS16 cell's decision on its 2x2 OS8 cells
            (downsample -> level 1), cropped at odd sizes.
        """
        return self.levels_from_mask(self.hard_mask(self(features), tau, sample), features.shape[-2:], output_stride)

    @staticmethod
    def levels_from_mask(mask: Tensor, size, output_stride: str = _SUPPORTED) -> LevelMap:
        """:class:`~adatriton.LevelMap` from a hard downsample indicator ``(N, 1, h16, w16)`` and the OS8 ``size``."""
        key = parse_output_stride(output_stride)[0]
        if key != _SUPPORTED:
            raise NotImplementedError(
                f"learned masks support output_stride {_SUPPORTED!r} (the paper's learned setting), got {key!r}; "
                f"for 8->32 the estimator would need a decision per 4x4 OS8 block and a second stage"
            )
        h8, w8 = (int(s) for s in size)
        levels = upsample_mask(mask.detach(), h8, w8)[:, 0] > 0.5
        return LevelMap(levels.long().contiguous(), 1)


class LearnedMaskModel(nn.Module):
    """A segmentation model with a learned ``"8->16"`` mask (SPEC §6).

    Args:
        model: torchvision ``FCN`` / ``DeepLabV3`` or :class:`~adatriton.DeepLabV3Plus` on a bottleneck ResNet, e.g.
            ``adatriton.segmentation.deeplabv3("resnet101")`` or ``torchvision.models.segmentation
            .deeplabv3_resnet50(weights=None, weights_backbone=None)``. Its backbone's own strides do not matter.
        mask: the estimator; None builds a :class:`LearnedMask` for the ``layer2`` width (512).
        backend: conv backend of the adaptive network at inference (see :func:`adatriton.convert`).

    Attributes:
        model: the segmentation model (its parameters are the network's; state_dict keys ``model.*``).
        mask: the estimator (state_dict keys ``mask.*``).
        adaptive_model: ``adatriton.convert(model, "8->16")``, sharing the weights (not a registered submodule, so the
            state_dict holds every weight once).
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
        self.__dict__["adaptive_model"] = convert(model, _SUPPORTED, backend)
        self.__dict__["_os8"] = AdaptiveResNet(model.backbone, "8")
        self.__dict__["_os16"] = AdaptiveResNet(model.backbone, "16")
        self.last_fraction: Tensor | None = None
        self.last_levels: LevelMap | None = None

    def _stem_to_layer2(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(layer1, layer2)`` outputs: dense and identical at OS8 and OS16 (both are strided up to layer2)."""
        net = self._os8
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        outputs = []
        for name, plans in zip(("layer1", "layer2"), net.plans[:2]):
            for block, plan in zip(getattr(net, name), plans):
                x = dense_bottleneck(block, x, plan)
            outputs.append(x)
        return outputs[0], outputs[1]

    @staticmethod
    def _layer(net: AdaptiveResNet, index: int, x: Tensor) -> Tensor:
        name = f"layer{index + 1}"
        for block, plan in zip(getattr(net, name), net.plans[index]):
            x = dense_bottleneck(block, x, plan)
        return x

    def layer2_features(self, x: Tensor) -> Tensor:
        """The estimator's input: ``layer2`` output ``(N, 512, H8, W8)`` for images ``(N, 3, H, W)``."""
        return self._stem_to_layer2(x)[1]

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
        x1, x2 = self._stem_to_layer2(x)
        if mask is None:
            mask = self.mask.hard_mask(self.mask(x2), sample=sample)
        h8, w8 = x2.shape[-2:]
        m_up = upsample_mask(mask, h8, w8).to(x2.dtype)
        x3_os8 = self._layer(self._os8, 2, x2)
        x3_os16 = upsample_mask(self._layer(self._os16, 2, x2), h8, w8)
        x3 = m_up * x3_os16 + (1 - m_up) * x3_os8
        x4 = self._layer(self._os8, 3, x3)
        by_layer = {"layer1": x1, "layer2": x2, "layer3": x3, "layer4": x4}
        features = {out: by_layer[layer] for layer, out in self._os8.return_layers.items()}
        fraction = m_up.mean()
        self.last_fraction, self.last_levels = fraction, None
        return _heads(self.model.classifier, self.model.aux_classifier, features, x.shape[-2:]), fraction

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
                self.last_levels = self.mask.level_map(features, _SUPPORTED, sample=sample)
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
