"""Fine-tuning a segmentation model with a learned mask (docs/semantics.md §6): the authors' recipe in one function.

:func:`train` runs :meth:`~adatriton.learned.LearnedMaskModel.forward_train` (OS8 and OS16 ``layer3`` blended by
the hard Gumbel mask) on the batches of a dataset, minimising

    ``cross_entropy(out, label, ignore_index) + mask_weight * (fraction downsampled - gamma)^2``

with SGD (momentum 0.9, weight decay 1e-4) and three learning rates (backbone 0.01, heads 0.1, mask estimator
0.001) under the poly schedule ``lr * (1 - it / max_iters) ** 0.9``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..models.learned import LearnedMaskModel
from ..runtime.extras import require

__all__ = ["param_groups", "poly_lr", "save_checkpoint", "train"]


def poly_lr(base_lr: float, iteration: int, max_iters: int, power: float = 0.9) -> float:
    """``base_lr * (1 - iteration / max_iters) ** power`` (DeepLab's poly schedule), 0 from ``max_iters`` on."""
    return base_lr * max(0.0, 1.0 - iteration / max_iters) ** power


def param_groups(
    model: LearnedMaskModel, lr_backbone: float, lr_head: float, lr_mask: float
) -> list[dict[str, object]]:
    """SGD parameter groups: backbone, heads (main and auxiliary), mask estimator; each with its ``initial_lr``."""
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


def _loader(dataset, batch_size: int, shuffle: bool, seed: int | None, num_workers: int) -> DataLoader:
    if isinstance(dataset, DataLoader):
        return dataset
    if not isinstance(dataset, (Dataset, Sequence)):
        raise TypeError(f"dataset must be a map-style Dataset (or a DataLoader), got {type(dataset).__name__}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    # Training BN on a batch of one fails in the ASPP pooling branch: drop a last batch of one.
    drop_last = len(dataset) % batch_size == 1 and len(dataset) > 1
    return DataLoader(
        dataset, batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last, num_workers=num_workers
    )


def train(
    model: LearnedMaskModel,
    dataset,
    *,
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
    device: str | torch.device | None = None,
    ignore_index: int = 255,
    progress: bool = True,
    shuffle: bool = True,
    seed: int | None = None,
    num_workers: int = 0,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` (segmentation network and mask estimator together) with the authors' settings.

    Args:
        model: a :class:`~adatriton.learned.LearnedMaskModel`; trained in place and left in eval mode.
        dataset: map-style dataset of ``(image (3, H, W) float, label (H, W) long)`` pairs (or a ready
            ``DataLoader`` yielding batches ``(N, 3, H, W)``, ``(N, H, W)``).
        epochs: passes over the dataset (training stops earlier at ``max_iters``).
        batch_size: images per iteration.
        gamma: target fraction of the OS8 grid to downsample (0.5 or 0.7 in the paper).
        mask_weight: weight of ``(fraction - gamma)^2``.
        lr_backbone: base learning rate of the backbone.
        lr_head: base learning rate of the heads.
        lr_mask: base learning rate of the mask estimator.
        momentum: SGD momentum.
        weight_decay: SGD weight decay (all groups).
        poly_power: exponent of the poly schedule.
        max_iters: iterations of the schedule and of training; None: ``epochs * len(loader)``.
        checkpoint_dir: folder for ``last.pt`` (written every ``checkpoint_every`` iterations and at the end);
            None writes nothing.
        checkpoint_every: checkpoint period in iterations.
        device: where to train; None keeps the model's device.
        ignore_index: label value excluded from the cross-entropy.
        progress: show a tqdm progress bar.
        shuffle: reshuffle the dataset every epoch.
        seed: seed of the shuffling (None: torch's global generator).
        num_workers: DataLoader workers.

    Returns:
        Per-iteration history: dicts with ``iteration``, ``loss``, ``ce``, ``mask_term``, ``fraction`` and the
        backbone/head/mask learning rates used (``lr``, ``lr_head``, ``lr_mask``).

    Checkpoints hold ``{"model": state_dict, "optimizer": state_dict, "iteration": completed iterations,
    "max_iters", "gamma", "history"}``; ``model.load_state_dict(ckpt["model"])`` restores the weights.
    """
    tqdm = require("tqdm.auto").tqdm

    if not isinstance(model, LearnedMaskModel):
        raise TypeError(f"train expects a LearnedMaskModel, got {type(model).__name__}")
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    loader = _loader(dataset, batch_size, shuffle, seed, num_workers)
    total = epochs * len(loader) if max_iters is None else int(max_iters)
    if total <= 0:
        raise ValueError(f"nothing to train: max_iters = {total} (epochs={epochs}, {len(loader)} batches)")
    groups = param_groups(model, lr_backbone, lr_head, lr_mask)
    optimizer = torch.optim.SGD(groups, lr=lr_backbone, momentum=momentum, weight_decay=weight_decay)
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / "last.pt"
    history: list[dict[str, float]] = []

    def checkpoint(iteration: int) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "max_iters": total,
            "gamma": gamma,
            "history": history,
        }
        save_checkpoint(ckpt_path, state)

    model.train()
    it = 0
    bar = tqdm(total=total, disable=not progress, desc="train", dynamic_ncols=True)
    try:
        while it < total:
            for images, labels in loader:
                if it >= total:
                    break
                for g in optimizer.param_groups:
                    g["lr"] = poly_lr(g["initial_lr"], it, total, poly_power)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True).long()
                out, fraction = model.forward_train(images)
                ce = F.cross_entropy(out["out"], labels, ignore_index=ignore_index)
                mask_term = (fraction - gamma) ** 2
                loss = ce + mask_weight * mask_term
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                it += 1
                lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
                record = {
                    "iteration": it,
                    "loss": loss.item(),
                    "ce": ce.item(),
                    "mask_term": mask_term.item(),
                    "fraction": fraction.item(),
                    "lr": lrs["backbone"],
                    "lr_head": lrs["head"],
                    "lr_mask": lrs["mask"],
                }
                history.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", frac=f"{record['fraction']:.3f}", refresh=False)
                bar.update(1)
                if ckpt_path is not None and checkpoint_every > 0 and it % checkpoint_every == 0 and it < total:
                    checkpoint(it)
    finally:
        bar.close()
    # Leave it ready for inference: the argmax mask and the adaptive network.
    model.eval()
    if ckpt_path is not None:
        checkpoint(it)
    return history
