"""Mask sources (docs/semantics.md §6): exact level maps on known cases, independent numpy references, density control,
errors.

References here are written from the definitions with numpy/scipy loops and filters, not from the module's code.
Photographs are scikit-image's bundled ``astronaut`` and ``stereo_motorcycle`` (no download).
"""

import functools
import math

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data as skdata

from adatriton import LevelMap, LevelMapError, masks

STRIDE = {"8->16": 8, "8->32": 8, "16->32": 16, "1->8": 1}
K = {"8->16": 1, "8->32": 2, "16->32": 1, "1->8": 3}


# ------------------------------------------------------------------------------------------------ references
def ref_dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """Box dilation of a 2D bool mask, zero outside."""
    return ndimage.maximum_filter(mask.astype(np.uint8), size=size, mode="constant", cval=0) > 0


def ref_any_reduce(mask: np.ndarray, s: int) -> np.ndarray:
    h, w = mask.shape
    hf, wf = -(-h // s), -(-w // s)
    padded = np.zeros((hf * s, wf * s), bool)
    padded[:h, :w] = mask
    return padded.reshape(hf, s, wf, s).any(axis=(1, 3))


def ref_block_rule(keep: np.ndarray, block: int, k: int) -> np.ndarray:
    hf, wf = keep.shape
    out = np.full((hf, wf), k, np.int64)
    for i in range(0, hf, block):
        for j in range(0, wf, block):
            if keep[i : i + block, j : j + block].any():
                out[i : i + block, j : j + block] = 0
    return out


def ref_oracle(labels: np.ndarray, stride: int, kernel: int, ignore, block: int, k: int) -> np.ndarray:
    h, w = labels.shape
    boundary = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            a = labels[y, x]
            if a == ignore:
                continue
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and labels[yy, xx] != ignore and labels[yy, xx] != a:
                    boundary[y, x] = True
    return ref_block_rule(ref_any_reduce(ref_dilate(boundary, kernel), stride), block, k)


def ref_cad(image: np.ndarray, t: float, dilation: int, stride: int, block: int, k: int) -> np.ndarray:
    """The released code's edge mask for one ``(3, H, W)`` float image in [0, 1], written out in numpy."""
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    n = (image.astype(np.float64) - mean) / std
    g = 0.299 * n[0] + 0.587 * n[1] + 0.114 * n[2]
    h, w = g.shape
    gp = np.zeros((h + 2, w + 2))
    gp[1:-1, 1:-1] = g
    gx = gp[1:-1, 2:] - gp[1:-1, :-2]
    gy = gp[2:, 1:-1] - gp[:-2, 1:-1]
    e = (gx >= t) | (gy >= t)
    sampled = ref_dilate(e, dilation)[::stride, ::stride]
    return ref_block_rule(sampled, block, k)


def ref_sobel(image: np.ndarray, t: float, dilation: int, stride: int, block: int, k: int) -> np.ndarray:
    g = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    mag = np.hypot(ndimage.sobel(g, axis=1, mode="nearest"), ndimage.sobel(g, axis=0, mode="nearest"))
    norm = mag / mag.max() if mag.max() > 0 else mag
    return ref_block_rule(ref_any_reduce(ref_dilate(norm > t, dilation), stride), block, k)


def ref_keypoints(sal: np.ndarray, dils) -> np.ndarray:
    """The released code's nested construction: level v where 2^(v+1) blocks touch the d_v-dilated saliency."""
    out = np.full(sal.shape, 3, np.int64)
    for v in (2, 1, 0):
        d, b = dils[v], 2 << v
        if d == 0:
            continue
        touched = np.ones_like(sal) if d == math.inf else ref_dilate(sal, d)
        tiles = np.kron(ref_any_reduce(touched, b), np.ones((b, b), bool))[: sal.shape[0], : sal.shape[1]]
        out[tiles] = v
    return out


# ------------------------------------------------------------------------------------------------ fixtures
@functools.cache
def _photo(name: str, height: int, width: int) -> np.ndarray:
    img = skdata.astronaut() if name == "astronaut" else skdata.stereo_motorcycle()[0]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)  # (H, W, 3) uint8


def photo(name: str = "astronaut", height: int = 128, width: int = 256) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(_photo(name, height, width)).permute(2, 0, 1)[None].double() / 255


