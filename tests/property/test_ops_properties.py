"""Property-based tests (hypothesis) of the ops on multi-resolution maps against the dense simulation of
docs/semantics.md (``tests/reference/simulation.py``): random grid sizes (odd and sub-block ones included), K,
aligned level maps different per sample, ops and op chains, float64 and float32 with rounding-error bounds
(``strategies.Chain``), the torch and dense backends, and the triton backend in the interpreter on a few small
examples.

Deterministic in CI: the ``ci`` profile of ``conftest.py`` (derandomized, no deadline) and a fixed example budget
per test (``strategies.examples``).
"""

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from adatriton import LevelMap, MultiResMap
from adatriton import ops as AF
from adatriton.runtime.backend import triton_runs_on
from tests.reference.simulation import DenseSim

from .strategies import Chain, examples, level_maps, random_values

DTYPES = st.sampled_from([torch.float64, torch.float32])
SEEDS = st.integers(0, 2**31 - 1)


def _map_at(lm: LevelMap, stage: int, channels: int, dtype: torch.dtype, seed: int) -> MultiResMap:
    """Random values on the layout of ``stage`` (what the ops at that stage of a network see)."""
    layout = lm.layout(stage)
    return MultiResMap(random_values((layout.num_elements, channels), dtype, seed), layout)


@st.composite
def conv_args(draw, channels: int, can_step: bool, spacings=(1, 2, 3, 4)):
    groups = draw(st.sampled_from((1, 1, 2, 3)), label="groups") if channels % 2 == 0 or channels % 3 == 0 else 1
    while channels % groups:
        groups -= 1
    return {
        "cout": groups * draw(st.integers(1, 4), label="cout per group"),
        "k": draw(st.sampled_from((1, 3, 3, 5)), label="k"),
        "spacing": draw(st.sampled_from(spacings), label="tap spacing"),
        "groups": groups,
        "step": can_step and draw(st.booleans(), label="downsample"),
        "bias": draw(st.booleans(), label="bias"),
        "seed": draw(SEEDS, label="weight seed"),
    }


# ---------------------------------------------------------------------------------------------- single ops
@pytest.mark.parametrize("backend", ["torch", "dense"])
@settings(max_examples=examples(60))
@given(data=st.data())
def test_conv_matches_simulation(backend, data):
    lm = data.draw(level_maps(), label="level map")
    dtype = data.draw(DTYPES, label="dtype")
    stage = data.draw(st.integers(0, lm.num_levels), label="stage")
    cin = data.draw(st.integers(1, 6), label="Cin")
    chain = Chain(lm, _map_at(lm, stage, cin, dtype, data.draw(SEEDS)), dtype, backend)
    chain.conv(**data.draw(conv_args(cin, chain.can_step), label="conv"))
    chain.check()


@settings(max_examples=examples(50))
@given(data=st.data())
def test_downsample_steps_match_simulation(data):
    lm = data.draw(level_maps(), label="level map")
    dtype = data.draw(DTYPES, label="dtype")
    variant = data.draw(st.sampled_from(("top_left", "max", "softpool")), label="variant")
    stage = data.draw(st.integers(0, lm.num_levels - 1), label="stage")
    chain = Chain(lm, _map_at(lm, stage, data.draw(st.integers(1, 4)), dtype, data.draw(SEEDS)), dtype, "torch")
    while chain.can_step:
        chain.downsample(variant)
        chain.check()
    if variant != "softpool":  # selections: bit-exact
        assert torch.equal(chain.x.densify().double(), chain.ref)


@settings(max_examples=examples(40))
@given(data=st.data())
def test_densify_matches_simulation(data):
    """Densify (§2) and the padded grid (§4): every pixel reads its element, padding reads its block's element or
    zero; the same on every backend (the triton scatter in the interpreter is covered below)."""
    lm = data.draw(level_maps(), label="level map")
    dtype = data.draw(DTYPES, label="dtype")
    stage = data.draw(st.integers(0, lm.num_levels), label="stage")
    x = _map_at(lm, stage, data.draw(st.integers(1, 3)), dtype, data.draw(SEEDS))
    dense = x.densify()
    assert dense.shape == (lm.batch, x.channels, lm.height, lm.width) and dense.dtype == dtype
    assert torch.equal(x.densify(backend="dense"), dense)
    sim = DenseSim(lm.levels, lm.num_levels)
    assert torch.equal(x.densify(padded=True), sim.pad(dense, stage))
    # entering the adaptive part (every finest pixel a level-0 element) and leaving it again: the identity
    assert torch.equal(MultiResMap.from_dense(dense, lm).densify(), dense)


