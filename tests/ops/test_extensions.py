"""Seed extensions at the op level (issue 7): SoftPool downsampling and deformable convolution, float64.

SoftPool is checked against a brute-force window loop, against dense ``softpool2d`` for uniform level maps and
against a dense simulation for mixed maps; the deformable conv against ``torchvision.ops.deform_conv2d`` on the
densified padded grid, read at the element centres.
"""

import itertools

import pytest
import torch
from torchvision.ops import deform_conv2d as tv_deform_conv2d

import adatriton.ops as AF
from adatriton import LevelMap, MultiResMap, densify
from adatriton.ops import conv as conv_op

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _map_at_stage(lm: LevelMap, stage: int, channels: int, seed: int, scale: float = 1.0) -> MultiResMap:
    values = scale * torch.randn(lm.layout(stage).num_elements, channels, dtype=DT, generator=_gen(seed))
    return MultiResMap(values, lm.layout(stage))


def _mixed_level_maps():
    """(id, LevelMap): random mixes for K = 1..3 at aligned and odd sizes, and a lone island on a clipped border."""
    gen = _gen(11)
    cases = [
        (f"K{k}-{h}x{w}", LevelMap.random(2, h, w, k, generator=gen))
        for k, (h, w) in itertools.product((1, 2, 3), ((8, 8), (11, 13), (16, 9)))
    ]
    island = torch.full((1, 7, 9), 2, dtype=torch.long)
    island[0, 4:, 4:8] = 0
    cases.append(("K2-7x9-border-island", LevelMap(island, 2)))
    return cases


MIXED = _mixed_level_maps()


# ---------------------------------------------------------------------------------------------------- SoftPool


