"""HPatches layout, loader and the D2-Net MMA protocol, on synthetic sequences built from scikit-image photographs."""

import math

import cv2
import numpy as np
import pytest
import torch

from adatriton.eval import hpatches, keypoint_describer
from adatriton.eval.hpatches import HPatchesError, HPatchesSequence
from adatriton.models import d2net

SIZE = (72, 96)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpatches")
    paths = hpatches.make_mini_hpatches(root, size=SIZE)
    return root, paths


def sift_describer(image):
    """SIFT keypoints and unit-norm SIFT descriptors: a real method whose MMA on a correct layout is high."""
    kps, desc = cv2.SIFT_create().detectAndCompute(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), None)
    pts = np.array([k.pt for k in kps], dtype=np.float64).reshape(-1, 2)
    desc = np.zeros((0, 128), np.float32) if desc is None else desc
    return pts, desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)


def test_official_layout(mini):
    root, paths = mini
    assert [p.name for p in paths] == ["v_astronaut", "i_coffee"]
    for p in paths:
        names = sorted(f.name for f in p.iterdir())
        assert names == [f"{k}.ppm" for k in range(1, 7)] + [f"H_1_{k}" for k in range(2, 7)]
        assert np.loadtxt(p / "H_1_4").shape == (3, 3)
    assert [p.name for p in hpatches.list_sequences(root)] == ["i_coffee", "v_astronaut"]
    assert [p.name for p in hpatches.list_sequences(root, kinds=("v",))] == ["v_astronaut"]


