"""HPatches sequences: the official file layout, D2-Net's matching evaluation, and a synthetic mini-sequence.

**Layout** (``hpatches-sequences-release``): one folder per sequence, ``i_*`` (illumination changes, fixed
viewpoint) or ``v_*`` (viewpoint changes), each holding the images ``1.ppm`` .. ``6.ppm`` and the homographies
``H_1_2`` .. ``H_1_6``: text files of a 3x3 matrix mapping pixel ``(x, y, 1)`` of image 1 to image ``k``. The
dataset cannot be downloaded here; point :func:`iter_sequences` / :func:`evaluate` at a local copy.

**Evaluation** (D2-Net's ``HPatches-Sequences-Matching-Benchmark`` notebook): for each sequence, image 1 against
images 2..6; descriptors are matched by mutual nearest neighbours; a match ``(i, j)`` is correct at threshold ``t``
when ``H_1_k`` maps keypoint ``i`` of image 1 within ``t`` pixels (Euclidean, ``<= t``) of keypoint ``j`` of image
``k``. A pair's accuracy is correct / matches (0 when there are no matches); the mean matching accuracy MMA(t) is
the mean over all pairs, also reported over the ``i_`` and ``v_`` pairs apart, at ``t = 1..10`` px.

**Synthetic mini-sequences** (:func:`make_synthetic_sequence`): a photograph bundled with scikit-image, resized,
is image 1; images 2..6 are it warped by known homographies (``v_``: corner displacements growing along the
sequence) or photometrically changed under the identity (``i_``); written in the official layout so that the
loader and the evaluation run on them exactly as on the real dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..runtime.extras import require
from .matching import match_mutual_nn

__all__ = [
    "HPatchesError",
    "HPatchesSequence",
    "MMAResult",
    "PairResult",
    "SYNTHETIC_PHOTOS",
    "THRESHOLDS",
    "evaluate",
    "iter_sequences",
    "list_sequences",
    "load_sequence",
    "make_mini_hpatches",
    "make_synthetic_sequence",
    "pair_distances",
    "project",
    "synthetic_homographies",
]

#: Images per sequence; image 1 is the reference.
NUM_IMAGES = 6
#: Pixel thresholds of the MMA curve (D2-Net's plots).
THRESHOLDS = tuple(range(1, 11))
#: Sequence kinds: illumination and viewpoint.
KINDS = ("i", "v")
#: scikit-image photographs usable as synthetic sequences (``skimage.data.<name>()``, RGB).
SYNTHETIC_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


class HPatchesError(ValueError):
    """A sequence folder that does not follow the HPatches layout, or bad evaluation input."""


# ---------------------------------------------------------------------------------------------------- loading
@dataclass
class HPatchesSequence:
    """One HPatches sequence.

    Attributes:
        name: folder name, ``i_*`` or ``v_*``.
        images: the six images, ``(H_k, W_k, 3)`` uint8 RGB (sizes may differ within a sequence).
        homographies: ``(3, 3)`` float64 ``H_1_2 .. H_1_6``: ``homographies[k - 2]`` maps image 1 to image ``k``.
        path: the folder it was read from (None when built in memory).
    """

    name: str
    images: list[np.ndarray]
    homographies: list[np.ndarray]
    path: Path | None = None

    @property
    def kind(self) -> str:
        """``"i"`` (illumination), ``"v"`` (viewpoint) or ``""`` for other names."""
        return self.name[0] if self.name[:2] in ("i_", "v_") else ""


def list_sequences(root: str | Path, kinds: Sequence[str] = KINDS) -> list[Path]:
    """Sequence folders under ``root`` whose names start with ``<kind>_``, sorted by name.

    Raises:
        HPatchesError: ``root`` is not a folder, or holds no sequence of those kinds.
    """
    root = Path(root)
    if not root.is_dir():
        raise HPatchesError(f"HPatches root {root} is not a folder")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise HPatchesError(f"sequence kinds must be among {KINDS}, got {bad}")
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name[:2] in {f"{k}_" for k in kinds})
    if not found:
        raise HPatchesError(f"no {'/'.join(f'{k}_*' for k in kinds)} sequence folders under {root}")
    return found


def _read_image(path: Path) -> np.ndarray:
    cv2 = require("cv2")  # lazily: only loading needs OpenCV

    if not path.is_file():
        raise HPatchesError(f"missing image {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise HPatchesError(f"cannot decode image {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _read_homography(path: Path) -> np.ndarray:
    if not path.is_file():
        raise HPatchesError(f"missing homography {path}")
    try:
        h = np.loadtxt(path, dtype=np.float64)
    except ValueError as err:
        raise HPatchesError(f"cannot parse homography {path}: {err}") from err
    if h.shape != (3, 3) or not np.isfinite(h).all():
        raise HPatchesError(f"homography {path} must be a finite 3x3 matrix, got shape {h.shape}")
    return h


def load_sequence(path: str | Path) -> HPatchesSequence:
    """Read one sequence folder: ``1.ppm`` .. ``6.ppm`` (as RGB) and ``H_1_2`` .. ``H_1_6``.

    Raises:
        HPatchesError: a missing or unreadable file, or a homography that is not a finite 3x3 matrix.
    """
    path = Path(path)
    if not path.is_dir():
        raise HPatchesError(f"sequence folder {path} does not exist")
    images = [_read_image(path / f"{k}.ppm") for k in range(1, NUM_IMAGES + 1)]
    homographies = [_read_homography(path / f"H_1_{k}") for k in range(2, NUM_IMAGES + 1)]
    return HPatchesSequence(path.name, images, homographies, path)


def iter_sequences(
    root: str | Path, kinds: Sequence[str] = KINDS, names: Iterable[str] | None = None
) -> Iterator[HPatchesSequence]:
    """Load the sequences under ``root`` one at a time (the full dataset is ~1.3 GB of images).

    Args:
        root: the ``hpatches-sequences-release`` folder (or any folder in that layout).
        kinds: ``"i"`` and/or ``"v"``.
        names: only these sequence names (all by default).
    """
    wanted = None if names is None else set(names)
    paths = list_sequences(root, kinds)
    if wanted is not None:
        unknown = wanted - {p.name for p in paths}
        if unknown:
            raise HPatchesError(f"no sequence folders {sorted(unknown)} under {root}")
    for p in paths:
        if wanted is None or p.name in wanted:
            yield load_sequence(p)


# ---------------------------------------------------------------------------------------------------- evaluation
def project(points_xy: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """``(M, 2)`` points ``(x, y)`` mapped by a 3x3 homography (homogeneous division)."""
    p = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    h = np.asarray(homography, dtype=np.float64)
    q = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ h.T
    return q[:, :2] / q[:, 2:]


def pair_distances(kp1: np.ndarray, kp2: np.ndarray, matches: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """Reprojection errors of matches: ``|H kp1[i] - kp2[j]|`` for every match ``(i, j)``, pixels, ``(K,)``."""
    m = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    kp1 = np.asarray(kp1, dtype=np.float64).reshape(-1, 2)
    kp2 = np.asarray(kp2, dtype=np.float64).reshape(-1, 2)
    if len(m) and (m[:, 0].max() >= len(kp1) or m[:, 1].max() >= len(kp2) or m.min() < 0):
        raise HPatchesError(f"match indices out of range for {len(kp1)} and {len(kp2)} keypoints")
    return np.linalg.norm(project(kp1[m[:, 0]], homography) - kp2[m[:, 1]], axis=1)


@dataclass(frozen=True)
class PairResult:
    """Image 1 against image ``index`` of ``sequence``: counts and the accuracy at every threshold."""

    sequence: str
    kind: str
    index: int
    keypoints1: int
    keypoints2: int
    matches: int
    accuracy: tuple[float, ...]


@dataclass
class MMAResult:
    """Mean matching accuracy over HPatches pairs.

    Attributes:
        thresholds: pixel thresholds.
        mma: overall MMA per threshold (mean over pairs), ``mma_i`` / ``mma_v`` over the ``i_`` / ``v_`` pairs
            (NaN where there are none).
        pairs: one :class:`PairResult` per (sequence, image 2..6).
    """

    thresholds: tuple[int, ...]
    mma: dict[int, float]
    mma_i: dict[int, float]
    mma_v: dict[int, float]
    pairs: list[PairResult] = field(default_factory=list)

    @property
    def mean_matches(self) -> float:
        return float(np.mean([p.matches for p in self.pairs])) if self.pairs else math.nan

    def to_frame(self):
        """One row per pair: sequence, kind, index, keypoint and match counts, ``acc@t`` columns."""
        pd = require("pandas")

        rows = []
        for p in self.pairs:
            row = {
                "sequence": p.sequence,
                "kind": p.kind,
                "index": p.index,
                "keypoints1": p.keypoints1,
                "keypoints2": p.keypoints2,
                "matches": p.matches,
            }
            row.update({f"acc@{t}": a for t, a in zip(self.thresholds, p.accuracy)})
            rows.append(row)
        return pd.DataFrame(rows)


def _mean_acc(pairs: list[PairResult], thresholds: tuple[int, ...]) -> dict[int, float]:
    if not pairs:
        return {t: math.nan for t in thresholds}
    acc = np.array([p.accuracy for p in pairs])
    return {t: float(a) for t, a in zip(thresholds, acc.mean(axis=0))}


def _check_features(kps, desc, where: str) -> tuple[np.ndarray, torch.Tensor]:
    k = np.asarray(kps, dtype=np.float64)
    if k.size == 0:
        k = k.reshape(0, 2)
    d = torch.as_tensor(np.asarray(desc.detach().cpu() if isinstance(desc, torch.Tensor) else desc))
    if k.ndim != 2 or k.shape[1] != 2:
        raise HPatchesError(f"{where}: keypoints must be (M, 2) of (x, y), got {k.shape}")
    if d.dim() != 2 or d.shape[0] != len(k) or not d.is_floating_point():
        raise HPatchesError(f"{where}: descriptors must be float (M, C) with M = {len(k)}, got {tuple(d.shape)}")
    return k, d


def evaluate(
    sequences: str | Path | Iterable[HPatchesSequence],
    describe: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    thresholds: Sequence[int | float] = THRESHOLDS,
    matcher: Callable | None = None,
) -> MMAResult:
    """Mean matching accuracy of a keypoint + descriptor method on HPatches sequences (D2-Net protocol).

    Args:
        sequences: the dataset root (every ``i_*`` / ``v_*`` folder) or :class:`HPatchesSequence` objects.
        describe: ``describe(image)`` with ``image`` ``(H, W, 3)`` uint8 RGB returns keypoints ``(M, 2)`` ``(x, y)``
            and descriptors ``(M, C)`` (numpy or torch), e.g. :func:`adatriton.eval.matching.keypoint_describer`.
        thresholds: pixel thresholds (``dist <= t`` is correct).
        matcher: ``matcher(desc1, desc2) -> (K, 2)`` index pairs on torch tensors; default mutual nearest
            neighbours (:func:`adatriton.eval.matching.match_mutual_nn`).

    Returns:
        :class:`MMAResult`.
    """
    matcher = match_mutual_nn if matcher is None else matcher
    thr = tuple(thresholds)
    if not thr or any(not (isinstance(t, (int, float)) and t >= 0) for t in thr):
        raise HPatchesError(f"thresholds must be non-negative numbers, got {thresholds!r}")
    if isinstance(sequences, (str, Path)):
        sequences = iter_sequences(sequences)
    pairs: list[PairResult] = []
    for seq in sequences:
        if len(seq.images) != NUM_IMAGES or len(seq.homographies) != NUM_IMAGES - 1:
            raise HPatchesError(f"sequence {seq.name} needs {NUM_IMAGES} images and {NUM_IMAGES - 1} homographies")
        kp1, d1 = _check_features(*describe(seq.images[0]), f"{seq.name} image 1")
        for k in range(2, NUM_IMAGES + 1):
            kp2, d2 = _check_features(*describe(seq.images[k - 1]), f"{seq.name} image {k}")
            if d1.shape[1] != d2.shape[1]:
                raise HPatchesError(f"{seq.name}: descriptor sizes differ ({d1.shape[1]} vs {d2.shape[1]})")
            matches = torch.as_tensor(matcher(d1, d2)).cpu().numpy().reshape(-1, 2)
            dist = pair_distances(kp1, kp2, matches, seq.homographies[k - 2])
            acc = tuple(float(np.mean(dist <= t)) if len(dist) else 0.0 for t in thr)
            pairs.append(PairResult(seq.name, seq.kind, k, len(kp1), len(kp2), len(matches), acc))
    if not pairs:
        raise HPatchesError("no sequences to evaluate")
    return MMAResult(
        thr,
        _mean_acc(pairs, thr),
        _mean_acc([p for p in pairs if p.kind == "i"], thr),
        _mean_acc([p for p in pairs if p.kind == "v"], thr),
        pairs,
    )


# ---------------------------------------------------------------------------------------------------- synthetic
def synthetic_homographies(
    height: int, width: int, count: int = NUM_IMAGES - 1, strength: float = 0.12, seed: int = 0
) -> list[np.ndarray]:
    """Known viewpoint changes: ``count`` homographies whose corner displacements grow along the sequence.

    Homography ``k`` (1-based) moves each image corner by a random offset of up to ``strength * k / count`` of the
    image size in each direction (and the image 1 -> ``k`` map is the one taking the corners there), so the last
    image is the most distorted, as in HPatches' ``v_`` sequences.

    Returns:
        ``count`` float64 ``(3, 3)`` matrices, normalised so that ``H[2, 2] = 1``.
    """
    cv2 = require("cv2")

    if height < 2 or width < 2 or count < 1 or not 0 <= strength < 0.5:
        raise HPatchesError(f"bad synthetic homography request: {height}x{width}, count {count}, strength {strength}")
    rng = np.random.default_rng(seed)
    src = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float32)
    out = []
    for k in range(1, count + 1):
        amp = strength * k / count * np.array([width, height])
        dst = src + (rng.uniform(-1, 1, size=(4, 2)) * amp).astype(np.float32)
        h = cv2.getPerspectiveTransform(src, dst).astype(np.float64)
        out.append(h / h[2, 2])
    return out


def _photo(name: str) -> np.ndarray:
    if name not in SYNTHETIC_PHOTOS:
        raise HPatchesError(f"photo must be one of {SYNTHETIC_PHOTOS}, got {name!r}")
    try:
        data = require("skimage.data")
    except ImportError as err:  # pragma: no cover - scikit-image is a dependency; guards a partial install
        raise HPatchesError("synthetic sequences need scikit-image (pip install scikit-image)") from err
    img = np.asarray(getattr(data, name)())
    if img.ndim != 3 or img.shape[2] < 3:
        raise HPatchesError(f"skimage.data.{name}() is not an RGB photograph")
    return np.ascontiguousarray(img[:, :, :3].astype(np.uint8))


def make_synthetic_sequence(
    root: str | Path,
    photo: str = "astronaut",
    kind: str = "v",
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """Write a synthetic sequence in the official layout and return its folder.

    Image 1 is ``skimage.data.<photo>()`` resized to ``size`` (area interpolation). ``kind="v"``: image ``k`` is image
    1 warped by :func:`synthetic_homographies` ``[k - 2]`` (bilinear, black outside), ``H_1_k`` that matrix.
    ``kind="i"``: ``H_1_k`` is the identity and image ``k`` is image 1 under a gain, gamma and colour cast that grow
    along the sequence.

    Args:
        root: parent folder (created if needed).
        photo: one of :data:`SYNTHETIC_PHOTOS`.
        kind: ``"v"`` or ``"i"``.
        size: ``(H, W)`` of every image.
        seed: seeds the homographies / photometric changes.
        name: folder name (default ``<kind>_<photo>``); must start with ``<kind>_``.
    """
    cv2 = require("cv2")

    if kind not in KINDS:
        raise HPatchesError(f"kind must be 'i' or 'v', got {kind!r}")
    name = f"{kind}_{photo}" if name is None else name
    if not name.startswith(f"{kind}_"):
        raise HPatchesError(f"a {kind} sequence's name must start with '{kind}_', got {name!r}")
    h, w = (int(s) for s in size)
    if h < 8 or w < 8:
        raise HPatchesError(f"synthetic images need at least 8x8 pixels, got {size}")
    base = cv2.resize(_photo(photo), (w, h), interpolation=cv2.INTER_AREA)
    images, homs = [base], []
    if kind == "v":
        for hom in synthetic_homographies(h, w, NUM_IMAGES - 1, seed=seed):
            images.append(cv2.warpPerspective(base, hom, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)))
            homs.append(hom)
    else:
        rng = np.random.default_rng(seed)
        f = base.astype(np.float64) / 255.0
        for k in range(1, NUM_IMAGES):
            level = k / (NUM_IMAGES - 1)
            gain = 1.0 + level * rng.uniform(-0.5, 0.5)
            gamma = float(np.exp(level * rng.uniform(-0.5, 0.5)))
            cast = 1.0 + level * rng.uniform(-0.15, 0.15, size=3)
            images.append(np.clip(np.round(255.0 * gain * cast * f**gamma), 0, 255).astype(np.uint8))
            homs.append(np.eye(3))
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images, start=1):
        if not cv2.imwrite(str(folder / f"{k}.ppm"), np.ascontiguousarray(img[:, :, ::-1])):
            raise HPatchesError(f"cannot write {folder / f'{k}.ppm'}")
    for k, hom in enumerate(homs, start=2):
        np.savetxt(folder / f"H_1_{k}", hom, fmt="%.17g")
    return folder


def make_mini_hpatches(
    root: str | Path,
    size: tuple[int, int] = (96, 128),
    sequences: Sequence[tuple[str, str]] = (("v", "astronaut"), ("i", "coffee")),
    seed: int = 0,
) -> list[Path]:
    """A synthetic mini HPatches in ``root``: one folder per ``(kind, photo)``; returns the folders."""
    return [make_synthetic_sequence(root, photo, kind, size, seed + i) for i, (kind, photo) in enumerate(sequences)]
