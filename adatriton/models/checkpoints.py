"""Loading released checkpoints: the authors' segmentation models (:func:`load_authors_state_dict`) and D2-Net's
VGG trunk (:func:`load_d2net_state_dict`).

Hesse et al.'s code (``visinf/cad``) into torchvision-layout models:

Their segmentation models are DeepLabV3Plus-Pytorch (VainF) models whose adaptive ResNet stages (``layer3`` and
``layer4`` for OS8 -> 32, ``layer4`` for OS16 -> 32) store their weights in another layout:

- 1x1 convs ``conv1``, ``conv3``: Conv1d weights ``(Cout, Cin, 1)`` (torchvision: ``(Cout, Cin, 1, 1)``);
- 3x3 conv ``conv2``: ``conv2.conv.weight`` of shape ``(Cout, Cin, 9, 1)``, tap index ``3 * ky + kx``
  (torchvision: ``conv2.weight``, ``(Cout, Cin, 3, 3)``);
- strided shortcut: ``downsample.conv1`` (Conv1d) and ``downsample.norm1`` (torchvision: ``downsample.0`` /
  ``downsample.1``);
- BatchNorm: BatchNorm1d under torchvision's names, same shapes;
- FCN / DeepLabv3 heads: ``classifier.classifier.<i>`` (torchvision: ``classifier.<i>``).

The stem (``conv1`` 7x7, ``bn1``) and the dense stages keep torchvision's names and shapes; DeepLabv3+ heads keep the
reference's names (``classifier.project``, ``.aspp``, ``.classifier``), which
:func:`adatriton.models.segmentation.deeplabv3plus` uses too. The mapping is decided per key from the target model's
own keys
and shapes, so one function loads OS8 (``layer3`` + ``layer4`` adaptive) and OS16 (``layer4``) checkpoints, and plain
torchvision checkpoints as well.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .d2net import D2NET_PREFIX, D2Net, D2NetCheckpointError

__all__ = ["CheckpointError", "D2NetCheckpointError", "load_authors_state_dict", "load_d2net_state_dict"]

#: Renames of the authors' adaptive bottlenecks to torchvision's (applied together, on whole name segments).
_BLOCK_RENAMES = (
    (re.compile(r"(^|\.)downsample\.conv1\."), r"\1downsample.0."),
    (re.compile(r"(^|\.)downsample\.norm1\."), r"\1downsample.1."),
    (re.compile(r"(^|\.)conv2\.conv\."), r"\1conv2."),
)
#: The authors' FCN / DeepLabv3 heads wrap their Sequential in a ``classifier`` attribute.
_HEAD_UNWRAP = (re.compile(r"^(classifier|aux_classifier)\.classifier\."), r"\1.")
#: Checkpoint dicts of the authors' training script (and common others) hold the weights under one of these.
_WRAPPER_KEYS = ("model_state", "state_dict")
_MAX_LISTED = 20


class CheckpointError(RuntimeError):
    """A checkpoint does not fit the model: missing or unexpected keys (strict), or shapes that differ."""


def _candidates(key: str) -> list[str]:
    """Model keys an authors' key may stand for, most literal first."""
    renamed = key
    for pattern, repl in _BLOCK_RENAMES:
        renamed = pattern.sub(repl, renamed)
    out = [key, renamed]
    pattern, repl = _HEAD_UNWRAP
    out += [pattern.sub(repl, k) for k in (key, renamed)]
    return list(dict.fromkeys(out))