def test_loader_roundtrip(mini):
    root, _ = mini
    seq = hpatches.load_sequence(root / "v_astronaut")
    assert seq.kind == "v" and len(seq.images) == 6 and len(seq.homographies) == 5
    assert all(img.shape == (*SIZE, 3) and img.dtype == np.uint8 for img in seq.images)
    # ppm is lossless: image 1 is the resized photograph, RGB order preserved
    from skimage import data

    ref = cv2.resize(data.astronaut(), SIZE[::-1], interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(seq.images[0], ref)
    np.testing.assert_allclose(seq.homographies, hpatches.synthetic_homographies(*SIZE, seed=0), rtol=1e-15)
    coffee = hpatches.load_sequence(root / "i_coffee")
    assert coffee.kind == "i"
    assert all(np.array_equal(h, np.eye(3)) for h in coffee.homographies)
    assert [s.name for s in hpatches.iter_sequences(root, names=["i_coffee"])] == ["i_coffee"]


def test_warp_follows_homography(mini):
    root, _ = mini
    seq = hpatches.load_sequence(root / "v_astronaut")
    h, w = SIZE
    ys, xs = np.mgrid[8 : h - 8 : 4, 8 : w - 8 : 4]
    pts = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    for k in (2, 6):
        q = np.rint(hpatches.project(pts, seq.homographies[k - 2])).astype(int)
        inside = (q[:, 0] >= 1) & (q[:, 0] < w - 1) & (q[:, 1] >= 1) & (q[:, 1] < h - 1)
        a = seq.images[0][pts[inside, 1].astype(int), pts[inside, 0].astype(int)].astype(float)
        b = seq.images[k - 1][q[inside, 1], q[inside, 0]].astype(float)
        # image k at H p shows image 1 at p (up to resampling); the inverse map would not
        assert np.median(np.abs(a - b)) < 12
        b_wrong = seq.images[k - 1][pts[inside, 1].astype(int), pts[inside, 0].astype(int)].astype(float)
        assert np.median(np.abs(a - b)) < np.median(np.abs(a - b_wrong))


def test_sift_mma_is_high_on_the_mini_sequences(mini):
    root, _ = mini
    result = hpatches.evaluate(root, sift_describer)
    assert len(result.pairs) == 10
    assert result.thresholds == tuple(range(1, 11))
    mma = [result.mma[t] for t in result.thresholds]
    assert mma == sorted(mma) and mma[2] > 0.6  # a correct layout and protocol: most SIFT matches are right
    assert result.mma_i[3] > 0.6 and result.mma_v[3] > 0.5
    assert result.mma[3] == pytest.approx((result.mma_i[3] + result.mma_v[3]) / 2)
    frame = result.to_frame()
    assert list(frame.columns[:6]) == ["sequence", "kind", "index", "keypoints1", "keypoints2", "matches"]
    assert len(frame) == 10


def constant_sequence(name, homographies):
    """Six images whose first pixel encodes their number, so a describer can look up its answer."""
    images = [np.full((16, 16, 3), k, dtype=np.uint8) for k in range(1, 7)]
    return HPatchesSequence(name, images, list(homographies))


def test_identity_gives_mma_one():
    kp = np.array([[1.0, 2.0], [5.0, 5.0], [10.0, 3.0], [7.5, 12.0]])
    desc = np.eye(4, dtype=np.float32)
    seq = constant_sequence("i_same", [np.eye(3)] * 5)
    result = hpatches.evaluate([seq], lambda img: (kp, desc))
    assert all(v == 1.0 for v in result.mma.values())
    assert math.isnan(result.mma_v[1]) and result.mma_i[1] == 1.0
    assert all(p.matches == 4 for p in result.pairs)


def test_hand_built_correspondences():
    """Known reprojection errors 0.5, 1.5, 2.5 and 20 px: accuracy 1/4 at 1 px, 2/4 at 2 px, 3/4 from 3 to 10 px."""
    hom = np.array([[1.1, 0.05, 3.0], [-0.02, 0.95, -2.0], [1e-4, 2e-4, 1.0]])
    kp1 = np.array([[10.0, 10.0], [20.0, 5.0], [30.0, 40.0], [50.0, 25.0]])
    offsets = np.array([[0.5, 0.0], [0.0, -1.5], [1.5, 2.0], [12.0, 16.0]])
    kp2 = (hpatches.project(kp1, hom) + offsets)[::-1]  # reversed, so matching must follow the descriptors
    d1 = np.eye(4, dtype=np.float32)
    d2 = d1[::-1].copy()
    seq = constant_sequence("v_hand", [hom] * 5)
    result = hpatches.evaluate([seq], lambda img: (kp1, d1) if img[0, 0, 0] == 1 else (kp2, d2))
    expected = {1: 0.25, 2: 0.5, **{t: 0.75 for t in range(3, 11)}}
    assert result.mma == pytest.approx(expected)
    np.testing.assert_allclose(
        np.sort(hpatches.pair_distances(kp1, kp2, np.array([[i, 3 - i] for i in range(4)]), hom)), [0.5, 1.5, 2.5, 20]
    )


def test_no_matches_count_as_zero():
    seq = constant_sequence("v_empty", [np.eye(3)] * 5)
    empty = (np.zeros((0, 2)), np.zeros((0, 8), np.float32))
    kp, desc = np.array([[1.0, 1.0]]), np.ones((1, 8), np.float32)
    result = hpatches.evaluate([seq], lambda img: (kp, desc) if img[0, 0, 0] == 1 else empty)
    assert all(v == 0.0 for v in result.mma.values()) and result.mean_matches == 0


def test_d2net_pipeline_on_the_mini_sequence(mini):
    """Random small trunk, adaptive with a keypoint map: valid, monotone MMA curve; identity pairs match exactly."""
    root, _ = mini
    torch.manual_seed(0)
    net = d2net.D2Net(d2net.vgg_features((8, 8, "M", 16, 16, "M", 16, 16, 16, "M", 32, 32, 32)), "1->8").eval()
    describe = keypoint_describer(net, (5, 11, 21), max_keypoints=64, preprocessing="torch")
    seq = hpatches.load_sequence(root / "v_astronaut")
    result = hpatches.evaluate([seq], describe)
    mma = [result.mma[t] for t in result.thresholds]
    assert all(0 <= v <= 1 for v in mma) and mma == sorted(mma)
    assert describe.times.calls == 6 and describe.times.network_s > 0
    same = HPatchesSequence("v_same", [seq.images[0]] * 6, [np.eye(3)] * 5)
    assert all(v == 1.0 for v in hpatches.evaluate([same], describe).mma.values())


def test_errors(tmp_path):
    with pytest.raises(HPatchesError, match="not a folder"):
        hpatches.list_sequences(tmp_path / "nope")
    with pytest.raises(HPatchesError, match="no i_"):
        hpatches.list_sequences(tmp_path)
    folder = hpatches.make_synthetic_sequence(tmp_path, "chelsea", "v", (16, 24))
    (folder / "H_1_3").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(HPatchesError, match="3x3"):
        hpatches.load_sequence(folder)
    (folder / "H_1_3").unlink()
    with pytest.raises(HPatchesError, match="missing homography"):
        hpatches.load_sequence(folder)
    (folder / "5.ppm").unlink()
    with pytest.raises(HPatchesError, match="missing image"):
        hpatches.load_sequence(folder)
    with pytest.raises(HPatchesError, match="photo"):
        hpatches.make_synthetic_sequence(tmp_path, "lena")
    with pytest.raises(HPatchesError, match="start with"):
        hpatches.make_synthetic_sequence(tmp_path, "coffee", "i", name="v_coffee")
    seq = constant_sequence("i_bad", [np.eye(3)] * 5)
    with pytest.raises(HPatchesError, match="descriptors"):
        hpatches.evaluate([seq], lambda img: (np.zeros((2, 2)), np.zeros((3, 4))))
