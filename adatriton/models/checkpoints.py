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
:func:`adatriton.models.segmentation.deeplabv3plus` uses too. The mapping is decided per key from the target model's own
keys and shapes, so one function loads OS8 (``layer3`` + ``layer4`` adaptive) and OS16 (``layer4``) checkpoints, and
plain torchvision checkpoints as well.

Their learned-mask models (e.g. ``deeplabv3_ad_resnet101``, ``"8->16"``) train ``layer3`` and ``layer4`` on two
paths with shared weights, a dense OS8 one and a dense OS16 one, and store both: ``backbone.layer{3,4}_high_res.*``
(OS8) and ``backbone.layer{3,4}_low_res.*`` (OS16), each with its own BatchNorm running statistics; their evaluation
keeps the ``_low_res`` copy. The estimator is ``backbone.mask_estimator.{0,2,5,7}.*``, the convs of
:class:`~adatriton.masks.LearnedMask` (``mask.layers.{0,2,5,7}.*`` of a
:class:`~adatriton.models.learned.LearnedMaskModel`).

Both loaders read files through :func:`read_checkpoint`, which turns unreadable input into their error type.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.resnet import ResNet

from ..core.strides import parse_output_stride
from .d2net import D2NET_PREFIX, D2Net, D2NetCheckpointError
from .learned import LearnedMaskModel
from .resnet import AdaptiveResNet
from .segmentation import DeepLabHeadV3Plus

__all__ = [
    "BN_PATHS",
    "CheckpointError",
    "D2NetCheckpointError",
    "dilate_head",
    "load_authors_state_dict",
    "load_d2net_state_dict",
    "read_checkpoint",
]