@settings(max_examples=examples(30))
@given(data=st.data())
def test_batch_norm_eval_is_per_pixel(data):
    lm = data.draw(level_maps(), label="level map")
    dtype = data.draw(DTYPES, label="dtype")
    stage = data.draw(st.integers(0, lm.num_levels), label="stage")
    chain = Chain(lm, _map_at(lm, stage, data.draw(st.integers(1, 5)), dtype, data.draw(SEEDS)), dtype, "torch")
    chain.batch_norm(data.draw(SEEDS))
    chain.check()


# ---------------------------------------------------------------------------------------------- chains
@st.composite
def chain_ops(draw, chain: Chain, max_ops: int):
    """Apply 1..max_ops random ops to ``chain``, checking after each."""
    for _ in range(draw(st.integers(1, max_ops), label="ops")):
        kinds = ["conv", "conv_bn_act", "batch_norm", "relu"] + (["downsample"] if chain.can_step else [])
        kind = draw(st.sampled_from(kinds), label="op")
        event(f"{chain.backend} {kind}")  # --hypothesis-show-statistics lists what ran
        if kind == "conv":
            chain.conv(**draw(conv_args(chain.channels, chain.can_step, spacings=(1, 2, 4)), label="conv"))
        elif kind == "conv_bn_act":
            step = chain.can_step and draw(st.booleans(), label="downsample")
            residual = not step and draw(st.booleans(), label="residual")
            chain.conv_bn_act(
                cout=chain.channels if residual else draw(st.integers(1, 4), label="cout"),
                spacing=draw(st.sampled_from((1, 2, 4)), label="tap spacing"),
                step=step,
                relu=draw(st.booleans(), label="relu"),
                residual=residual,
                seed=draw(SEEDS, label="seed"),
            )
        elif kind == "batch_norm":
            chain.batch_norm(draw(SEEDS, label="bn seed"))
        elif kind == "relu":
            chain.relu()
        else:
            chain.downsample(draw(st.sampled_from(("top_left", "max", "softpool")), label="variant"))
        chain.check()
    return chain


@pytest.mark.parametrize("backend", ["torch", "dense"])
@settings(max_examples=examples(40))
@given(data=st.data())
def test_chains_match_simulation(backend, data):
    """A network's worth of ops from the finest grid: the map enters at stage 0 (``from_dense``), then random
    convs (tap spacings, groups, fused downsampling steps), conv-BN(-add)-ReLU, eval BatchNorm, ReLU and
    downsampling steps of every variant."""
    lm = data.draw(level_maps(max_side=11), label="level map")
    dtype = data.draw(DTYPES, label="dtype")
    cin = data.draw(st.integers(1, 4), label="Cin")
    dense = random_values((lm.batch, cin, lm.height, lm.width), dtype, data.draw(SEEDS))
    chain = Chain(lm, MultiResMap.from_dense(dense, lm), dtype, backend)
    data.draw(chain_ops(chain, max_ops=5), label="chain")


# ---------------------------------------------------------------------------------------------- triton
@pytest.mark.skipif(not triton_runs_on(torch.device("cpu")), reason="needs TRITON_INTERPRET=1")
@settings(max_examples=examples(10))
@given(data=st.data())
def test_triton_in_the_interpreter_matches_simulation(data):
    """A few small float32 chains on the triton backend (implicit-GEMM kernel, fused epilogue, densify kernel)."""
    lm = data.draw(level_maps(max_batch=2, max_side=9, max_levels=2), label="level map")
    cin = data.draw(st.integers(2, 4), label="Cin")  # 1 channel: see the test below
    dense = random_values((lm.batch, cin, lm.height, lm.width), torch.float32, data.draw(SEEDS))
    chain = Chain(lm, MultiResMap.from_dense(dense, lm), torch.float32, "triton")
    # no gradient: conv_bn_act takes the fused single-launch path
    with torch.no_grad():
        data.draw(chain_ops(chain, max_ops=2), label="chain")
        assert torch.equal(chain.x.densify(backend="triton"), chain.x.densify(backend="torch"))


@pytest.mark.skipif(not triton_runs_on(torch.device("cpu")), reason="needs TRITON_INTERPRET=1")
def test_triton_conv_of_a_one_channel_map_entered_from_dense():
    lm = LevelMap.random(1, 4, 6, 1, generator=torch.Generator().manual_seed(0))
    x = MultiResMap.from_dense(torch.randn(1, 1, 4, 6), lm)
    w = torch.randn(2, 1, 3, 3)
    with torch.no_grad():
        got = AF.conv2d(x, w, backend="triton")
    torch.testing.assert_close(got.values, AF.conv2d(x, w, backend="torch").values)
