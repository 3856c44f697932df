"""Op-level equivalence (docs/semantics.md §3, §4): every op on both backends against the dense simulation, float64.

Seeded sweeps over channels, kernel sizes 1/3, tap spacing 1/2/4, levels 1-3, empty and full maps, borders and
sizes that are not multiples of the block.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

import adatriton.ops as AF
from adatriton import LevelMap, MultiResMap, densify, use_backend
from tests.reference.simulation import DenseSim

BACKENDS = ["torch", "dense"]
DT = torch.float64


def _map_at_stage(lm: LevelMap, stage: int, channels: int, seed: int) -> MultiResMap:
    values = torch.randn(
        lm.layout(stage).num_elements, channels, dtype=DT, generator=torch.Generator().manual_seed(seed)
    )
    return MultiResMap(values, lm.layout(stage))


def _level_maps():
    """(id, LevelMap) cases: random mixes for K = 1..3 at aligned and odd sizes, plus empty/full levels."""
    gen = torch.Generator().manual_seed(1)
    cases = []
    for k, (h, w) in itertools.product((1, 2, 3), ((8, 8), (11, 13), (16, 9))):
        cases.append((f"K{k}-{h}x{w}-mixed", LevelMap.random(2, h, w, k, generator=gen)))
    for k in (1, 2):
        for v in (0, k):
            cases.append((f"K{k}-13x10-all{v}", LevelMap.uniform(2, 13, 10, v, k)))
    one_block = torch.full((1, 7, 9), 2, dtype=torch.long)
    one_block[0, 4:, 4:8] = 0  # a lone level-0 island on the clipped bottom border, no level 1 anywhere
    cases.append(("K2-7x9-border-island", LevelMap(one_block, 2)))
    return cases


LEVEL_MAPS = _level_maps()
LM_IDS = [c[0] for c in LEVEL_MAPS]
LMS = [c[1] for c in LEVEL_MAPS]


def _dense_after(lm: LevelMap, x: MultiResMap) -> torch.Tensor:
    """Densify by brute force over elements (independent of the id map): fill every element's clipped block."""
    lay = x.layout
    out = torch.zeros(lm.batch, x.channels, lm.height, lm.width, dtype=x.dtype)
    for i in range(lay.num_elements):
        s = 1 << int(lay.element_level[i])
        y, xx = int(lay.rows[i]) * s, int(lay.cols[i]) * s
        out[int(lay.batch_index[i]), :, y : y + s, xx : xx + s] = x.values[i][:, None, None]
    return out


