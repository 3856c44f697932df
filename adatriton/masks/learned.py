"""The learned-mask estimator (docs/semantics.md §6): a shallow CNN on the ``layer2`` features picks, per OS16 cell,
whether the adaptive network keeps the OS8 resolution there or downsamples to OS16.

:class:`LearnedMask`: 3x3 convs with 128, 64, 64, 2 output channels, ReLU after the first three, a 2x2 max-pool after
the second, and the hard keep/downsample decision (Gumbel-softmax while training, argmax at inference unless sampling
is requested). The segmentation model that trains and uses it is :class:`adatriton.models.learned.LearnedMaskModel`.

Logit convention: channel 0 = keep (OS8), channel 1 = downsample (OS16). The mask ``m`` is the downsample
indicator (1 = downsample).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.levelmap import LevelMap
from ..core.strides import parse_output_stride

__all__ = ["DOWNSAMPLE", "KEEP", "LEARNED_CONVERSION", "LearnedMask", "upsample_mask"]

#: Logit channel of the "keep at OS8" decision.
KEEP = 0
#: Logit channel of the "downsample to OS16" decision.
DOWNSAMPLE = 1
#: The one conversion learned masks support (the paper's learned setting).
LEARNED_CONVERSION = "8->16"


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
    """The mask estimator of docs/semantics.md §6: two logits per OS16 cell from the ``layer2`` (OS8) features.

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
        self,
        features: Tensor,
        output_stride: str = LEARNED_CONVERSION,
        sample: bool | None = None,
        tau: float | None = None,
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
    def levels_from_mask(mask: Tensor, size, output_stride: str = LEARNED_CONVERSION) -> LevelMap:
        """:class:`~adatriton.LevelMap` from a hard downsample indicator ``(N, 1, h16, w16)`` and the OS8 ``size``."""
        key = parse_output_stride(output_stride)[0]
        if key != LEARNED_CONVERSION:
            raise NotImplementedError(
                f"learned masks support output_stride {LEARNED_CONVERSION!r} (the paper's learned setting), "
                f"got {key!r}; "
                f"for 8->32 the estimator would need a decision per 4x4 OS8 block and a second stage"
            )
        h8, w8 = (int(s) for s in size)
        levels = upsample_mask(mask.detach(), h8, w8)[:, 0] > 0.5
        return LevelMap(levels.long().contiguous(), 1)
