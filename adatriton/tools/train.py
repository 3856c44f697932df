"""Fine-tuning a segmentation model with a learned mask (docs/semantics.md §6): the authors' recipe in one function,
in one process or many (``torchrun``, DistributedDataParallel), in float32 or under autocast; and the same loop for
any converted model with a loss of the user's (``train(net, data, loss_fn=...)``).

:func:`train` runs :meth:`~adatriton.models.learned.LearnedMaskModel.forward_train` (OS8 and OS16 ``layer3`` blended by
the hard Gumbel mask) on the batches of a dataset, minimising

    ``cross_entropy(out, label, ignore_index) + mask_weight * (fraction downsampled - gamma)^2``

with SGD (momentum 0.9, weight decay 1e-4) and three learning rates (backbone 0.01, heads 0.1, mask estimator
0.001) under the poly schedule ``lr * (1 - it / max_iters) ** 0.9``.

Any other model (a converted :class:`~adatriton.models.AdaptiveResNet`, segmentation or graph-path model, or any
``nn.Module``) trains with ``loss_fn(outputs, targets)`` on ``net(images)`` (its attached mask source builds the level
maps: ``adatriton.convert(..., mask=...)``) or ``net(images, levels_fn(images))``, with the same SGD, schedule,
checkpoints, resume, DDP and autocast; its parameters form one group at ``lr_backbone``.

Distributed training: under ``torchrun`` (or any initialised ``torch.distributed`` process group with more than one
process) the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (unless it already is), every
process reads its own shard of the dataset (:class:`~torch.utils.data.distributed.DistributedSampler`, reshuffled per
epoch), the logged loss and mask fraction are averaged over the processes, and only rank 0 writes checkpoints.
``sync_batchnorm=True`` synchronises the BatchNorm statistics of training over the processes
(:func:`convert_sync_batchnorm`; on CPU / gloo as well as on CUDA / NCCL).
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from ..models.checkpoints import CheckpointError, read_checkpoint
from ..models.learned import LearnedMaskModel
from ..nn.modules import AdaptiveBatchNorm2d
from ..runtime.extras import require

__all__ = [
    "SyncAdaptiveBatchNorm2d",
    "SyncBatchNorm2d",
    "convert_sync_batchnorm",
    "param_groups",
    "poly_lr",
    "save_checkpoint",
    "train",
]


def poly_lr(base_lr: float, iteration: int, max_iters: int, power: float = 0.9) -> float:
    """``base_lr * (1 - iteration / max_iters) ** power`` (DeepLab's poly schedule), 0 from ``max_iters`` on."""
    return base_lr * max(0.0, 1.0 - iteration / max_iters) ** power


def param_groups(
    model: LearnedMaskModel | nn.Module, lr_backbone: float, lr_head: float, lr_mask: float
) -> list[dict[str, object]]:
    """SGD parameter groups, each with its ``initial_lr``: for a :class:`~adatriton.models.learned.LearnedMaskModel`
    backbone, heads (main and auxiliary) and mask estimator; for any other model one group ``"model"`` of its
    parameters that require gradients, at ``lr_backbone``."""
    if not isinstance(model, LearnedMaskModel):
        group = {"name": "model", "params": [p for p in model.parameters() if p.requires_grad], "lr": lr_backbone}
        group["initial_lr"] = lr_backbone
        return [group]
    seg = model.model
    heads = [p for m in (seg.classifier, seg.aux_classifier) if m is not None for p in m.parameters()]
    groups = [
        {"name": "backbone", "params": list(seg.backbone.parameters()), "lr": lr_backbone},
        {"name": "head", "params": heads, "lr": lr_head},
        {"name": "mask", "params": list(model.mask.parameters()), "lr": lr_mask},
    ]
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """``torch.save`` to a temporary file in the same folder, then an atomic rename: a crash never leaves a
    truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------- SyncBatchNorm
def _world(group=None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """``dist.all_reduce(SUM)`` with its gradient: the sum over the processes of the incoming gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _sync_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Training-mode BatchNorm with the statistics of the whole distributed batch (two differentiable all-reduces:
    sums and count, then squared deviations), running statistics updated as ``nn.BatchNorm2d`` does."""
    group = bn.process_group or dist.group.WORLD
    c = x.shape[1]
    xf = x.float() if x.element_size() < 4 else x  # statistics in float32 at least, also under autocast
    dims = [0, *range(2, x.dim())]
    count = torch.tensor([x.numel() // c], dtype=xf.dtype, device=x.device)
    first = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]), group)
    n = first[c]
    mean = first[:c] / n
    shape = (1, c) + (1,) * (x.dim() - 2)
    centred = xf - mean.view(shape)
    var = _AllReduceSum.apply(centred.square().sum(dims), group) / n  # biased, for normalising
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var * (n / (n - 1).clamp(min=1))
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
    out = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        out = out * bn.weight.to(xf.dtype).view(shape) + bn.bias.to(xf.dtype).view(shape)
    return out.to(x.dtype)


class _SyncStatistics:
    """Mixin: in training mode, with more than one process, dense tensors are normalised with the statistics of
    the whole distributed batch; everything else is the parent's forward."""

    process_group = None

    def forward(self, x):
        if self.training and isinstance(x, Tensor) and x.dim() >= 2 and _world(self.process_group) > 1:
            return _sync_batch_norm(self, x)
        return super().forward(x)


class SyncBatchNorm2d(_SyncStatistics, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with synchronised training statistics (CPU / gloo and CUDA / NCCL alike)."""


class SyncAdaptiveBatchNorm2d(_SyncStatistics, AdaptiveBatchNorm2d):
    """:class:`~adatriton.AdaptiveBatchNorm2d` with synchronised training statistics; multi-resolution maps are
    normalised per element (through the same forward on their ``(E, C, 1, 1)`` values)."""


_SYNC_CLASSES = {nn.BatchNorm2d: SyncBatchNorm2d, AdaptiveBatchNorm2d: SyncAdaptiveBatchNorm2d}


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """Make every BatchNorm of ``model`` synchronise its training statistics across the processes, in place.

    Unlike :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`, the modules are not replaced: each keeps its
    identity, parameters, buffers and state_dict keys (only its class changes), so the wrappers that share them
    (a converted network, a :class:`~adatriton.models.learned.LearnedMaskModel`'s OS8 / OS16 paths) stay in step; and it
    runs on the CPU (gloo) too. Eval mode and single-process runs compute exactly what they did.

    Args:
        model: the model (e.g. a :class:`~adatriton.models.learned.LearnedMaskModel`).
        process_group: the group to synchronise over; None: the default (world) group.

    Returns:
        ``model``.

    Raises:
        TypeError: a BatchNorm subclass other than ``nn.BatchNorm2d`` / ``AdaptiveBatchNorm2d``, whose forward this
            would bypass.
    """
    for name, m in model.named_modules():
        if isinstance(m, _SyncStatistics):
            m.process_group = process_group
            continue
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        sync = _SYNC_CLASSES.get(type(m))
        if sync is None:
            raise TypeError(
                f"{name or 'model'} is a {type(m).__name__}: only nn.BatchNorm2d / AdaptiveBatchNorm2d sync"
            )
        m.__class__ = sync
        m.process_group = process_group
    return model


# ---------------------------------------------------------------------------------------------- data
def _check_dataset(dataset) -> None:
    if not isinstance(dataset, (Dataset, Sequence)):
        raise TypeError(f"dataset must be a map-style Dataset (or a DataLoader), got {type(dataset).__name__}")


class _Epochs:
    """Batches per epoch for :func:`train`'s own loaders: the epoch's indices (a deterministic permutation of
    ``seed`` and the epoch when a seed is given or the run is distributed), this rank's shard, minus the batches a
    resumed run has done already."""

    def __init__(self, dataset, batch_size, shuffle, seed, num_workers, rank, world):
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        if world > 1 or seed is not None:
            # DistributedSampler: set_epoch(e) -> a permutation of (seed + e), split over the ranks (padded so every
            # rank has the same number of batches: they step together).
            self.sampler = DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=0 if seed is None else int(seed)
            )
        elif shuffle:
            self.sampler = RandomSampler(dataset)
        else:
            self.sampler = range(len(dataset))
        per_rank = len(self.sampler)
        # Training BN on a batch of one fails in the ASPP pooling branch: drop a last batch of one.
        self.drop_last = per_rank % batch_size == 1 and per_rank > 1
        self.batches = per_rank // batch_size if self.drop_last else -(-per_rank // batch_size)

    def loader(self, epoch: int, skip: int) -> DataLoader:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        indices = list(self.sampler)[skip * self.batch_size :]
        # A generator of its own: creating the iterator would otherwise draw from the global RNG, which the model
        # (Gumbel noise, dropout) uses, and a resumed run would draw once more than the uninterrupted one.
        generator = torch.Generator().manual_seed(epoch)
        return DataLoader(
            self.dataset,
            self.batch_size,
            sampler=indices,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            generator=generator,
        )


class _GivenLoader:
    """A ready DataLoader: its sampler's ``set_epoch`` is called per epoch; resumed batches are skipped."""

    def __init__(self, loader: DataLoader, world: int):
        self.given = loader
        self.batches = len(loader)
        sampler = getattr(loader, "sampler", None)
        if world > 1 and not isinstance(sampler, DistributedSampler):
            warnings.warn(
                "train() runs distributed but the DataLoader has no DistributedSampler: every process reads the "
                "whole dataset (pass the Dataset instead, and train() shards it)",
                stacklevel=3,
            )

    def loader(self, epoch: int, skip: int):
        sampler = getattr(self.given, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return itertools.islice(self.given, skip, None)


# ---------------------------------------------------------------------------------------------- training
def _unwrap(model: nn.Module, loss_fn: Callable | None, levels_fn: Callable | None) -> nn.Module:
    """The model inside DDP; a model other than a LearnedMaskModel needs the user's loss, a LearnedMaskModel no
    ``levels_fn`` (it predicts its own mask)."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    what = type(model).__name__ + (f" over {type(inner).__name__}" if inner is not model else "")
    if not isinstance(inner, nn.Module):
        raise TypeError(f"train expects an nn.Module (or DistributedDataParallel over one), got {what}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable loss_fn(outputs, targets) -> Tensor, got {loss_fn!r}")
    if levels_fn is not None and not callable(levels_fn):
        raise TypeError(f"levels_fn must be a callable levels_fn(images) -> level map, got {levels_fn!r}")
    if isinstance(inner, LearnedMaskModel):
        if levels_fn is not None:
            raise TypeError("a LearnedMaskModel predicts its own mask: train it without levels_fn")
    elif loss_fn is None:
        raise TypeError(
            f"train needs loss_fn(outputs, targets) -> Tensor for a {what}; the default loss (cross-entropy plus "
            "the mask budget) is that of a LearnedMaskModel (or DistributedDataParallel over one)"
        )
    return inner


def _init_from_torchrun(device: torch.device | None) -> None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) without a process group: start one (NCCL for a
    CUDA model, gloo otherwise)."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    cuda = device is not None and device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")


def _amp_settings(amp: bool, amp_dtype: torch.dtype | None, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)``."""
    if not amp:
        return None, False
    if amp_dtype is None:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    if device.type == "cpu" and amp_dtype != torch.bfloat16:
        raise ValueError(f"autocast on the CPU runs in torch.bfloat16, got amp_dtype={amp_dtype}")
    if amp_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"amp_dtype must be torch.float16 or torch.bfloat16, got {amp_dtype}")
    return amp_dtype, device.type == "cuda" and amp_dtype == torch.float16


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_number(name: str, value, low: float, high: float = math.inf, *, high_open: bool = False) -> None:
    """A finite real number in ``[low, high]`` (``[low, high)`` when ``high_open``), else TypeError / ValueError."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    inside = low <= value < high if high_open else low <= value <= high
    if not math.isfinite(value) or not inside:
        upper = ")" if high_open else "]"
        span = f">= {low}" if high == math.inf else f"in [{low}, {high}{upper}"
        raise ValueError(f"{name} must be a finite number {span}, got {value!r}")


def _check_int(name: str, value, low: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not _is_int(value):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_hyperparameters(**values) -> None:
    """Every number :func:`train` takes, before anything runs: a NaN or infinite one would train the model into
    non-finite weights in place (and checkpoint them), a zero batch size divide by zero."""
    _check_int("epochs", values["epochs"], 1)
    _check_int("batch_size", values["batch_size"], 1)
    _check_int("max_iters", values["max_iters"], 1, optional=True)
    _check_int("checkpoint_every", values["checkpoint_every"], 0)
    _check_int("num_workers", values["num_workers"], 0)
    for name in ("seed", "ignore_index"):
        if not _is_int(values[name]) and not (name == "seed" and values[name] is None):
            raise TypeError(f"{name} must be an int, got {type(values[name]).__name__}")
    # gamma is the target fraction of the grid to downsample: a fraction.
    _check_number("gamma", values["gamma"], 0.0, 1.0)
    for name in ("mask_weight", "lr_backbone", "lr_head", "lr_mask", "weight_decay", "poly_power"):
        _check_number(name, values[name], 0.0)
    _check_number("momentum", values["momentum"], 0.0, 1.0, high_open=True)


def _check_batch(images, labels, segmentation: bool = True) -> None:
    """One batch's types and shapes: float ``(N, C, H, W)`` images, and for the learned-mask model integer
    ``(N, H, W)`` labels (a float label would be truncated silently by ``.long()``); a user's loss takes any
    targets."""
    if not segmentation:
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float batch (N, C, H, W), got {type(images).__name__}"
                + (f" {images.dtype} of shape {tuple(images.shape)}" if isinstance(images, Tensor) else "")
            )
        return
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(
            f"the dataset must give (image, label) tensors, got ({type(images).__name__}, {type(labels).__name__})"
        )
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be float (3, H, W) per sample, (N, 3, H, W) per batch; got a {images.dtype} batch of "
            f"shape {tuple(images.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    if labels.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"labels must be (H, W) per sample, the image's size: a batch of images {tuple(images.shape)} has labels "
            f"of shape {tuple(labels.shape)}"
        )


def _check_label_range(labels: Tensor, num_classes: int, ignore_index: int, world: int) -> None:
    """Labels in ``[0, num_classes)`` or ``ignore_index``, checked before the cross-entropy (out of range, CUDA's
    asserts on the device and the CPU's raises an IndexError without saying which label). Distributed, every
    process learns whether any has a bad label, so that all stop together instead of waiting for each other."""
    used = labels[labels != ignore_index]
    low, high = (int(used.min()), int(used.max())) if used.numel() else (0, 0)
    bad = low < 0 or high >= num_classes
    problem = (
        f"labels must be in [0, {num_classes}) (the model's classes) or ignore_index={ignore_index}, found "
        f"{low if low < 0 else high}"
    )
    if world > 1:
        flag = torch.tensor([float(bad)], device=labels.device)
        dist.all_reduce(flag)
        if flag.item() and not bad:
            bad, problem = True, "labels out of range on another process"
    if bad:
        raise ValueError(problem)


def _user_loss(loss_fn: Callable, outputs, targets) -> Tensor:
    """``loss_fn(outputs, targets)`` as a 0-dim tensor (a one-element one of any shape is accepted)."""
    loss = loss_fn(outputs, targets)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_fn must return a one-element Tensor (the loss), got {loss!r}")
    return loss.reshape(())


#: What the logged vector holds, for the message of a non-finite loss: the learned-mask model's, another model's.
_LOGGED = {True: "loss, ce, mask_term, fraction", False: "loss"}


def _grads_finite(optimizer: torch.optim.Optimizer) -> bool:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf)))


class _Buffers:
    """A copy of the model's buffers (BatchNorm running statistics), which a training forward updates before the
    loss shows whether the batch was finite; restored when :func:`train` stops on that batch."""

    def __init__(self, model: nn.Module):
        self.buffers = list(model.buffers())
        self.saved: list[Tensor] = []

    def save(self) -> None:
        with torch.no_grad():
            self.saved = [b.detach().clone() for b in self.buffers]

    def restore(self) -> None:
        with torch.no_grad():
            for b, saved in zip(self.buffers, self.saved):
                b.copy_(saved)


def train(
    model: nn.Module,
    dataset,
    *,
    loss_fn: Callable[[Any, Any], Tensor] | None = None,
    levels_fn: Callable[[Tensor], Any] | None = None,
    epochs: int = 1,
    batch_size: int = 8,
    gamma: float = 0.5,
    mask_weight: float = 1.0,
    lr_backbone: float = 0.01,
    lr_head: float = 0.1,
    lr_mask: float = 0.001,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    poly_power: float = 0.9,
    max_iters: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    ignore_index: int = 255,
    progress: bool = True,
    shuffle: bool = True,
    seed: int | None = None,
    num_workers: int = 0,
    sync_batchnorm: bool = False,
    amp: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` (segmentation network and mask estimator together) with the authors' settings, or any
    converted model with ``loss_fn``.

    Args:
        model: a :class:`~adatriton.models.learned.LearnedMaskModel`, or with ``loss_fn`` any model (a converted
            one: ``adatriton.convert(...)``, with a mask source attached or a ``levels_fn``), or
            ``DistributedDataParallel`` over one; trained in place and left in eval mode. With an initialised process
            group of more than one process a plain model is wrapped here (``find_unused_parameters`` when a
            ``LearnedMaskModel`` has an auxiliary head, which the loss does not use; other models: not set, wrap them
            yourself if some parameters get no gradient).
        dataset: map-style dataset of ``(image (3, H, W) float, label (H, W) long)`` pairs (or a ready
            ``DataLoader`` yielding batches ``(N, 3, H, W)``, ``(N, H, W)``; give it a ``DistributedSampler`` when
            distributed, whose ``set_epoch`` is then called every epoch). With ``loss_fn``: ``(image, target)``
            pairs, the targets whatever ``loss_fn`` takes (tensors are moved to the device).
        loss_fn: ``loss_fn(outputs, targets) -> Tensor`` (a 0-dim loss) on the model's outputs and the batch's
            targets. Required for a model other than a ``LearnedMaskModel``, for which it replaces the
            cross-entropy (the mask term ``mask_weight * (fraction - gamma)^2`` is still added). None: the
            learned-mask model's ``cross_entropy(out["out"], label, ignore_index)``.
        levels_fn: ``levels_fn(images) -> level map`` for a model other than a ``LearnedMaskModel``: the forward
            is ``model(images, levels_fn(images))``. None: ``model(images)`` (the attached mask source's maps, or a
            dense model's).
        epochs: passes over the dataset (training stops earlier at ``max_iters``).
        batch_size: images per iteration and process.
        gamma: target fraction of the OS8 grid to downsample (0.5 or 0.7 in the paper).
        mask_weight: weight of ``(fraction - gamma)^2``.
        lr_backbone: base learning rate of the backbone.
        lr_head: base learning rate of the heads.
        lr_mask: base learning rate of the mask estimator.
        momentum: SGD momentum.
        weight_decay: SGD weight decay (all groups).
        poly_power: exponent of the poly schedule.
        max_iters: iterations of the schedule and of training; None: ``epochs * batches per epoch`` (per
            process), or the resumed checkpoint's ``max_iters``.
        checkpoint_dir: folder for ``last.pt`` (written by rank 0 every ``checkpoint_every`` iterations and at the
            end); None writes nothing.
        checkpoint_every: checkpoint period in iterations.
        resume: a checkpoint of this function to continue from: model, optimiser (and gradient scaler) state,
            iteration, history and random state; the data order continues where it stopped (exactly so with a
            ``seed``, or when distributed).
        device: where to train; None keeps the model's device (under ``torchrun`` with NCCL and a CPU model:
            ``cuda:$LOCAL_RANK``).
        ignore_index: label value excluded from the (default) cross-entropy.
        progress: show a tqdm progress bar (rank 0 only).
        shuffle: reshuffle the dataset every epoch.
        seed: seed of the shuffling: epoch ``e`` is the permutation of ``seed + e`` (None: torch's global
            generator in one process, 0 when distributed, since every process must agree).
        num_workers: DataLoader workers.
        sync_batchnorm: synchronise the BatchNorm statistics over the processes (:func:`convert_sync_batchnorm`,
            in place); no effect in one process. After training the parameters are identical on every rank either
            way (DDP averages the gradients); the BatchNorm running statistics are identical only with
            ``sync_batchnorm=True``. Without it each rank updates them from its own shard of the batch, and DDP
            copies rank 0's buffers to the others only at the start of each forward, so they differ by the last
            step's update (the checkpoint holds rank 0's).
        amp: mixed precision: the forward and loss under ``torch.autocast`` (``amp_dtype``), with a
            ``GradScaler`` for CUDA float16.
        amp_dtype: None: float16 on CUDA, bfloat16 on the CPU (the only dtype CPU autocast has).

    Returns:
        Per-iteration history (of the whole run when resumed): dicts with ``iteration``, ``loss``, ``ce``,
        ``mask_term``, ``fraction`` (averaged over the processes when distributed) and the backbone/head/mask
        learning rates used (``lr``, ``lr_head``, ``lr_mask``); for another model ``iteration``, ``loss`` and ``lr``.

    Raises:
        TypeError: ``model`` is not a ``LearnedMaskModel`` and no ``loss_fn`` is given (or a ``LearnedMaskModel``
            with a ``levels_fn``); a hyper-parameter of the wrong type (e.g. a float
            ``batch_size``); a batch whose labels are not integers (float labels would be truncated silently).
        ValueError: before anything runs, a hyper-parameter that is not finite or out of range (``gamma`` in
            [0, 1]; ``mask_weight``, the learning rates, ``weight_decay``, ``poly_power`` >= 0; ``momentum`` in
            [0, 1); ``epochs``, ``batch_size``, ``max_iters`` >= 1); during training, a batch that is not float
            ``(N, C, H, W)`` images with ``(N, H, W)`` labels, or labels outside ``[0, classes)`` and other than
            ``ignore_index`` (the BatchNorm statistics that batch's forward changed are restored).
        FloatingPointError: a non-finite loss (or, without a gradient scaler, non-finite gradients): training stops
            before that iteration's optimiser step and checkpoint, with the model's weights and BatchNorm statistics
            as the last finite step left them. Under ``amp`` with a ``GradScaler``, steps the scaler skips for
            non-finite scaled gradients are no error.

    Checkpoints hold ``{"model": state_dict, "optimizer": state_dict, "iteration": completed iterations,
    "max_iters", "gamma", "history", "rng", "world_size"[, "scaler"]}``; ``model.load_state_dict(ckpt["model"])``
    restores the weights (keys without DDP's ``module.``).
    """
    tqdm = require("tqdm.auto").tqdm

    inner = _unwrap(model, loss_fn, levels_fn)
    learned = isinstance(inner, LearnedMaskModel)
    _check_hyperparameters(
        epochs=epochs,
        batch_size=batch_size,
        gamma=gamma,
        mask_weight=mask_weight,
        lr_backbone=lr_backbone,
        lr_head=lr_head,
        lr_mask=lr_mask,
        momentum=momentum,
        weight_decay=weight_decay,
        poly_power=poly_power,
        max_iters=max_iters,
        checkpoint_every=checkpoint_every,
        ignore_index=ignore_index,
        seed=seed,
        num_workers=num_workers,
    )
    if device is not None:
        device = torch.device(device)
    _init_from_torchrun(device if device is not None else next(inner.parameters()).device)
    world, rank = _world(), (dist.get_rank() if _world() > 1 else 0)
    if device is None and world > 1 and dist.get_backend() == "nccl" and next(inner.parameters()).device.type == "cpu":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device is not None:
        inner.to(device)
    device = next(inner.parameters()).device
    if sync_batchnorm:
        convert_sync_batchnorm(inner)
    autocast_dtype, use_scaler = _amp_settings(amp, amp_dtype, device)

    if isinstance(dataset, DataLoader):
        epochs_of = _GivenLoader(dataset, world)
    else:
        _check_dataset(dataset)
        epochs_of = _Epochs(dataset, batch_size, shuffle, seed, num_workers, rank, world)
    per_epoch = epochs_of.batches
    if per_epoch <= 0:
        raise ValueError(f"nothing to train: the dataset gives no batch of {batch_size} per process")

    groups = param_groups(inner, lr_backbone, lr_head, lr_mask)
    optimizer = torch.optim.SGD(groups, lr=lr_backbone, momentum=momentum, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    history: list[dict[str, float]] = []
    it = 0
    resumed_total = None
    if resume is not None:
        ckpt = read_checkpoint(resume, CheckpointError, "a checkpoint written by adatriton.tools.train.train")
        missing = [k for k in ("model", "optimizer", "iteration") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{resume} is not a train() checkpoint: it has no {missing}")
        inner.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        it, history = int(ckpt["iteration"]), list(ckpt.get("history", []))
        resumed_total = ckpt.get("max_iters")
        if "rng" in ckpt:
            _set_rng_state(ckpt["rng"], device)
    if max_iters is not None:
        total = int(max_iters)
    elif resumed_total is not None:
        total = int(resumed_total)
    else:
        total = epochs * per_epoch
    if total <= 0:
        raise ValueError(f"nothing to train: max_iters = {total} (epochs={epochs}, {per_epoch} batches)")

    net: nn.Module = model
    if world > 1 and not isinstance(model, DistributedDataParallel):
        net = DistributedDataParallel(
            inner,
            device_ids=[torch.cuda.current_device() if device.index is None else device.index]
            if device.type == "cuda"
            else None,
            find_unused_parameters=learned and inner.model.aux_classifier is not None,
        )
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / "last.pt"

    def checkpoint(iteration: int) -> None:
        if rank != 0:
            return
        state = {
            "model": inner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "max_iters": total,
            "gamma": gamma,
            "history": history,
            "rng": _rng_state(device),
            "world_size": world,
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        save_checkpoint(ckpt_path, state)

    net.train()
    buffers = _Buffers(inner)
    bar = tqdm(total=total, initial=min(it, total), disable=not progress or rank != 0, desc="train", dynamic_ncols=True)
    try:
        epoch, skip = divmod(it, per_epoch)
        while it < total:
            for images, labels in epochs_of.loader(epoch, skip):
                if it >= total:
                    break
                for g in optimizer.param_groups:
                    g["lr"] = poly_lr(g["initial_lr"], it, total, poly_power)
                _check_batch(images, labels, learned)
                images = images.to(device, non_blocking=True)
                if learned:
                    labels = labels.to(device, non_blocking=True).long()
                elif isinstance(labels, Tensor):
                    labels = labels.to(device, non_blocking=True)
                buffers.save()
                try:
                    with torch.autocast(device.type, autocast_dtype, enabled=autocast_dtype is not None):
                        if not learned:
                            # The user's model and loss: its attached mask source (or levels_fn) makes the maps.
                            out = net(images) if levels_fn is None else net(images, levels_fn(images))
                            loss = _user_loss(loss_fn, out, labels)
                        else:
                            out = net(images)  # forward_train in training mode; through DDP when distributed
                            fraction = inner.last_fraction.float()
                            if loss_fn is None:
                                _check_label_range(labels, out["out"].shape[1], ignore_index, world)
                                ce = F.cross_entropy(out["out"].float(), labels, ignore_index=ignore_index)
                            else:
                                ce = _user_loss(loss_fn, out, labels)
                            mask_term = (fraction - gamma) ** 2
                            loss = ce + mask_weight * mask_term
                    parts = [loss, ce, mask_term, fraction] if learned else [loss]
                    logged = torch.stack([t.float() for t in parts]).detach()
                    if world > 1:
                        dist.all_reduce(logged)  # every process sees a non-finite loss of any, and stops with it
                        logged /= world
                    if not bool(torch.isfinite(logged).all()):
                        raise FloatingPointError(
                            f"train: non-finite loss at iteration {it + 1} ({_LOGGED[learned]} = "
                            f"{logged.tolist()}{', averaged over the processes' if world > 1 else ''}); stopped "
                            f"before the optimiser step and before any checkpoint of it: the model holds the "
                            f"weights and statistics of iteration {it}"
                        )
                except (ValueError, TypeError, FloatingPointError):
                    buffers.restore()
                    raise
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    if not _grads_finite(optimizer):
                        buffers.restore()
                        optimizer.zero_grad(set_to_none=True)
                        raise FloatingPointError(
                            f"train: non-finite gradients at iteration {it + 1} (loss {logged[0].item()}); stopped "
                            f"before the optimiser step: the model holds the weights and statistics of iteration "
                            f"{it}"
                        )
                    optimizer.step()
                else:
                    # Non-finite scaled gradients are the scaler's business: it skips the step and lowers the scale.
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                it += 1
                lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
                if learned:
                    loss_v, ce_v, mask_v, fraction_v = logged.tolist()
                    record = {
                        "iteration": it,
                        "loss": loss_v,
                        "ce": ce_v,
                        "mask_term": mask_v,
                        "fraction": fraction_v,
                        "lr": lrs["backbone"],
                        "lr_head": lrs["head"],
                        "lr_mask": lrs["mask"],
                    }
                    postfix = {"loss": f"{loss_v:.4f}", "frac": f"{fraction_v:.3f}"}
                else:
                    (loss_v,) = logged.tolist()
                    record = {"iteration": it, "loss": loss_v, "lr": lrs["model"]}
                    postfix = {"loss": f"{loss_v:.4f}"}
                history.append(record)
                bar.set_postfix(**postfix, refresh=False)
                bar.update(1)
                if ckpt_path is not None and checkpoint_every > 0 and it % checkpoint_every == 0 and it < total:
                    checkpoint(it)
            epoch, skip = epoch + 1, 0
    finally:
        bar.close()
    # Leave it ready for inference: the argmax mask and the adaptive network.
    inner.eval()
    if ckpt_path is not None:
        checkpoint(it)
    if world > 1:
        dist.barrier()  # every process returns once rank 0's checkpoint is on disk
    return history