def _softpool_loop(x: torch.Tensor) -> torch.Tensor:
    """SoftPool by the definition, one window at a time (ceil semantics: partial windows keep their real pixels).

    The window maximum is subtracted before ``exp`` (the weights are unchanged) so that large values stay finite.
    """
    n, c, h, w = x.shape
    out = torch.empty(n, c, -(-h // 2), -(-w // 2), dtype=x.dtype)
    for a, b in itertools.product(range(out.shape[2]), range(out.shape[3])):
        win = x[:, :, 2 * a : 2 * a + 2, 2 * b : 2 * b + 2].reshape(n, c, -1)
        ex = torch.exp(win - win.amax(-1, keepdim=True))
        out[:, :, a, b] = (ex / ex.sum(-1, keepdim=True) * win).sum(-1)
    return out


def _simulate_softpool_step(levels: torch.Tensor, dense: torch.Tensor, stage: int) -> torch.Tensor:
    """Dense simulation of step ``stage + 1`` on a densified map: pool the level-``stage`` grid, pick ``L > stage``.

    Reading every ``2^stage``-th pixel gives one value per level-``stage`` cell (inside merging blocks, exactly their
    level-``stage`` elements); ``softpool2d`` merges 2x2 cells, a partial border window only the cells with real
    pixels; the result is upsampled back and kept where the block merges.
    """
    sub, s = 1 << stage, 1 << (stage + 1)
    h, w = levels.shape[1:]
    pooled = AF.softpool2d(dense[:, :, ::sub, ::sub])
    up = pooled.repeat_interleave(s, 2).repeat_interleave(s, 3)[:, :, :h, :w]
    return torch.where((levels > stage)[:, None], up, dense)


@pytest.mark.parametrize("size", [(4, 6), (5, 7), (1, 3)], ids=["4x6", "5x7-odd", "1x3-odd"])
def test_softpool2d_matches_window_loop(size):
    x = torch.randn(2, 3, *size, dtype=DT, generator=_gen(0))
    torch.testing.assert_close(AF.softpool2d(x), _softpool_loop(x), rtol=1e-13, atol=1e-13)


def test_softpool_level0_leaves_the_map_unchanged():
    lm = LevelMap.uniform(2, 7, 9, 0, 2)
    x = _map_at_stage(lm, 0, 3, 0)
    y = AF.downsample(x, "softpool")
    assert y.stage == 1
    torch.testing.assert_close(y.values, x.values, rtol=0, atol=0)


@pytest.mark.parametrize(
    "k,level,size",
    [(1, 1, (8, 6)), (1, 1, (7, 9)), (2, 2, (8, 12)), (2, 2, (11, 13)), (2, 1, (9, 10))],
    ids=["K1-L1-8x6", "K1-L1-7x9-odd", "K2-L2-8x12", "K2-L2-11x13-odd", "K2-L1-9x10-odd"],
)
def test_softpool_uniform_matches_dense_softpool(k, level, size):
    """L = v everywhere: each step is the dense network's ``softpool2d``, as long as the level allows."""
    lm = LevelMap.uniform(2, *size, level, k)
    dense = torch.randn(2, 3, *size, dtype=DT, generator=_gen(1))
    x, expected = MultiResMap.from_dense(dense, lm), dense
    for stage in range(k):
        x = AF.downsample(x, "softpool")
        if stage < level:
            expected = AF.softpool2d(expected)
        # Uniform: every element is at one level, in (sample, row, col) order like the dense grid.
        torch.testing.assert_close(x.values, expected.permute(0, 2, 3, 1).reshape(-1, 3), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("lm", [c[1] for c in MIXED], ids=[c[0] for c in MIXED])
def test_softpool_mixed_matches_dense_simulation(lm):
    x = _map_at_stage(lm, 0, 4, 2)
    dense = densify(x)
    for stage in range(lm.num_levels):
        x = AF.downsample(x, "softpool")
        dense = _simulate_softpool_step(lm.levels, dense, stage)
        torch.testing.assert_close(densify(x), dense, rtol=1e-13, atol=1e-13)


def test_softpool_extreme_values_do_not_overflow():
    """exp(1e3) overflows even float64; the max-shifted softmax gives the dominant value, in float32 too."""
    lm = LevelMap.uniform(1, 3, 5, 1, 1)
    dense = 1e3 * torch.randn(1, 2, 3, 5, generator=_gen(3))
    for xd in (dense, dense.double()):
        y = AF.downsample(MultiResMap.from_dense(xd, lm), "softpool")
        assert torch.isfinite(y.values).all()
        expected = _softpool_loop(dense.double()).permute(0, 2, 3, 1).reshape(-1, 2)
        torch.testing.assert_close(y.values.double(), expected, rtol=1e-5, atol=1e-3)
        assert torch.isfinite(AF.softpool2d(xd)).all()
    block = torch.tensor([[[[1e3, -1e3], [1e3, 0.0]]]], dtype=DT)
    torch.testing.assert_close(AF.softpool2d(block).flatten(), torch.tensor([1e3], dtype=DT))


def test_softpool_is_differentiable():
    lm = LevelMap.random(1, 5, 7, 2, generator=_gen(4))
    x = _map_at_stage(lm, 0, 2, 5)
    values = x.values.clone().requires_grad_()

    def fn(v):
        return AF.downsample(AF.downsample(MultiResMap(v, x.layout), "softpool"), "softpool").values

    assert torch.autograd.gradcheck(fn, (values,), fast_mode=True)
    assert torch.autograd.gradcheck(AF.softpool2d, (torch.randn(1, 2, 3, 5, dtype=DT, requires_grad=True),))


def test_downsample_rejects_unknown_variant():
    x = _map_at_stage(LevelMap.uniform(1, 4, 4, 1, 1), 0, 2, 0)
    with pytest.raises(ValueError, match="variant"):
        AF.downsample(x, "soft_pool")


# ---------------------------------------------------------------------------------------------------- deformable


def _deform_reference(x, offset, weight, bias, spacing, mask=None):
    """The rule written densely: torchvision's deformable conv on the padded densified grid, read at the centres."""
    k, lay = weight.shape[-1], x.layout
    out = tv_deform_conv2d(
        x.densify(padded=True),
        offset.densify(padded=True),
        weight,
        bias,
        padding=spacing * (k // 2),
        dilation=spacing,
        mask=None if mask is None else mask.densify(padded=True),
    )
    return out.permute(0, 2, 3, 1)[lay.batch_index, lay.centre_y, lay.centre_x]


def _deform_inputs(lm, stage, cin, cout, k, seed, offset_scale=3.0):
    gen = _gen(seed)
    x = _map_at_stage(lm, stage, cin, seed)
    e = x.layout.num_elements
    offset = MultiResMap(offset_scale * torch.randn(e, 2 * k * k, dtype=DT, generator=gen), x.layout)
    weight = torch.randn(cout, cin, k, k, dtype=DT, generator=gen)
    bias = torch.randn(cout, dtype=DT, generator=gen)
    return x, offset, weight, bias


UNIFORM_DEFORM = [
    ("K1-L1-8x8", LevelMap.uniform(2, 8, 8, 1, 1)),
    ("K1-L1-7x9-odd", LevelMap.uniform(2, 7, 9, 1, 1)),
    ("K2-L2-8x12", LevelMap.uniform(1, 8, 12, 2, 2)),
    ("K2-L2-10x13-odd", LevelMap.uniform(2, 10, 13, 2, 2)),
]
DEFORM_MAPS = UNIFORM_DEFORM + [c for c in MIXED if c[0] in ("K1-11x13", "K2-11x13", "K3-16x9", "K2-7x9-border-island")]


@pytest.mark.parametrize("spacing", [1, 2, 4], ids=["o1", "o2", "o4"])
@pytest.mark.parametrize("size", [(6, 8), (7, 9)], ids=["6x8", "7x9-odd"])
def test_deform_level0_is_the_dense_deformable_conv(size, spacing):
    """L = 0 everywhere: exactly torchvision's deformable conv on the dense map."""
    lm = LevelMap.uniform(2, *size, 0, 2)
    gen = _gen(spacing)
    dense = torch.randn(2, 3, *size, dtype=DT, generator=gen)
    off = 3 * torch.randn(2, 18, *size, dtype=DT, generator=gen)
    weight = torch.randn(4, 3, 3, 3, dtype=DT, generator=gen)
    bias = torch.randn(4, dtype=DT, generator=gen)
    y = AF.deform_conv2d(
        MultiResMap.from_dense(dense, lm), MultiResMap.from_dense(off, lm), weight, bias, tap_spacing=spacing
    )
    expected = tv_deform_conv2d(dense, off, weight, bias, padding=spacing, dilation=spacing)
    torch.testing.assert_close(densify(y), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spacing", [1, 2, 4], ids=["o1", "o2", "o4"])
@pytest.mark.parametrize("lm", [c[1] for c in DEFORM_MAPS], ids=[c[0] for c in DEFORM_MAPS])
def test_deform_matches_dense_rule(lm, spacing):
    """Uniform and mixed maps at the last stage: samples at the centres (in the padding too) of the padded grid."""
    x, offset, weight, bias = _deform_inputs(lm, lm.num_levels, 3, 5, 3, spacing)
    y = AF.deform_conv2d(x, offset, weight, bias, tap_spacing=spacing)
    assert y.layout.same_as(x.layout)
    torch.testing.assert_close(y.values, _deform_reference(x, offset, weight, bias, spacing), rtol=1e-12, atol=1e-12)


def test_deform_offsets_outside_the_grid_read_zero():
    """Samples pushed beyond the padded grid read zero; samples straddling its edge keep their inside corners."""
    lm = LevelMap.random(1, 7, 9, 2, generator=_gen(6))
    x, offset, weight, bias = _deform_inputs(lm, 2, 2, 3, 3, 7, offset_scale=6.0)
    lay, wp = x.layout, lm.padded_size[1]
    far = offset.values.clone()
    far[::2] = 1e4  # every tap of every other element lands far outside: only the bias remains
    tap = torch.arange(9)
    edge = torch.empty_like(offset.values)  # every sample at (-0.5, Wp - 0.5): one corner inside, three outside
    edge[:, 0::2] = -0.5 - (lay.centre_y[:, None] + tap // 3 - 1).to(DT)
    edge[:, 1::2] = wp - 0.5 - (lay.centre_x[:, None] + tap % 3 - 1).to(DT)
    for off in (far, edge):
        off_map = MultiResMap(off, lay)
        y = AF.deform_conv2d(x, off_map, weight, bias)
        torch.testing.assert_close(y.values, _deform_reference(x, off_map, weight, bias, 1), rtol=1e-12, atol=1e-12)
        if off is far:
            torch.testing.assert_close(y.values[::2], bias.expand(len(y.values[::2]), -1), rtol=0, atol=0)
    corner = x.densify(padded=True)
    expected = bias + 0.25 * torch.einsum("oct,c->o", weight.flatten(2), corner[0, :, 0, wp - 1])
    torch.testing.assert_close(AF.deform_conv2d(x, MultiResMap(edge, lay), weight, bias).values[0], expected)


@pytest.mark.parametrize("spacing", [1, 2, 4], ids=["o1", "o2", "o4"])
@pytest.mark.parametrize("lm", [c[1] for c in MIXED[3:6]], ids=[c[0] for c in MIXED[3:6]])
def test_deform_zero_offsets_equal_conv2d(lm, spacing):
    for stage in range(lm.num_levels + 1):
        x, offset, weight, bias = _deform_inputs(lm, stage, 3, 4, 3, stage)
        zero = MultiResMap(torch.zeros_like(offset.values), x.layout)
        y = AF.deform_conv2d(x, zero, weight, bias, tap_spacing=spacing)
        expected = AF.conv2d(x, weight, bias, tap_spacing=spacing, backend="torch")
        torch.testing.assert_close(y.values, expected.values, rtol=1e-13, atol=1e-13)


def test_deform_with_offsets_from_a_conv_and_a_mask():
    """The seed's wiring (offsets from a bias-free 3x3 conv on the same map) and DCNv2 modulation."""
    lm = LevelMap.random(2, 10, 11, 2, generator=_gen(8))
    x, _, weight, bias = _deform_inputs(lm, 2, 4, 3, 3, 9)
    offset = AF.conv2d(x, torch.randn(18, 4, 3, 3, dtype=DT, generator=_gen(10)), None, tap_spacing=2)
    mask = MultiResMap(torch.rand(x.layout.num_elements, 9, dtype=DT, generator=_gen(11)), x.layout)
    y = AF.deform_conv2d(x, offset, weight, bias, tap_spacing=2, mask=mask)
    expected = _deform_reference(x, offset, weight, bias, 2, mask)
    torch.testing.assert_close(y.values, expected, rtol=1e-12, atol=1e-12)


def test_deform_chunks_rows(monkeypatch):
    lm = LevelMap.random(1, 9, 10, 2, generator=_gen(12))
    x, offset, weight, bias = _deform_inputs(lm, 2, 3, 2, 3, 13)
    whole = AF.deform_conv2d(x, offset, weight, bias, tap_spacing=2)
    monkeypatch.setattr(conv_op, "MAX_GATHER_BYTES", 9 * 4 * 3 * 8 * 5)  # five rows per chunk
    chunked = AF.deform_conv2d(x, offset, weight, bias, tap_spacing=2)
    torch.testing.assert_close(chunked.values, whole.values, rtol=1e-13, atol=1e-13)  # GEMM blocking varies


def test_deform_is_differentiable():
    levels = torch.tensor([[[1, 1, 0, 0, 1], [1, 1, 0, 0, 1]]])  # level 1, level 0 and a clipped level-1 border block
    lm = LevelMap(levels, 1)
    x, offset, weight, bias = _deform_inputs(lm, 1, 2, 2, 3, 15, offset_scale=1.5)
    mask = torch.rand(x.layout.num_elements, 9, dtype=DT, generator=_gen(16))
    inputs = [t.clone().requires_grad_() for t in (x.values, offset.values, weight, bias, mask)]

    def fn(v, off, w, b, m):
        lay = x.layout
        return AF.deform_conv2d(MultiResMap(v, lay), MultiResMap(off, lay), w, b, 1, MultiResMap(m, lay)).values

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_deform_rejects_bad_arguments():
    lm = LevelMap.uniform(1, 4, 4, 0, 1)
    x, offset, weight, _ = _deform_inputs(lm, 0, 4, 4, 3, 0)
    with pytest.raises(ValueError, match="groups=1"):
        AF.deform_conv2d(x, offset, torch.randn(4, 2, 3, 3, dtype=DT), groups=2)
    with pytest.raises(ValueError, match="18 channels"):
        AF.deform_conv2d(x, MultiResMap(offset.values[:, :9], x.layout), weight)
    with pytest.raises(ValueError, match="layout"):
        AF.deform_conv2d(AF.downsample(x), offset, weight)
    with pytest.raises(ValueError, match="9 channels"):
        AF.deform_conv2d(x, offset, weight, mask=offset)
    with pytest.raises(TypeError, match="MultiResMap"):
        AF.deform_conv2d(x, offset.values, weight)