#: Renames of the authors' adaptive bottlenecks to torchvision's (applied together, on whole name segments).
_BLOCK_RENAMES = (
    (re.compile(r"(^|\.)downsample\.conv1\."), r"\1downsample.0."),
    (re.compile(r"(^|\.)downsample\.norm1\."), r"\1downsample.1."),
    (re.compile(r"(^|\.)conv2\.conv\."), r"\1conv2."),
)
#: The authors' FCN / DeepLabv3 heads wrap their Sequential in a ``classifier`` attribute.
_HEAD_UNWRAP = (re.compile(r"^(classifier|aux_classifier)\.classifier\."), r"\1.")
#: The two copies of ``layer3`` / ``layer4`` in the authors' learned-mask checkpoints.
_PATH_LAYER = re.compile(r"(^|\.)(layer[34])_(high_res|low_res)\.")
#: The authors' mask estimator (under the backbone) -> :class:`LearnedMask`'s ``layers``.
_MASK_ESTIMATOR = re.compile(r"^(backbone\.)?mask_estimator\.")
#: Which copy of ``layer3`` / ``layer4`` a learned-mask checkpoint loads: ``bn_path`` of
#: :func:`load_authors_state_dict`.
BN_PATHS = ("low_res", "high_res")
#: The ImageNet classifier of the full ResNet their learned-mask training model keeps as its backbone
#: (``deeplabv3_ad_resnet101(..., eval=False)``); no segmentation model uses it.
_UNUSED_CLASSIFIER = re.compile(r"^backbone\.fc\.(weight|bias)$")
#: Checkpoint dicts of the authors' training script (and common others) hold the weights under one of these.
_WRAPPER_KEYS = ("model_state", "state_dict")
_MAX_LISTED = 20


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read (no such file, empty, truncated, not a ``torch.save`` file, not a state_dict) or
    does not fit the model (missing or unexpected keys in strict mode, shapes that differ)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_checkpoint(
    checkpoint: Mapping[str, object] | str | os.PathLike,
    error: type[Exception] = CheckpointError,
    expected: str = "a state_dict (a mapping of parameter names to tensors)",
) -> Mapping[str, object]:
    """The checkpoint reader of every loader: a mapping as it is, a path through ``torch.load``.

    Files are read on the CPU with ``weights_only=True`` (tensors, numbers, strings and containers only: no code
    runs). Anything that is not a readable mapping raises ``error`` naming the file and what was expected.

    Args:
        checkpoint: a state_dict / checkpoint dict, or the path of a file ``torch.save`` wrote.
        error: the exception type raised (:class:`CheckpointError`, or :class:`D2NetCheckpointError` for D2-Net).
        expected: what the file should hold, for the messages.

    Returns:
        The mapping (not yet unwrapped: the loaders know their wrapper keys).

    Raises:
        error: ``checkpoint`` is None or another non-path, non-mapping object; the file does not exist, is a
            directory, is empty, is truncated or is not a ``torch.save`` file, holds objects ``weights_only``
            refuses, or holds something other than a mapping.
    """
    if isinstance(checkpoint, Mapping):
        return checkpoint
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise error(
            f"checkpoint must be a path to a file written by torch.save or a state_dict mapping, got "
            f"{'None' if checkpoint is None else type(checkpoint).__name__}; expected {expected}"
        )
    path = Path(checkpoint)
    if not path.exists():
        raise error(f"checkpoint file {str(path)!r} does not exist; expected a torch.save file holding {expected}")
    if not path.is_file():
        raise error(f"checkpoint {str(path)!r} is not a file; expected a torch.save file holding {expected}")
    if path.stat().st_size == 0:
        raise error(f"checkpoint file {str(path)!r} is empty (0 bytes); expected a torch.save file holding {expected}")
    with open(path, "rb") as f:
        head = f.read(4)
    where = f"checkpoint file {str(path)!r}"
    wanted = f"expected a torch.save file holding {expected}"
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise error(f"{where} is truncated (an incomplete zip archive, as torch.save writes); {wanted}")
    if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip archive, or a pickle in the legacy format
        raise error(f"{where} is not a torch.save file (it starts with {head!r}); {wanted}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if "weights only load failed" not in str(err).lower():
            raise error(f"{where} could not be unpickled ({_first_line(err)}); {wanted}") from err
        raise error(
            f"{where} holds objects other than tensors, numbers, strings and containers"
            f"{f' ({found.group(1)})' if found else ''}, which torch.load(weights_only=True) refuses; if you trust "
            f"the file, load it with torch.load(path, weights_only=False) and pass the dict; {wanted}"
        ) from err
    except Exception as err:  # a damaged archive or a legacy pickle cut short: say which file and why
        raise error(f"{where} is truncated or damaged ({_first_line(err)}); {wanted}") from err
    if not isinstance(obj, Mapping):
        raise error(f"{where} holds a {type(obj).__name__}; {wanted}")
    return obj


def _candidates(key: str, bn_path: str) -> list[str] | None:
    """Model keys an authors' key may stand for, most literal first; None for the unused copy of a learned-mask
    checkpoint's two ``layer3`` / ``layer4`` paths."""
    path = _PATH_LAYER.search(key)
    if path is not None:
        if path.group(3) != bn_path:
            return None
        key = _PATH_LAYER.sub(r"\1\2.", key)
    if _MASK_ESTIMATOR.match(key):
        layers = _MASK_ESTIMATOR.sub("layers.", key)
        return ["mask." + layers, layers]  # a LearnedMaskModel's estimator, or a LearnedMask on its own
    renamed = key
    for pattern, repl in _BLOCK_RENAMES:
        renamed = pattern.sub(repl, renamed)
    out = [key, renamed]
    pattern, repl = _HEAD_UNWRAP
    out += [pattern.sub(repl, k) for k in (key, renamed)]
    out += ["model." + k for k in out]  # a LearnedMaskModel holds the segmentation model as ``model``
    return list(dict.fromkeys(out))


def _has_classifier_head(model: nn.Module) -> bool:
    """A classification ResNet (plain or converted) with its ``fc`` head, which segmentation checkpoints lack."""
    if isinstance(model, AdaptiveResNet):
        return model.return_layers is None and hasattr(model, "fc")
    return isinstance(model, ResNet)


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
    model: nn.Module,
    state_dict: Mapping[str, object] | str | os.PathLike,
    strict: bool = True,
    prefix: str = "",
    *,
    bn_path: str = "low_res",
    ignore_missing: Sequence[str] | None = None,
) -> nn.modules.module._IncompatibleKeys:
    """Load a state_dict of the authors' released models into a torchvision-layout model.

    ``model`` is a plain or converted (:func:`adatriton.convert`) torchvision ``ResNet``, ``FCN``, ``DeepLabV3``,
    :func:`adatriton.models.segmentation.deeplabv3plus` model, or a
    :class:`~adatriton.models.learned.LearnedMaskModel`; converted and plain models have the same keys. See the
    module docstring for the layouts. Nothing is loaded when an error is raised.

    Key handling, in this order:

    1. A path is read with :func:`read_checkpoint`; a checkpoint dict that holds the weights under
       ``"model_state"`` (the authors' training script) or ``"state_dict"`` is unwrapped.
    2. A leading ``module.`` (``nn.DataParallel`` / DDP) is stripped from every key.
    3. With ``prefix`` (e.g. ``"backbone."`` to load a segmentation checkpoint's backbone into a ``ResNet``), only
       keys that start with it are used, with it removed; the others are ignored, not reported. To load a
       backbone-only checkpoint into a segmentation model, pass ``model.backbone`` as ``model``.
    4. A learned-mask checkpoint's ``layer{3,4}_{high,low}_res.`` keys load the ``bn_path`` copy into ``layer3`` /
       ``layer4`` (the other copy is skipped); ``mask_estimator.<i>.`` keys load into the estimator
       (``mask.layers.<i>.``), and are skipped when the model has none (a plain ``convert(.., "8->16")`` model).
       ``backbone.fc.weight`` / ``backbone.fc.bias``, the ImageNet classifier that the backbone of their
       learned-mask training model (``deeplabv3_ad_resnet101(..., eval=False)``, saved by ``main_e2e_train.py``)
       keeps, are skipped too when the model has no such key: a segmentation model never uses them.
    5. Each key is matched to the model's key that it names literally, or after renaming the authors' adaptive
       bottleneck parts and unwrapping their ``classifier.classifier.`` heads (under ``model.`` for a
       ``LearnedMaskModel``); tensors in the authors' conv layouts are reshaped to the model's.

    Args:
        model: the model to load into.
        state_dict: the authors' state_dict (or their checkpoint dict), or the path of their ``.pth`` file.
        strict: raise if a model key is not in the checkpoint or a checkpoint key has no model key (a missing
            ``num_batches_tracked`` is allowed, as ``load_state_dict`` allows it).
        prefix: see above; ``""`` uses every key.
        bn_path: ``"low_res"`` (the authors' evaluation: the OS16 path's BatchNorm statistics) or ``"high_res"``
            (the OS8 path's): which of a learned-mask checkpoint's two ``layer3`` / ``layer4`` copies loads. Their
            weights are shared in training; their BatchNorm running statistics differ.
        ignore_missing: model key prefixes that may be missing even when ``strict`` (still listed in
            ``missing_keys``). None: ``("fc.",)`` when ``prefix`` is given and ``model`` is a classification
            ``ResNet`` (plain or converted), since a segmentation checkpoint's backbone has no classifier head;
            else nothing.

    Returns:
        What ``model.load_state_dict`` returns: ``missing_keys`` (model keys), ``unexpected_keys`` (checkpoint keys,
        as the checkpoint names them); both empty when ``strict``, except ignored missing keys.

    Raises:
        CheckpointError: (a ``RuntimeError``) naming the missing and unexpected keys (``strict``), shape mismatches
            and checkpoint keys that map to the same model key (always, as ``load_state_dict`` does for shapes);
            and for a checkpoint that cannot be read (see :func:`read_checkpoint`).
    """
    if bn_path not in BN_PATHS:
        raise ValueError(f"bn_path must be one of {BN_PATHS}, got {bn_path!r}")
    state_dict = read_checkpoint(state_dict, CheckpointError, "the authors' state_dict or checkpoint dict")
    for wrapper in _WRAPPER_KEYS:
        if isinstance(state_dict.get(wrapper), Mapping):
            state_dict = state_dict[wrapper]
            break
    if ignore_missing is None:
        ignore_missing = ("fc.",) if prefix and _has_classifier_head(model) else ()
    ignore_missing = tuple(ignore_missing)
    target = model.state_dict()
    has_estimator = any(k.startswith(("mask.layers.", "layers.")) for k in target)
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
        candidates = _candidates(name, bn_path)
        if candidates is None or (not has_estimator and _MASK_ESTIMATOR.match(name)):
            continue  # the other path's copy, or an estimator the model does not have
        match = next((k for k in candidates if k in target), None)
        if match is None and _UNUSED_CLASSIFIER.match(name):
            continue  # their training checkpoint's ImageNet head: nothing here can use it
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
    required = [k for k in missing if not k.startswith(ignore_missing)]
    problems = []
    if strict and required:
        problems.append(f"missing keys (in the model, not in the checkpoint): {_listed(required)}")
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


