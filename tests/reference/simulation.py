"""The dense simulation of docs/semantics.md §3 and §4, written from the text and independent of adatriton's index
tables.

State is a dense map ``F (N, C, Hf, Wf)`` on the finest grid (the densified multi-resolution map) plus the
stage ``j``. Every op runs densely at the finest grid; convolutions are sampled at the element centres.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor


class DenseSim:
    """The semantics of docs/semantics.md on dense finest-grid maps for one level map ``levels (N, Hf, Wf)`` with ``K``
    levels."""

    def __init__(self, levels: Tensor, num_levels: int):
        self.levels, self.num_levels = levels.long(), num_levels
        self.n, self.h, self.w = levels.shape
        block = 1 << num_levels
        self.hp, self.wp = -(-self.h // block) * block, -(-self.w // block) * block

    def _grid(self, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
        n = torch.arange(self.n)[:, None, None].expand(self.n, h, w)
        y = torch.arange(h)[None, :, None].expand(self.n, h, w)
        x = torch.arange(w)[None, None, :].expand(self.n, h, w)
        return n, y, x

    def element_of(self, stage: int) -> tuple[Tensor, Tensor, Tensor]:
        """For every padded pixel: top-left ``(ty, tx)`` and level ``u`` of the element covering it, -1 if none.

        docs/semantics.md §1, §4: pixel ``p`` belongs to the level-``u`` block containing it when that block has a real
        top-left pixel whose current level ``min(L, stage)`` is ``u``.
        """
        n, y, x = self._grid(self.hp, self.wp)
        ty, tx, lev = (torch.full_like(y, -1) for _ in range(3))
        for u in range(stage, -1, -1):
            by, bx = (y >> u) << u, (x >> u) << u
            real = (by < self.h) & (bx < self.w)
            cur = self.levels[n, by.clamp(max=self.h - 1), bx.clamp(max=self.w - 1)].clamp(max=stage)
            hit = real & (cur == u) & (lev < 0)
            ty, tx, lev = torch.where(hit, by, ty), torch.where(hit, bx, tx), torch.where(hit, u, lev)
        return ty, tx, lev

    def pad(self, dense: Tensor, stage: int) -> Tensor:
        """The padded grid: a pixel reads its element (the value at the element's top-left), else zero."""
        ty, tx, lev = self.element_of(stage)
        n, _, _ = self._grid(self.hp, self.wp)
        vals = dense.permute(0, 2, 3, 1)[n, ty.clamp(min=0), tx.clamp(min=0)]
        vals = torch.where((lev >= 0)[..., None], vals, torch.zeros_like(vals))
        return vals.permute(0, 3, 1, 2)

    def conv(
        self,
        dense: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        tap_spacing: int,
        stage: int,
        step: bool = False,
        groups: int = 1,
    ) -> Tensor:
        """Conv at the element centres; with ``step`` at the centres of the elements that survive step ``stage+1``."""
        k = weight.shape[-1]
        out = F.conv2d(
            self.pad(dense, stage), weight, bias, padding=tap_spacing * (k // 2), dilation=tap_spacing, groups=groups
        )
        return self._at_centres(out, stage, stage + 1 if step else stage)

    def _at_centres(self, out: Tensor, stage: int, new_stage: int) -> Tensor:
        """Sample a padded-grid conv output at the centres of the elements at ``new_stage`` (survivors)."""
        n, y, x = self._grid(self.h, self.w)
        u = self.levels.clamp(max=new_stage)
        ty, tx = (y >> u) << u, (x >> u) << u
        half = (1 << u.clamp(max=stage)) // 2  # the survivor is the top-left element of the pre-step level
        return out.permute(0, 2, 3, 1)[n, ty + half, tx + half].permute(0, 3, 1, 2)

    def deform_conv(
        self, dense: Tensor, offset_weight: Tensor, weight: Tensor, bias: Tensor | None, tap_spacing: int, stage: int
    ) -> Tensor:
        """Deformable conv at the element centres: offsets by the docs/semantics.md §3 conv, torchvision's bilinear
        sampling of the padded densified grid (the rule in the README)."""
        offsets = self.pad(self.conv(dense, offset_weight, None, tap_spacing, stage), stage)
        pad = tap_spacing * (weight.shape[-1] // 2)
        out = torchvision.ops.deform_conv2d(
            self.pad(dense, stage), offsets, weight, bias, padding=pad, dilation=tap_spacing
        )
        return self._at_centres(out, stage, stage)

    def downsample(self, dense: Tensor, stage: int, variant: str = "top_left") -> Tensor:
        """Step ``stage + 1``: blocks with ``L > stage`` take their top-left (or max) level-``stage`` element."""
        n, y, x = self._grid(self.h, self.w)
        s, sub = 1 << (stage + 1), 1 << stage
        merge = self.levels > stage
        ty, tx = (y // s) * s, (x // s) * s
        vals = dense.permute(0, 2, 3, 1)
        if variant == "top_left":
            merged = vals[n, ty, tx]
        elif variant == "softpool":  # sum_i softmax_i(x) x_i over the real sub-elements, per channel
            subs, real = [], []
            for dy in (0, sub):
                for dx in (0, sub):
                    real.append(((ty + dy) < self.h) & ((tx + dx) < self.w))
                    subs.append(vals[n, (ty + dy).clamp(max=self.h - 1), (tx + dx).clamp(max=self.w - 1)])
            subs, real = torch.stack(subs), torch.stack(real)[..., None]
            top = torch.where(real, subs, torch.full_like(subs, float("-inf"))).amax(0)
            weights = torch.where(real, (subs - top).exp(), torch.zeros_like(subs))
            merged = (weights * torch.where(real, subs, torch.zeros_like(subs))).sum(0) / weights.sum(0)
        else:
            merged = torch.full_like(vals, float("-inf"))
            for dy in (0, sub):
                for dx in (0, sub):
                    real = ((ty + dy) < self.h) & ((tx + dx) < self.w)
                    got = vals[n, (ty + dy).clamp(max=self.h - 1), (tx + dx).clamp(max=self.w - 1)]
                    merged = torch.where(real[..., None], torch.maximum(merged, got), merged)
        out = torch.where(merge[..., None], merged, vals)
        return out.permute(0, 3, 1, 2)


#: docs/semantics.md §3: tap spacings of layer3/layer4 conv2 (block 0, other blocks) for the finest grid at OS8 / OS16.
TAP_SPACINGS = {8: {"layer3": (1, 2), "layer4": (2, 4)}, 16: {"layer4": (1, 2)}}
#: conversion -> (finest output stride, K, layers that perform a downsampling step).
CONVERSIONS = {"8->32": (8, 2, ("layer3", "layer4")), "8->16": (8, 1, ("layer3",)), "16->32": (16, 1, ("layer4",))}


def simulate_resnet_features(
    plain_model, x: Tensor, levels: Tensor, conversion: str, downsampling: str = "top_left"
) -> Tensor:
    """Dense simulation of an adaptive torchvision ResNet (eval mode), densified ``layer4`` output.

    Args:
        plain_model: the torchvision ResNet with its default strides (supplies the dense prefix and weights). A
            ``conv2`` with an ``offset`` child conv is simulated as the deformable conv of the README's rule.
        x: images ``(N, 3, H, W)``.
        levels: ``(N, Hf, Wf)`` level map on the finest grid.
        conversion: ``"8->32"``, ``"8->16"`` or ``"16->32"`` (``"16->32"`` with the top-left subsampling only).
        downsampling: ``"top_left"`` or ``"softpool"``: the merge of the adaptive steps (the conv2 of a
            downsampling block then runs at every pre-step element, and the step merges its output before bn2).
    """
    finest, k, step_layers = CONVERSIONS[conversion]
    m = plain_model
    dense = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    dense = m.layer2(m.layer1(dense))
    if finest == 16:
        dense = m.layer3(dense)
    sim, stage = DenseSim(levels, k), 0
    for name, (first, rest) in TAP_SPACINGS[finest].items():
        for b, block in enumerate(getattr(m, name)):
            step = b == 0 and name in step_layers
            c1, c2, c3 = block.conv1, block.conv2, block.conv3
            out = block.relu(block.bn1(sim.conv(dense, c1.weight, c1.bias, 1, stage)))
            spacing = first if b == 0 else rest
            if hasattr(c2, "offset"):
                out = sim.deform_conv(out, c2.offset.weight, c2.weight, c2.bias, spacing, stage)
                out = sim.downsample(out, stage) if step else out
            elif step and downsampling == "softpool":
                out = sim.conv(out, c2.weight, c2.bias, spacing, stage, False, c2.groups)
                out = sim.downsample(out, stage, "softpool")
            else:
                out = sim.conv(out, c2.weight, c2.bias, spacing, stage, step, c2.groups)
            new_stage = stage + int(step)
            out = block.relu(block.bn2(out))
            out = block.bn3(sim.conv(out, c3.weight, c3.bias, 1, new_stage))
            if block.downsample is None:
                identity = dense
            else:
                xi = sim.downsample(dense, stage, downsampling) if step else dense
                conv, norm = block.downsample
                identity = norm(sim.conv(xi, conv.weight, conv.bias, 1, new_stage))
            dense, stage = block.relu(out + identity), new_stage
    return dense
