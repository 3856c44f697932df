"""Learned masks: the estimator (:mod:`adatriton.masks.learned`) and the model (:mod:`adatriton.models.learned`)."""

from .masks.learned import DOWNSAMPLE, KEEP, LearnedMask, upsample_mask
from .models.learned import LearnedMaskModel

__all__ = ["DOWNSAMPLE", "KEEP", "LearnedMask", "LearnedMaskModel", "upsample_mask"]