def _head_modules(model: nn.Module) -> list[nn.Module]:
    """The parts of a segmentation model's heads that read the backbone's output-stride features."""
    if isinstance(model, LearnedMaskModel):
        model = model.model
    heads = [getattr(model, name, None) for name in ("classifier", "aux_classifier")]
    heads = [h for h in heads if h is not None]
    if not heads:
        raise TypeError(f"expected a segmentation model with a classifier head, got {type(model).__name__}")
    # DeepLabv3+'s decoder runs on the OS4 low-level features whatever the backbone's stride: only its ASPP scales.
    return [h.aspp if isinstance(h, DeepLabHeadV3Plus) else h for h in heads]


def _finest_stride(output_stride: int | str) -> int:
    if isinstance(output_stride, bool):
        raise ValueError(f"output stride must be 8, 16, 32 or a conversion name, got {output_stride!r}")
    if isinstance(output_stride, int):
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output stride must be 8, 16 or 32, got {output_stride}")
        return output_stride
    return parse_output_stride(output_stride)[1]  # the heads read the finest grid of an adaptive network


def dilate_head(model: nn.Module, trained_output_stride: int | str, output_stride: int | str) -> nn.Module:
    """Evaluate a segmentation head at another output stride than it was trained at (the authors'
    ``output_stride_from_trained``): every 3x3 conv of the heads gets dilation ``d * trained / evaluated``.

    A head trained on OS16 features and run on OS8 ones (e.g. an OS16 checkpoint in an ``"8->16"`` network, whose
    heads read the OS8 grid) sees its 3x3 taps at the spacing it learned with dilation ``16 / 8 = 2``: on a map
    that repeats each OS16 value over 2x2 OS8 cells, the dilated head gives exactly the OS16 head's output,
    repeated. FCN / DeepLabv3 heads (the ASPP rates and the 3x3 conv after it) and the auxiliary head scale; of a
    DeepLabv3+ head only the ASPP does (its decoder runs on the OS4 ``layer1`` features whatever the backbone's
    stride). Padding follows the dilation (``d * (k // 2)``), so output sizes stay.

    Args:
        model: a plain or converted FCN / DeepLabv3 / DeepLabv3+ model, or a
            :class:`~adatriton.models.learned.LearnedMaskModel`; changed in place.
        trained_output_stride: the output stride the heads were trained at (8, 16 or 32, or a conversion name:
            its finest stride).
        output_stride: the output stride the heads run at now (an adaptive conversion's heads read its finest
            grid: ``"8->16"`` means 8).

    Returns:
        ``model``. The dilations are set relative to those the heads had before the first call, so calling again
        with other strides (or ``trained == evaluated``) does not compound.

    Raises:
        ValueError: a stride that is not 8, 16, 32 or a conversion name, or a dilation that would not be a whole
            number (a head trained at OS8 evaluated at OS16 needs dilations divisible by 2).
    """
    trained, evaluated = _finest_stride(trained_output_stride), _finest_stride(output_stride)
    convs = [
        (f"{type(head).__name__}.{name}", m)
        for head in _head_modules(model)
        for name, m in head.named_modules()
        if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1
    ]
    plan = []
    for name, conv in convs:
        base = conv.__dict__.setdefault("head_base_dilation", tuple(conv.dilation))
        scaled = [d * trained / evaluated for d in base]
        if any(x != int(x) or x < 1 for x in scaled):
            raise ValueError(
                f"{name} has dilation {base}: trained at OS{trained}, evaluated at OS{evaluated} it would need "
                f"dilation {tuple(scaled)}, not whole numbers"
            )
        plan.append((conv, tuple(int(x) for x in scaled)))
    for conv, dilation in plan:
        conv.dilation = dilation
        conv.padding = tuple(d * (k // 2) for d, k in zip(dilation, conv.kernel_size))
    return model


def load_d2net_state_dict(
    model: nn.Module, state_dict: Mapping[str, object] | str | os.PathLike, strict: bool = True
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
        D2NetCheckpointError: (a ``ValueError``) naming the missing, unexpected and mis-shaped keys, or a checkpoint
            that cannot be read (see :func:`read_checkpoint`).
    """
    state_dict = read_checkpoint(state_dict, D2NetCheckpointError, "D2-Net's {'model': state_dict} or a state_dict")
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
