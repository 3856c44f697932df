"""Keypoint matching for the D2-Net case study: mutual-nearest-neighbour matching and a ``describe(image)`` function
(keypoints, level map, trunk, descriptors) for :func:`adatriton.eval.hpatches.evaluate`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import masks
from ..models.d2net import D2Net, D2NetInputError, preprocess

__all__ = ["DescribeTimes", "keypoint_describer", "match_mutual_nn"]


def match_mutual_nn(desc1: Tensor, desc2: Tensor) -> Tensor:
    """Mutual nearest-neighbour matching of descriptors (D2-Net's HPatches protocol).

    ``i`` and ``j`` match when ``j`` is the most similar (largest dot product) of ``desc2`` to ``desc1[i]`` and
    ``i`` the most similar of ``desc1`` to ``desc2[j]``; ties go to the lowest index.

    Args:
        desc1: ``(M1, C)`` descriptors (unit norm, so the dot product ranks as the L2 distance does).
        desc2: ``(M2, C)``.

    Returns:
        ``(K, 2)`` long tensor of index pairs ``(i, j)``, ``i`` ascending; ``(0, 2)`` when either side is empty.
    """
    for name, d in (("desc1", desc1), ("desc2", desc2)):
        if not isinstance(d, Tensor) or d.dim() != 2:
            raise D2NetInputError(f"{name} must be a tensor (M, C), got {getattr(d, 'shape', type(d))}")
    if desc1.shape[1] != desc2.shape[1]:
        raise D2NetInputError(f"descriptors differ in dimension: {desc1.shape[1]} vs {desc2.shape[1]}")
    if len(desc1) == 0 or len(desc2) == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=desc1.device)
    dtype = torch.promote_types(desc1.dtype, desc2.dtype)
    sim = desc1.to(dtype) @ desc2.to(dtype).t()
    nn12 = sim.argmax(dim=1)
    nn21 = sim.argmax(dim=0)
    ids1 = torch.arange(len(desc1), device=desc1.device)
    mutual = nn21[nn12] == ids1
    return torch.stack([ids1[mutual], nn12[mutual]], dim=1)


@dataclass
class DescribeTimes:
    """Seconds spent by a :func:`keypoint_describer`: SIFT, level maps (+ index tables), network + sampling."""

    sift_s: float = 0.0
    levelmap_s: float = 0.0
    network_s: float = 0.0
    calls: int = 0


def keypoint_describer(
    net: D2Net,
    dilations: Sequence[float] | None = None,
    *,
    max_keypoints: int = 512,
    preprocessing: str = "caffe",
    keypoints_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A ``describe(image) -> (keypoints_xy, descriptors)`` function for :func:`adatriton.eval.hpatches.evaluate`.

    SIFT keypoints (:func:`adatriton.masks.sift_keypoints`, the ``max_keypoints`` strongest distinct pixels) or
    ``keypoints_fn(image)``; for the adaptive trunk the level map of :func:`adatriton.masks.keypoints` with
    ``dilations`` around the same keypoints; descriptors from :meth:`D2Net.describe`.

    Args:
        net: the trunk (its parameters' device and dtype are used).
        dilations: ``(d1, d2, d4)`` of the keypoint level map; required for ``"1->8"``, ignored for dense strides.
        max_keypoints: SIFT keypoints per image.
        preprocessing: see :func:`preprocess`.
        keypoints_fn: replaces SIFT: ``(H, W, 3)`` uint8 RGB -> ``(M, 2)`` float ``(x, y)`` positions.

    Returns:
        A function of one ``(H, W, 3)`` uint8 RGB image returning float64 ``(M, 2)`` keypoints and float32
        ``(M, C)`` unit-norm descriptors (numpy); its ``times`` attribute (:class:`DescribeTimes`) accumulates
        the time of each part.
    """
    if net.adaptive and dilations is None:
        raise D2NetInputError("the '1->8' trunk needs the keypoint level map's dilations (d1, d2, d4)")
    param = net.first_conv.weight
    times = DescribeTimes()

    def describe(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise D2NetInputError(f"image must be uint8 RGB (H, W, 3), got {img.dtype} {img.shape}")
        batch = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        t0 = time.perf_counter()
        if keypoints_fn is None:
            kps = masks.sift_keypoints(batch, max_keypoints)[0]
        else:
            kps = np.asarray(keypoints_fn(img), dtype=np.float64).reshape(-1, 2)
        t1 = time.perf_counter()
        levels = None
        if net.adaptive:
            levels = net.build_tables(masks.keypoints(batch, dilations, keypoints_xy=[kps]).to(param.device))
        t2 = time.perf_counter()
        with torch.inference_mode():
            x = preprocess(batch.to(param.device), preprocessing, param.dtype)
            desc = net.describe(x, [kps], levels)[0]
        desc = desc.float().cpu().numpy()
        t3 = time.perf_counter()
        times.sift_s += t1 - t0
        times.levelmap_s += t2 - t1
        times.network_s += t3 - t2
        times.calls += 1
        return kps, desc

    describe.times = times
    return describe
