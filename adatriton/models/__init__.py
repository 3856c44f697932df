"""Models: adaptive ResNets, segmentation models, the learned-mask model, the D2-Net trunk, checkpoint loaders, and
:func:`~adatriton.models.convert.convert`."""