def _fit(value: Tensor, shape: tuple[int, ...]) -> Tensor | None:
    """``value`` in the target ``shape`` if it is that tensor in the authors' layout, else None."""
    if tuple(value.shape) == shape:
        return value
    if len(shape) != 4 or value.numel() != math.prod(shape):
        return None
    cout, cin, kh, kw = shape
    # (Cout, Cin, kh*kw, 1) with tap 3*ky + kx is the row-major flattening of (kh, kw): a reshape restores it.
    layouts = [(cout, cin, kh * kw, 1)] + ([(cout, cin, 1)] if kh == kw == 1 else [])
    return value.reshape(shape) if tuple(value.shape) in layouts else None


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def load_authors_state_dict(
    model: nn.Module, state_dict: Mapping[str, object], strict: bool = True, prefix: str = ""
) -> nn.modules.module._IncompatibleKeys:
    """Load a state_dict of the authors' released models into a torchvision-layout model.

    ``model`` is a plain or converted (:func:`adatriton.convert`) torchvision ``ResNet``, ``FCN``, ``DeepLabV3``, or
    :func:`adatriton.models.segmentation.deeplabv3plus` model; converted and plain models have the same keys. See the
    module docstring for the layouts. Nothing is loaded when an error is raised.

    Key handling, in this order:

    1. A checkpoint dict that holds the weights under ``"model_state"`` (the authors' training script) or
       ``"state_dict"`` is unwrapped.
    2. A leading ``module.`` (``nn.DataParallel`` / DDP) is stripped from every key.
    3. With ``prefix`` (e.g. ``"backbone."`` to load a segmentation checkpoint's backbone into a ``ResNet``), only
       keys that start with it are used, with it removed; the others are ignored, not reported. To load a
       backbone-only checkpoint into a segmentation model, pass ``model.backbone`` as ``model``.
    4. Each key is matched to the model's key that it names literally, or after renaming the authors' adaptive
       bottleneck parts and unwrapping their ``classifier.classifier.`` heads; tensors in the authors' conv layouts
       are reshaped to the model's.

    Args:
        model: the model to load into.
        state_dict: the authors' state_dict (or their checkpoint dict).
        strict: raise if a model key is not in the checkpoint or a checkpoint key has no model key (a missing
            ``num_batches_tracked`` is allowed, as ``load_state_dict`` allows it).
        prefix: see above; ``""`` uses every key.

    Returns:
        What ``model.load_state_dict`` returns: ``missing_keys`` (model keys), ``unexpected_keys`` (checkpoint keys,
        as the checkpoint names them); both empty when ``strict``.

    Raises:
        CheckpointError: (a ``RuntimeError``) naming the missing and unexpected keys (``strict``), shape mismatches
            and checkpoint keys that map to the same model key (always, as ``load_state_dict`` does for shapes).
    """
    for wrapper in _WRAPPER_KEYS:
        if isinstance(state_dict.get(wrapper), Mapping):
            state_dict = state_dict[wrapper]
            break
    target = model.state_dict()
    mapped: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    duplicated: list[str] = []
    for key, value in state_dict.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if prefix:
            if not name.startswith(prefix):
                continue
            name = name[len(prefix) :]
        match = next((k for k in _candidates(name) if k in target), None)
        if match is None or not isinstance(value, Tensor):
            unexpected.append(key)
            continue
        if match in mapped:
            duplicated.append(f"{source[match]} and {key} both map to {match}")
            continue
        fitted = _fit(value, tuple(target[match].shape))
        if fitted is None:
            mismatched.append(
                f"{key}: checkpoint shape {tuple(value.shape)}, model {match} {tuple(target[match].shape)}"
            )
            continue
        mapped[match], source[match] = fitted, key
    # load_state_dict fills a missing BatchNorm num_batches_tracked itself (checkpoints from before it existed).
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    problems = []
    if strict and missing:
        problems.append(f"missing keys (in the model, not in the checkpoint): {_listed(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys (in the checkpoint, not in the model): {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listed(mismatched)}")
    if duplicated:
        problems.append(f"ambiguous keys: {_listed(duplicated)}")
    if problems:
        raise CheckpointError(
            f"error(s) loading the authors' state_dict into {type(model).__name__}:\n  " + "\n  ".join(problems)
        )
    result = model.load_state_dict(mapped, strict=False)
    result.unexpected_keys.extend(unexpected)
    return result


def load_d2net_state_dict(
    model: nn.Module, state_dict: Mapping[str, object] | str | Path, strict: bool = True
) -> nn.modules.module._IncompatibleKeys:
    """Load the authors' D2-Net weights (or a VGG ``features`` state_dict) into a D2Net trunk.

    Args:
        model: a :class:`D2Net`, a torchvision VGG, or a VGG ``features`` Sequential.
        state_dict: the checkpoint: a path to ``d2_tf.pth`` (loaded with ``weights_only=True`` on the CPU), the
            dict ``{"model": state_dict}`` it holds, or the state_dict itself. Keys
            ``dense_feature_extraction.model.<i>.<param>`` (D2-Net), ``features.<i>.<param>`` (torchvision VGG,
            this module) or ``<i>.<param>``; a leading ``module.`` (DataParallel) is stripped.
        strict: raise on keys of the checkpoint that are not trunk parameters and on trunk parameters the
            checkpoint lacks. Mis-shaped tensors always raise.

    Returns:
        ``(missing_keys, unexpected_keys)`` in the model's naming, as :meth:`nn.Module.load_state_dict` does.

    Raises:
        D2NetCheckpointError: (a ``ValueError``) naming the missing, unexpected and mis-shaped keys.
    """
    if isinstance(state_dict, (str, Path)):
        state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise D2NetCheckpointError(f"expected a state_dict mapping or a checkpoint path, got {type(state_dict)}")
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    if isinstance(model, D2Net):
        target, prefix = model.features, "features."
    elif isinstance(model, nn.Sequential):
        target, prefix = model, ""
    elif isinstance(getattr(model, "features", None), nn.Sequential):
        target, prefix = model.features, "features."
    else:
        raise D2NetCheckpointError(f"expected a D2Net, a torchvision VGG or a features Sequential, got {type(model)}")
    own = target.state_dict()
    mapped: dict[str, Tensor] = {}
    unexpected, mis_shaped = [], []
    for key, value in state_dict.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        for head in (D2NET_PREFIX, "features."):
            if name.startswith(head):
                name = name[len(head) :]
                break
        if name not in own or not isinstance(value, Tensor):
            unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(own[name].shape):
            mis_shaped.append(f"{key}: checkpoint {tuple(value.shape)}, model {tuple(own[name].shape)}")
            continue
        mapped[name] = value
    missing = [prefix + k for k in own if k not in mapped]
    problems = []
    if mis_shaped:
        problems.append(f"mis-shaped: {_listed(mis_shaped)}")
    if strict and missing:
        problems.append(f"missing: {_listed(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected: {_listed(unexpected)}")
    if problems:
        raise D2NetCheckpointError("the checkpoint does not fit the D2-Net trunk; " + "; ".join(problems))
    target.load_state_dict(mapped, strict=False)
    return nn.modules.module._IncompatibleKeys(missing, unexpected)
