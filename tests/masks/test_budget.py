"""Mask budgets a new user meets first (issue 15): ``fraction=`` on the threshold-like sources, the documented
defaults and the image size they were chosen for, and the hint for an ``(H, W, 3)`` image."""

import functools

import numpy as np
import pytest
import torch

from adatriton import masks

from .test_masks import _photo, photo


@pytest.mark.parametrize("method, top", [("sobel", 1.0), ("cad", None)])
def test_edges_fraction_is_match_fraction_over_the_threshold(method, top):
    img, target = photo("astronaut", 96, 192), 0.3
    got = masks.edges(img, "8->32", method=method, fraction=target)
    if top is None:  # cad: just past the largest score, as edges does
        top = float(masks.sources._cad_score(img.double()).max()) + 1e-6
    source = functools.partial(masks.edges, img, "8->32", method=method)
    want = masks.match_fraction(source, target, "threshold", bounds=(0.0, top))
    assert torch.equal(got.levels, want.levelmap.levels)
    assert abs(float(got.fractions()[0]) - target) < 0.1


def test_the_default_keeps_everything_at_256_px_and_fraction_fixes_it():
    img = torch.from_numpy(_photo("astronaut", 256, 256)).permute(2, 0, 1)[None]
    assert float(masks.edges(img, "8->32").fractions()[0]) >= 0.95  # the documented small-image behaviour
    lm = masks.edges(img, "8->32", fraction=0.3)
    assert abs(float(lm.fractions()[0]) - 0.3) < 0.1
    assert masks.EDGE_THRESHOLD == 0.15 and masks.EDGE_DILATION == 11 and masks.ORACLE_KERNEL == 33
    assert torch.equal(masks.edges(img, "8->32").levels, masks.edges(img, "8->32", threshold=0.15).levels)


def test_oracle_fraction_searches_the_box():
    labels = torch.zeros(2, 96, 160, dtype=torch.long)
    labels[0, :, 80:] = 1
    labels[1, 40:, :] = 2
    got = masks.oracle(labels, "8->32", fraction=0.5)
    source = functools.partial(masks.oracle, labels, "8->32")
    want = masks.match_fraction(source, 0.5, "kernel", bounds=(1, 2 * 160 + 1))
    assert torch.equal(got.levels, want.levelmap.levels)
    assert torch.equal(masks.oracle(labels, "8->32").levels, masks.oracle(labels, "8->32", kernel=33).levels)
    assert float(masks.oracle(labels, "8->32", fraction=1.0).fractions()[0]) == 1.0


@pytest.mark.parametrize(
    "call, match",
    [
        pytest.param(
            lambda img, lab: masks.edges(img, "8->32", threshold=0.2, fraction=0.3),
            "not both",
            id="edges-threshold-and-fraction",
        ),
        pytest.param(
            lambda img, lab: masks.edges(img, "8->32", fraction=1.5),
            r"fraction must lie in \[0, 1\]",
            id="edges-fraction-above-1",
        ),
        pytest.param(
            lambda img, lab: masks.edges(img, "8->32", fraction="half"),
            "fraction must be a number",
            id="edges-fraction-text",
        ),
        pytest.param(
            lambda img, lab: masks.oracle(lab, "8->32", kernel=11, fraction=0.3),
            "not both",
            id="oracle-kernel-and-fraction",
        ),
        pytest.param(
            lambda img, lab: masks.oracle(lab, "8->32", fraction=-0.1),
            r"fraction must lie in \[0, 1\]",
            id="oracle-fraction-negative",
        ),
    ],
)
def test_fraction_errors(call, match):
    with pytest.raises(masks.MaskInputError, match=match):
        call(torch.rand(1, 3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long))


@pytest.mark.parametrize(
    "shape, hint",
    [
        pytest.param((48, 64, 3), "use torch.as_tensor(img).permute(2, 0, 1)[None]", id="HW3"),
        pytest.param((2, 48, 64, 3), "use torch.as_tensor(images).permute(0, 3, 1, 2)", id="NHW3"),
        pytest.param((3, 48, 64), "add a batch dimension: img[None]", id="3HW"),
        pytest.param((48, 64), "[None, None].expand(1, 3, -1, -1)", id="HW-gray"),
        pytest.param((48, 64, 4), "drop alpha", id="HW4-rgba"),
    ],
)
def test_image_layout_errors_say_how_to_get_n3hw(shape, hint):
    img = np.zeros(shape, np.uint8)
    with pytest.raises(masks.MaskInputError, match=r"must have shape \(N, 3, H, W\)") as err:
        masks.edges(img, "8->32")
    assert hint in str(err.value)
    with pytest.raises(masks.MaskInputError) as err:
        masks.keypoints(img, (3, 5, 7), keypoints_xy=[np.zeros((0, 2))])
    assert hint in str(err.value)


def test_following_the_hint_works():
    img = _photo("astronaut", 48, 64)  # (H, W, 3) uint8
    lm = masks.edges(torch.as_tensor(img).permute(2, 0, 1)[None], "8->32")
    assert lm.shape == (1, 6, 8)