def step_image(height: int, width: int, col: int) -> torch.Tensor:
    img = torch.zeros(1, 3, height, width)
    img[..., col:] = 1.0
    return img


def band(col_lo: int, col_hi: int, width: int, stride: int, block: int) -> list[int]:
    """Finest-grid columns at level 0 for informative image columns col_lo..col_hi (interval arithmetic)."""
    col_lo, col_hi = max(col_lo, 0), min(col_hi, width - 1)
    wf = -(-width // stride)
    t_lo, t_hi = (col_lo // stride) // block, (col_hi // stride) // block
    return list(range(t_lo * block, min((t_hi + 1) * block, wf)))


def level0_columns(lm: LevelMap, n: int = 0) -> list[int]:
    cols = (lm.levels[n] == 0).all(0)
    assert bool(((lm.levels[n] == 0).any(0) == cols).all()), "level-0 region is not a full-height band"
    return cols.nonzero().flatten().tolist()


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize("conversion", ["8->16", "8->32", "16->32", "1->8"])
def test_finest_grid_size(conversion):
    h, w = 37, 50
    s = STRIDE[conversion]
    want = (2, -(-h // s), -(-w // s))
    assert masks.finest_size(h, w, conversion) == want[1:]
    labels = torch.zeros(2, h, w, dtype=torch.long)
    assert masks.oracle(labels, conversion).shape == want
    assert masks.edges(torch.rand(2, 3, h, w), conversion).shape == want
    assert masks.edges(torch.rand(2, 3, h, w), conversion, method="cad").shape == want
    assert masks.synthetic(2, h, w, conversion, 0.5).shape == want
    # OS8 is three ceil-halvings of the image, as torchvision's ResNet stem and layer2 produce.
    if s == 8:
        size = h
        for _ in range(3):
            size = -(-size // 2)
        assert want[1] == size


# ------------------------------------------------------------------------------------------------ oracle
def test_oracle_straight_vertical_boundary_band():
    labels = torch.zeros(2, 64, 256, dtype=torch.long)
    labels[:, :, 100:] = 1  # boundary pixels: columns 99 and 100
    lm = masks.oracle(labels, "8->32", kernel=33)
    # Dilated columns 83..116 -> OS8 cells 10..14 -> 4x4 tiles 2..3 -> finest columns 8..15.
    assert level0_columns(lm, 0) == list(range(8, 16)) == level0_columns(lm, 1)
    assert set(lm.levels.unique().tolist()) == {0, 2}
    lm55 = masks.oracle(labels, "8->32", kernel=55)
    assert level0_columns(lm55) == band(99 - 27, 100 + 27, 256, 8, 4) == list(range(8, 16))  # cells 9..15


@pytest.mark.parametrize("conversion", ["8->16", "16->32"])
@pytest.mark.parametrize("row", [1, 40, 77])
def test_oracle_horizontal_boundary_band(conversion, row):
    labels = torch.full((1, 80, 96), 3, dtype=torch.int32)
    labels[:, row:] = 7
    lm = masks.oracle(labels, conversion, kernel=33)
    rows = (lm.levels[0] == 0).all(1).nonzero().flatten().tolist()
    assert rows == band(row - 1 - 16, row + 16, 80, STRIDE[conversion], 2 if conversion == "16->32" else 4)
    assert bool(((lm.levels[0] == 0).any(1) == (lm.levels[0] == 0).all(1)).all())


def test_oracle_ignore_label_is_not_a_class():
    labels = torch.zeros(1, 64, 128, dtype=torch.uint8)
    labels[:, :, 40:80] = 255
    labels[:, :, 80:] = 0
    assert bool((masks.oracle(labels, "8->32").levels == 2).all())  # class/ignore changes only
    labels[:, :, 80:] = 1  # still no class-class neighbours: the ignore strip separates them
    assert bool((masks.oracle(labels, "8->32").levels == 2).all())
    lm = masks.oracle(labels, "8->32", ignore_index=None)  # now 255 is a class: two boundaries
    assert level0_columns(lm) == band(39 - 16, 80 + 16, 128, 8, 4)
    assert bool((masks.oracle(torch.full((1, 30, 30), 5), "8->16").levels == 1).all())  # one class: nothing


@pytest.mark.parametrize("conversion,kernel", [("8->32", 33), ("8->16", 5), ("16->32", 1), ("1->8", 3)])
def test_oracle_matches_reference_on_random_labels(conversion, kernel):
    rng = np.random.default_rng(1)
    # Coarse random regions with some ignore pixels; odd size to exercise clipped cells and tiles.
    coarse = rng.integers(0, 4, size=(2, 6, 7))
    labels = np.kron(coarse, np.ones((9, 11), np.int64))[:, :51, :73]
    labels[rng.random(labels.shape) < 0.03] = 255
    lm = masks.oracle(labels, conversion, kernel=kernel)
    block = {"1->8": 8, "16->32": 2}.get(conversion, 4)  # default_tile: the authors' tiles
    for n in range(2):
        want = ref_oracle(labels[n], STRIDE[conversion], kernel, 255, block, K[conversion])
        np.testing.assert_array_equal(lm.levels[n].numpy(), want)


# ------------------------------------------------------------------------------------------------ edges
def test_sobel_vertical_edge_band():
    lm = masks.edges(step_image(64, 256, 128), "8->32", threshold=0.15, dilation=11)
    # Edge columns 127, 128 -> dilated 122..133 -> OS8 cells 15, 16 -> tiles 3, 4 -> finest columns 12..19.
    assert level0_columns(lm) == list(range(12, 20))
    assert set(lm.levels.unique().tolist()) == {0, 2}


@pytest.mark.parametrize("conversion", ["8->16", "8->32", "16->32"])
@pytest.mark.parametrize("col,dilation", [(5, 11), (77, 3), (140, 21), (150, 1)])
def test_sobel_vertical_edge_band_general(conversion, col, dilation):
    width = 155
    lm = masks.edges(step_image(40, width, col), conversion, threshold=0.5, dilation=dilation)
    r = dilation // 2
    tile = 2 if conversion == "16->32" else 4  # default_tile: the authors' tiles
    assert level0_columns(lm) == band(col - 1 - r, col + r, width, STRIDE[conversion], tile)


def test_sobel_constant_image_and_threshold_one_have_no_edges():
    assert bool((masks.edges(torch.full((2, 3, 48, 64), 0.4), "8->32").levels == 2).all())
    assert bool((masks.edges(photo(), "8->32", threshold=1.0).levels == 2).all())  # normalised magnitude <= 1


@pytest.mark.parametrize("t", [0.95, 0.35, 0.15])
def test_sobel_matches_reference_on_photo(t):
    img = photo("stereo_motorcycle", 100, 150)
    lm = masks.edges(img, "8->32", threshold=t, dilation=11)
    np.testing.assert_array_equal(lm.levels[0].numpy(), ref_sobel(img[0].numpy(), t, 11, 8, 4, 2))


def test_edges_accept_uint8_and_numpy():
    u8 = torch.from_numpy(_photo("astronaut", 96, 160)).permute(2, 0, 1)[None].contiguous()
    for method in ("sobel", "cad"):
        want = masks.edges(u8.double() / 255, "8->32", method=method).levels
        assert torch.equal(masks.edges(u8, "8->32", method=method).levels, want)
        assert torch.equal(masks.edges(u8.numpy(), "8->32", method=method).levels, want)
        assert torch.equal(masks.edges((u8.float() / 255), "8->32", method=method).levels, want)


@pytest.mark.parametrize("conversion", ["8->16", "8->32", "16->32"])
@pytest.mark.parametrize("t", [0.15, 0.35, 0.95])
def test_cad_matches_independent_formula(conversion, t):
    img = photo("astronaut", 133, 201)  # odd size: sampling grid and clipped tiles
    lm = masks.edges(img, conversion, threshold=t, dilation=11, method="cad")
    block = 2 if conversion == "16->32" else 4  # the released code's tiles: 2x2 at OS16, 4x4 at OS8
    want = ref_cad(img[0].numpy(), t, 11, STRIDE[conversion], block, K[conversion])
    np.testing.assert_array_equal(lm.levels[0].numpy(), want)


def test_cad_is_signed_and_zero_padded():
    # A dark-to-bright step only: positive gx at the step; a bright-to-dark one has negative gx, no edge there.
    up = masks.edges(step_image(64, 128, 64), "8->32", threshold=0.15, dilation=1, method="cad")
    down = masks.edges(1 - step_image(64, 128, 64), "8->32", threshold=0.15, dilation=1, method="cad")
    assert bool((up.levels[0, :, 8] == 0).all())  # sampled column 64 is on the step
    assert bool((down.levels[0, :, 8] == 2).all())
    # Zero padding: on the top row gy = g[1] - 0, positive where the (normalised) image is bright, so the bright
    # half of the top row fires and the dark half does not.
    assert bool((up.levels[0, 0, 8:] == 0).all()) and bool((up.levels[0, 0, :8] == 2).all())


# ------------------------------------------------------------------------------------------------ keypoints
def test_keypoints_single_point_regions():
    img = torch.zeros(1, 3, 64, 64)
    lm = masks.keypoints(img, (3, 5, 9), keypoints_xy=[np.array([[20.0, 13.0]])])  # x = 20, y = 13
    want = torch.full((64, 64), 3, dtype=torch.long)
    want[8:24, 16:32] = 2  # 8x8 tiles touching rows 9..17, cols 16..24
    want[8:16, 16:24] = 1  # 4x4 tiles touching rows 11..15, cols 18..22
    want[12:16, 18:22] = 0  # 2x2 tiles touching rows 12..14, cols 19..21
    assert lm.num_levels == 3 and lm.shape == (1, 64, 64)
    assert torch.equal(lm.levels[0], want)


def test_keypoints_extreme_triplets():
    img = torch.rand(2, 3, 40, 56)
    pts = [np.array([[3.2, 4.7], [50.0, 30.0]]), np.zeros((0, 2))]
    assert bool((masks.keypoints(img, (0, 0, 0), keypoints_xy=pts).levels == 3).all())
    assert bool((masks.keypoints(img, (math.inf,) * 3, keypoints_xy=pts).levels == 0).all())
    assert bool((masks.keypoints(img, (float("inf"),) * 3, keypoints_xy=pts).levels == 0).all())
    lm = masks.keypoints(img, (0, 0, math.inf), keypoints_xy=pts)
    assert bool((lm.levels == 2).all())
    assert bool((masks.keypoints(img, (1, 1, 1), keypoints_xy=pts).levels[1] == 3).all())  # no keypoints


def _nested(lm: LevelMap) -> None:
    """Levels in 0..3 and {L <= v} a union of aligned 2^(v+1) blocks (what validation checks, restated)."""
    lv = lm.levels
    assert int(lv.min()) >= 0 and int(lv.max()) <= 3
    for v in range(3):
        b = 2 << v
        region = (lv <= v).double()
        tiles = torch.nn.functional.avg_pool2d(region[:, None], b, b, ceil_mode=True)
        assert bool(((tiles == 0) | (tiles == 1)).all())


def test_keypoints_non_monotone_triplet_is_nested():
    img = torch.zeros(1, 3, 48, 48)
    pts = [np.array([[10.0, 10.0], [37.0, 30.0]])]
    lm = masks.keypoints(img, (9, 0, 3), keypoints_xy=pts)
    _nested(lm)
    # R0 alone would break alignment; its blocks are folded into the OS2 and OS4 regions.
    assert bool((lm.levels[0, 6:14, 6:14] == 0).all())
    assert int((lm.levels == 1).sum()) > 0


def test_keypoints_sift_paper_sweep_on_photo():
    img = photo("astronaut", 192, 256)
    pts = masks.sift_keypoints(img)
    assert 50 <= len(pts[0]) <= 512
    px = np.rint(pts[0]).astype(int)
    assert len({tuple(p) for p in px}) == len(px)  # one keypoint per pixel
    sal = np.zeros((192, 256), bool)
    sal[px[:, 1], px[:, 0]] = True
    previous = None
    for dils in masks.PAPER_KEYPOINT_DILATIONS:
        lm = masks.keypoints(img, dils, keypoints_xy=pts)
        _nested(lm)
        np.testing.assert_array_equal(lm.levels[0].numpy(), ref_keypoints(sal, dils))
        cumulative = torch.cumsum(lm.fractions(), 0)
        if previous is not None:  # the sweep grows every region
            assert bool((cumulative >= previous - 1e-12).all())
        previous = cumulative
    # SIFT inside keypoints() is the same as passing its points.
    assert torch.equal(
        masks.keypoints(img, (19, 41, 41)).levels, masks.keypoints(img, (19, 41, 41), keypoints_xy=pts).levels
    )


def test_sift_keypoints_top_k():
    img = photo("stereo_motorcycle", 160, 240)
    few = masks.sift_keypoints(img, max_keypoints=20)[0]
    many = masks.sift_keypoints(img)[0]
    assert len(few) == 20
    np.testing.assert_array_equal(few, many[:20])  # strongest first


# ------------------------------------------------------------------------------------------------ density
def test_report():
    lm = masks.edges(photo(), "8->32")
    rep = masks.report(lm)
    assert rep["shape"] == lm.shape and rep["num_levels"] == 2
    assert math.isclose(sum(rep["fractions"]), 1.0) and rep["level0"] == rep["fractions"][0]
    assert len(rep["per_sample"]) == 1 and math.isclose(rep["mean_level"], 2 * rep["fractions"][2])


@pytest.mark.parametrize("method", ["sobel", "cad"])
def test_match_fraction_threshold(method):
    img = photo("astronaut", 128, 256)
    source = functools.partial(masks.edges, img, "8->32", method=method)
    # cad thresholds are in normalised-grayscale units (differences up to ~4.5): a wider interval.
    bounds = (0.0, 1.0) if method == "sobel" else (0.0, 5.0)
    value, lm = masks.match_fraction(source, 0.3, "threshold", bounds=bounds)
    assert torch.equal(lm.levels, source(threshold=value).levels)
    f = float(lm.fractions()[0])
    assert abs(f - 0.3) < 0.1
    for other in (value - 1e-3, value + 1e-3):  # monotone: nothing nearby is closer
        if bounds[0] <= other <= bounds[1]:
            assert abs(f - 0.3) <= abs(float(source(threshold=other).fractions()[0]) - 0.3) + 1e-12


def test_match_fraction_dilation_and_kernel():
    img = photo("astronaut", 128, 256)
    source = functools.partial(masks.edges, img, "8->32", threshold=0.5)
    value, lm = masks.match_fraction(source, 0.4, "dilation")
    assert value % 2 == 1
    f = float(lm.fractions()[0])
    for other in (value - 2, value + 2):
        if other >= 1:
            assert abs(f - 0.4) <= abs(float(source(dilation=other).fractions()[0]) - 0.4)
    labels = torch.zeros(1, 128, 256, dtype=torch.long)
    labels[:, :, 128:] = 1
    kernel, lm = masks.match_fraction(functools.partial(masks.oracle, labels, "8->32"), 0.5, "kernel")
    assert kernel % 2 == 1 and float(lm.fractions()[0]) == 0.5
    assert masks.match_fraction(source, 1.0, "dilation", bounds=(1, 9)).value == 9  # out of reach: the bound


@pytest.mark.parametrize("kind", ["blobs", "blocks"])
@pytest.mark.parametrize("conversion,height,width", [("8->32", 512, 1024), ("8->16", 200, 333), ("1->8", 61, 90)])
def test_synthetic_exact_fraction(kind, conversion, height, width):
    block = 8 if conversion == "1->8" else 4
    hf, wf = masks.finest_size(height, width, conversion)
    tiles = -(-hf // block) * -(-wf // block)
    previous = None
    for fraction in (0.0, 0.1, 0.3, 0.77, 1.0):
        lm = masks.synthetic(3, height, width, conversion, fraction, kind=kind, seed=4)
        assert lm.shape == (3, hf, wf)
        kept = lm.levels[:, ::block, ::block] == 0
        assert kept.sum(dim=(1, 2)).tolist() == [round(fraction * tiles)] * 3
        if previous is not None:  # same seed: nested
            assert bool((kept | ~previous).all())
        previous = kept
    a = masks.synthetic(3, height, width, conversion, 0.3, kind=kind, seed=4).levels
    assert torch.equal(a, masks.synthetic(3, height, width, conversion, 0.3, kind=kind, seed=4).levels)
    assert not torch.equal(a[0], a[1])


def test_synthetic_blobs_cluster():
    def neighbour_pairs(kind):
        kept = (masks.synthetic(1, 1024, 2048, "8->32", 0.3, kind=kind).levels[0, ::4, ::4] == 0).int()
        return int((kept[:, 1:] * kept[:, :-1]).sum() + (kept[1:] * kept[:-1]).sum())

    assert neighbour_pairs("blobs") > 1.5 * neighbour_pairs("blocks")


def test_paper_settings_on_photo_at_512x1024():
    img = photo("astronaut", 512, 1024)
    level0 = []
    for t in masks.PAPER_EDGE_THRESHOLDS:  # 0.95, 0.35, 0.15: growing budgets
        lm = masks.edges(img, "8->32", threshold=t, dilation=11)
        assert lm.shape == (1, 64, 128)
        level0.append(float(lm.fractions()[0]))
    assert level0 == sorted(level0) and level0[0] < level0[-1]
    cad = [float(masks.edges(img, "8->16", threshold=t, method="cad").fractions()[0]) for t in (0.95, 0.15)]
    assert cad[0] <= cad[1]


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_get_clear_errors():
    img = torch.rand(1, 3, 32, 32)
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    with pytest.raises(ValueError, match=r"shape \(N, H, W\)"):
        masks.oracle(labels[0], "8->32")
    with pytest.raises(ValueError, match=r"shape \(N, H, W\)"):
        masks.oracle(labels[None], "8->32")
    with pytest.raises(TypeError, match="integer"):
        masks.oracle(labels.float(), "8->32")
    with pytest.raises(ValueError, match="integer"):
        masks.oracle(np.zeros((1, 8, 8)), "8->32")
    with pytest.raises(ValueError, match="odd"):
        masks.oracle(labels, "8->32", kernel=32)
    with pytest.raises(ValueError, match="unknown output_stride"):
        masks.oracle(labels, "8->64")
    with pytest.raises(ValueError, match="conversion name"):
        masks.edges(img, 8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masks.edges(img, "8->32", threshold=1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masks.edges(img, "8->32", threshold=-0.1)
    with pytest.raises(ValueError, match=">= 0"):
        masks.edges(img, "8->32", threshold=-0.1, method="cad")
    with pytest.raises(ValueError, match="odd"):
        masks.edges(img, "8->32", dilation=10)
    with pytest.raises(ValueError, match="unknown edge method"):
        masks.edges(img, "8->32", method="canny")
    with pytest.raises(ValueError, match="channels last"):
        masks.edges(img.permute(0, 2, 3, 1), "8->32")
    with pytest.raises(ValueError, match="batch dimension"):
        masks.edges(img[0], "8->32")
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        masks.edges(img * 3 - 1, "8->32")
    with pytest.raises(TypeError, match="uint8"):
        masks.edges(img.to(torch.int16), "8->32")
    with pytest.raises(ValueError, match="odd positive"):
        masks.keypoints(img, (0, 4, 5), keypoints_xy=[np.zeros((0, 2))])
    with pytest.raises(ValueError, match="odd positive"):
        masks.keypoints(img, (-1, 3, 5), keypoints_xy=[np.zeros((0, 2))])
    with pytest.raises(ValueError, match="triplet"):
        masks.keypoints(img, (3, 5), keypoints_xy=[np.zeros((0, 2))])
    with pytest.raises(ValueError, match="one \\(M, 2\\) array per image"):
        masks.keypoints(img, (3, 5, 7), keypoints_xy=[])
    with pytest.raises(ValueError, match="outside"):
        masks.keypoints(img, (3, 5, 7), keypoints_xy=[np.array([[40.0, 3.0]])])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masks.synthetic(1, 32, 32, "8->32", 1.2)
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        masks.synthetic(1, 32, 32, "8->32", 0.2, kind="stripes")
    with pytest.raises(ValueError, match="param"):
        masks.match_fraction(functools.partial(masks.edges, img, "8->32"), 0.2, "sigma")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masks.match_fraction(functools.partial(masks.edges, img, "8->32"), 2.0)


def test_outputs_are_validated_level_maps():
    img = photo("stereo_motorcycle", 96, 144)
    outs = [
        masks.oracle(torch.randint(0, 3, (2, 50, 70)), "8->32"),
        masks.edges(img, "16->32", method="cad"),
        masks.keypoints(img, (19, 41, 41)),
        masks.synthetic(2, 100, 150, "8->32", 0.4),
    ]
    for lm in outs:
        assert isinstance(lm, LevelMap)
        LevelMap(lm.levels.clone(), lm.num_levels)  # re-validates (raises LevelMapError if misaligned)
    with pytest.raises(LevelMapError):
        bad = outs[0].levels.clone()
        bad[0, 0, 0] = 1 - bad[0, 0, 0] // 2  # break a tile
        LevelMap(bad, 2)
