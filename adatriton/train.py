"""Training of learned-mask models (:mod:`adatriton.tools.train`)."""

from .tools.train import param_groups, poly_lr, save_checkpoint, train

__all__ = ["param_groups", "poly_lr", "save_checkpoint", "train"]
