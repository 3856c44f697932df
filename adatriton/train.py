"""Training of learned-mask models (:mod:`adatriton.tools.train`): one process or many (``torchrun``, DDP)."""

from .tools.train import (
    SyncAdaptiveBatchNorm2d,
    SyncBatchNorm2d,
    convert_sync_batchnorm,
    param_groups,
    poly_lr,
    save_checkpoint,
    train,
)

__all__ = [
    "SyncAdaptiveBatchNorm2d",
    "SyncBatchNorm2d",
    "convert_sync_batchnorm",
    "param_groups",
    "poly_lr",
    "save_checkpoint",
    "train",
]