@pytest.mark.parametrize("lm", LMS[:6], ids=LM_IDS[:6])
def test_densify_matches_brute_force(lm):
    for stage in range(lm.num_levels + 1):
        x = _map_at_stage(lm, stage, 3, stage)
        torch.testing.assert_close(densify(x), _dense_after(lm, x), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lm", LMS, ids=LM_IDS)
@pytest.mark.parametrize(
    "k,spacing,cin,cout,groups",
    [(3, 1, 3, 5, 1), (3, 2, 16, 8, 1), (3, 4, 6, 4, 2), (5, 2, 6, 6, 6), (1, 1, 5, 7, 1)],
    ids=["k3-o1-c3", "k3-o2-c16", "k3-o4-g2", "k5-o2-depthwise", "k1"],
)
def test_conv_matches_dense_simulation(backend, lm, k, spacing, cin, cout, groups):
    gen = torch.Generator().manual_seed(k * 7 + spacing)
    weight = torch.randn(cout, cin // groups, k, k, dtype=DT, generator=gen)
    bias = torch.randn(cout, dtype=DT, generator=gen)
    sim = DenseSim(lm.levels, lm.num_levels)
    for stage in range(lm.num_levels + 1):
        x = _map_at_stage(lm, stage, cin, stage)
        for step in (False, True) if stage < lm.num_levels else (False,):
            y = AF.conv2d(x, weight, bias, spacing, groups, downsample=step, backend=backend)
            assert y.stage == stage + int(step)
            expected = sim.conv(densify(x), weight, bias, spacing, stage, step, groups)
            torch.testing.assert_close(densify(y), expected, rtol=1e-12, atol=1e-12 * k * k * cin)


@pytest.mark.parametrize("variant", ["top_left", "max"])
@pytest.mark.parametrize("lm", LMS, ids=LM_IDS)
def test_downsample_matches_dense_simulation(lm, variant):
    sim = DenseSim(lm.levels, lm.num_levels)
    x = _map_at_stage(lm, 0, 4, 0)
    dense = densify(x)
    for stage in range(lm.num_levels):
        x = AF.downsample(x, variant)
        dense = sim.downsample(dense, stage, variant)
        torch.testing.assert_close(densify(x), dense, rtol=0, atol=0)


def test_uniform_full_level_equals_strided_conv():
    """L = K everywhere: the conv at the coarsest level is the ordinary conv on the subsampled map."""
    lm = LevelMap.uniform(1, 12, 20, 2, 2)
    dense = torch.randn(1, 4, 12, 20, dtype=DT)
    weight = torch.randn(6, 4, 3, 3, dtype=DT)
    x = AF.downsample(AF.downsample(MultiResMap.from_dense(dense, lm)))
    y = AF.conv2d(x, weight, None, tap_spacing=4)
    expected = F.conv2d(dense[:, :, ::4, ::4], weight, padding=1)
    torch.testing.assert_close(densify(y)[:, :, ::4, ::4], expected)


def test_batch_norm_train_counts_each_element_once():
    lm = LevelMap.random(2, 12, 12, 2, generator=torch.Generator().manual_seed(3))
    x = _map_at_stage(lm, 2, 5, 0)
    bn = torch.nn.BatchNorm2d(5).double().train()
    y = AF.batch_norm(x, bn)
    vals = x.values
    mean, var = vals.mean(0), vals.var(0, unbiased=False)
    torch.testing.assert_close(y.values, (vals - mean) / torch.sqrt(var + bn.eps))
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * vals.var(0, unbiased=True))
    bn.eval()
    torch.testing.assert_close(
        AF.batch_norm(x, bn).values,
        bn(densify(x)).permute(0, 2, 3, 1)[
            x.layout.batch_index, x.layout.rows << x.layout.element_level, x.layout.cols << x.layout.element_level
        ],
    )


def test_batch_with_different_maps_equals_samples_alone():
    """No padding artefacts: each sample of a batch gives what it gives alone (conv, BN eval, downsample)."""
    lm = LevelMap.random(3, 10, 14, 2, generator=torch.Generator().manual_seed(4))
    dense = torch.randn(3, 4, 10, 14, dtype=DT)
    weight = torch.randn(4, 4, 3, 3, dtype=DT)

    def run(d, levels):
        x = MultiResMap.from_dense(d, LevelMap(levels, 2))
        x = AF.conv2d(x, weight, None, 1, downsample=True)
        return densify(AF.conv2d(x, weight, None, 2, downsample=True).relu())

    together = run(dense, lm.levels)
    for n in range(3):
        torch.testing.assert_close(together[n : n + 1], run(dense[n : n + 1], lm.levels[n : n + 1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_is_differentiable(backend):
    lm = LevelMap.random(1, 6, 7, 1, generator=torch.Generator().manual_seed(2))
    x = _map_at_stage(lm, 0, 2, 0)
    values = x.values.clone().requires_grad_()
    weight = torch.randn(3, 2, 3, 3, dtype=DT, requires_grad=True)

    def fn(v, w):
        return AF.conv2d(MultiResMap(v, x.layout), w, None, 2, downsample=True, backend=backend).values

    assert torch.autograd.gradcheck(fn, (values, weight))


def test_use_backend_and_bad_backend(monkeypatch):
    lm = LevelMap.random(1, 8, 8, 1, generator=torch.Generator().manual_seed(0))
    x = _map_at_stage(lm, 0, 2, 0)
    w = torch.randn(2, 2, 3, 3, dtype=DT)
    with use_backend("dense"):
        a = AF.conv2d(x, w)
    torch.testing.assert_close(a.values, AF.conv2d(x, w, backend="torch").values)
    with pytest.raises(ValueError, match="unknown backend"):
        AF.conv2d(x, w, backend="cuda")
    monkeypatch.setenv("ADATRITON_BACKEND", "nope")
    with pytest.raises(ValueError, match="ADATRITON_BACKEND"):
        AF.conv2d(x, w)


def test_conv_rejects_bad_arguments():
    lm = LevelMap.uniform(1, 4, 4, 0, 1)
    x = _map_at_stage(lm, 0, 4, 0)
    with pytest.raises(ValueError, match="odd k"):
        AF.conv2d(x, torch.randn(2, 4, 2, 2, dtype=DT))
    with pytest.raises(ValueError, match="does not fit 4 input channels"):
        AF.conv2d(x, torch.randn(2, 3, 3, 3, dtype=DT))
    with pytest.raises(ValueError, match="dtype"):
        AF.conv2d(x, torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="no downsampling left"):
        AF.conv2d(AF.downsample(x), torch.randn(2, 4, 3, 3, dtype=DT), downsample=True)
    with pytest.raises(ValueError, match="different layouts"):
        x + _map_at_stage(LevelMap.uniform(1, 4, 4, 0, 1), 0, 4, 0)
    with pytest.raises(ValueError, match="E = 16"):
        MultiResMap(torch.zeros(15, 4), lm.layout(0))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_on_cuda_match_cpu_float64(backend):
    """Index tables built on the GPU and the GPU paths give the CPU float64 numbers (fp32 round-off)."""
    lm = LevelMap.random(2, 19, 26, 2, generator=torch.Generator().manual_seed(9))
    x = _map_at_stage(lm, 0, 16, 0)
    weight = torch.randn(8, 16, 3, 3, dtype=DT)
    expected = AF.conv2d(AF.conv2d(x, weight[:, :16], None, 1, downsample=True), weight[:, :8], None, 2)
    lm_gpu = lm.to("cuda")
    xg = MultiResMap(x.values.float().cuda(), lm_gpu.layout(0))
    wg = weight.float().cuda()
    got = AF.conv2d(AF.conv2d(xg, wg, None, 1, downsample=True, backend=backend), wg[:, :8], None, 2, backend=backend)
    torch.testing.assert_close(densify(got).cpu().double(), densify(expected), rtol=1e-4, atol=1e-3)


def test_auto_backend_is_triton_on_cuda_and_torch_elsewhere(monkeypatch):
    from adatriton import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "triton"
    monkeypatch.setenv("ADATRITON_BACKEND", "auto")
    assert resolve_backend(None, torch.device("cpu")) == "torch"
    with use_backend("dense"):
        assert resolve_backend(None, torch.device("cuda", 0)) == "dense"


@pytest.mark.parametrize("kernel, downsample", [(3, False), (3, True), (1, True), (1, False)])
def test_kernel_table_is_the_one_source_of_row_tables(kernel, downsample):
    """Every backend reads its conv's row table from ``Layout.kernel_table``: the Triton kernel the compact int32
    table, the torch backend the int64 one; both hold the same rows (taps, top-left sources, or none for a 1x1)."""
    lay = LevelMap.random(2, 9, 7, 2, generator=torch.Generator().manual_seed(5)).layout(1)
    wide = lay.kernel_table(kernel, 2, downsample, compact=False)
    compact = lay.kernel_table(kernel, 2, downsample)
    if kernel == 1 and not downsample:
        assert wide is None and compact is None
        return
    assert wide.dtype == torch.long and compact.dtype == torch.int32
    assert torch.equal(wide, compact.long())
    if kernel > 1:
        assert wide is lay.tap_index(kernel, 2, downsample)  # built once, shared with the layout's own cache
    else:
        assert torch.equal(wide[:, 0], lay.downsample_sources("top_left"))
    assert lay.kernel_table(kernel, 2, downsample) is compact  # cached
