"""Drop-in calls: a mask source attached to a converted model, so that ``net(images)`` builds its own level map.

:func:`attach_mask` (what ``adatriton.convert(model, output_stride, mask=...)`` calls) keeps the source on the
converted model; each model's forward asks :func:`attached_levels` for the level map where it resolves ``levels``.

A mask source is any callable ``source(images, output_stride) -> LevelMap`` (or an integer tensor on the finest
grid), e.g. ``adatriton.masks.edges(fraction=0.3)`` (a :class:`~adatriton.masks.MaskSource`), called on the model's
input batch ``(N, 3, H, W)`` with the conversion's name. A source whose ``reads`` attribute is ``"features"`` is
called ``source(features, output_stride)`` on the dense finest-grid features instead (the input of the adaptive
part, computed once); a :class:`~adatriton.masks.LearnedMask` is such a source (through its
:meth:`~adatriton.masks.LearnedMask.level_map`, argmax decisions).

The source is kept outside the module tree (a plain attribute, not a submodule): the converted model's state_dict
keys stay the original model's, with or without a source, and a :class:`~adatriton.masks.LearnedMask`'s weights
are saved and loaded with the estimator itself (or with the :class:`~adatriton.models.LearnedMaskModel` that holds
it as ``mask``). For the same reason ``net.to(device)`` / ``net.eval()`` do not reach an attached estimator: move it
with the model yourself (its level map is taken by argmax whatever its mode).

Under ``torch.compile`` an image source runs eagerly (``torch.compiler.disable``: a graph break), so its
data-dependent search (e.g. ``fraction=``) is not traced; ``torch.export`` and ONNX exports take ``levels``
explicitly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core.levelmap import LevelMap
from ..core.strides import canonical_stride
from ..masks.learned import LEARNED_CONVERSION, LearnedMask

__all__ = ["attach_mask", "attached_levels", "mask_source_of"]

# The attribute that holds the source, set through ``__dict__`` so that nn.Module does not register an
# nn.Module source (LearnedMask) as a submodule (which would add its weights to the converted model's state_dict).
_ATTRIBUTE = "mask_source"


def _reads_features(source: Any) -> bool:
    return isinstance(source, LearnedMask) or getattr(source, "reads", "images") == "features"


def attach_mask(net: nn.Module, mask: Any) -> nn.Module:
    """Attach a mask source to a converted model (or replace it; None detaches), in place.

    Args:
        net: a converted model with an adaptive ``output_stride`` (:class:`~adatriton.models.AdaptiveResNet`,
            :class:`~adatriton.models.AdaptiveSegmentationModel`, :class:`~adatriton.models.AdaptiveGraphModule`).
        mask: ``source(images, output_stride) -> LevelMap`` (e.g. ``adatriton.masks.edges(fraction=0.3)``), a
            source with ``reads = "features"``, a :class:`~adatriton.masks.LearnedMask` (``"8->16"`` only), or
            None.

    Returns:
        ``net``, whose ``forward(x)`` without ``levels`` now calls the source; an explicit ``levels`` still wins.

    Raises:
        TypeError: ``mask`` is not callable.
        ValueError: ``net``'s output stride is dense (it needs no level map), or a source's own check refuses the
            conversion (a :class:`~adatriton.masks.MaskSource` of the wrong conversion, a ``LearnedMask`` at another
            conversion than ``"8->16"``).
    """
    if mask is None:
        net.__dict__.pop(_ATTRIBUTE, None)
        return net
    if not callable(mask):
        raise TypeError(
            f"mask must be a mask source, a callable (images, output_stride) -> LevelMap such as "
            f"adatriton.masks.edges(fraction=0.3), or a LearnedMask; got {type(mask).__name__}"
        )
    output_stride = getattr(net, "output_stride", None)
    if not getattr(net, "adaptive", False):
        raise ValueError(
            f"mask= needs an adaptive output_stride such as '8->32' (a level map to build); output_stride "
            f"{output_stride!r} is dense and takes no level map"
        )
    if isinstance(mask, LearnedMask):
        if canonical_stride(output_stride) != LEARNED_CONVERSION:
            raise ValueError(
                f"a LearnedMask decides between OS8 and OS16: it serves output_stride {LEARNED_CONVERSION!r}, not "
                f"{output_stride!r}"
            )
    elif callable(getattr(mask, "check", None)):
        mask.check(output_stride)
    net.__dict__[_ATTRIBUTE] = mask
    return net


def mask_source_of(net: nn.Module) -> Any:
    """The mask source attached to ``net`` (:func:`attach_mask`), or None."""
    return net.__dict__.get(_ATTRIBUTE)


@torch.compiler.disable
def _from_images(source: Any, images: Tensor, output_stride: str) -> Any:
    levels = source(images, output_stride)
    if isinstance(levels, (LevelMap, Tensor)) and levels.device != images.device:
        levels = levels.to(images.device)  # e.g. a synthetic map, made on the CPU
    return levels


def attached_levels(net: nn.Module, levels: Any, images: Any) -> Any:
    """The ``levels`` a forward of ``net`` runs with: ``levels`` when given, else the attached source's.

    Args:
        net: the converted model (its ``output_stride`` is passed to the source).
        levels: what the caller passed (None when left out).
        images: the model's input batch.

    Returns:
        ``levels`` if not None or no source is attached; else the source's level map of ``images`` (an image
        source), or a callable ``features -> LevelMap`` (a source that reads features), which the forwards call on
        the finest-grid features.
    """
    source = mask_source_of(net)
    if levels is not None or source is None:
        return levels
    output_stride = net.output_stride
    if isinstance(source, LearnedMask):
        return lambda features: source.level_map(features, output_stride, sample=False)
    if _reads_features(source):
        return lambda features: source(features, output_stride)
    if not isinstance(images, Tensor):
        raise TypeError(f"the attached mask source needs an image batch (N, 3, H, W), got {type(images).__name__}")
    return _from_images(source, images, output_stride)
