"""Strategies and the reference side of the property tests: random aligned level maps, op chains run both on a
:class:`~adatriton.MultiResMap` and on the dense simulation of ``tests/reference/simulation.py``, and a rounding-error
bound carried along the chain.

Tolerances. The reference runs in float64 on the same (dtype-representable) inputs, weights and BatchNorm
parameters as the op, so the only difference is the op's own rounding. Every step carries two dense maps next to
the reference value ``R``: ``B >= |R|`` elementwise (a magnitude bound) and ``E`` (a bound on the accumulated error):

- conv with reduction length ``n = k*k*Cin/groups``: ``B' = conv(B, |W|) + |b|``,
  ``E' = conv(E, |W|) + n u B'`` (the standard dot-product bound ``gamma_n`` with unit roundoff ``u``);
- BatchNorm (eval) ``y = (x - mean) s + b``: ``B' = |s| B + |mean s| + |b|`` (which also bounds the folded
  ``x s + (b - mean s)`` of the fused Triton epilogue), ``E' = |s| E + 4 u B'``; ReLU leaves both;
- top-left / max downsampling moves (maxes) them; SoftPool, a convex combination whose derivative is bounded by
  ``1 + 2 max|x|``, gives ``E' = maxpool(E) (1 + 2 maxpool(B)) + 8 u maxpool(B)``.

The test asserts ``|op - R| <= SAFETY * E + tiny``: float64 bounds are ~1e-15 relative (tight), float32 bounds scale
with the reduction length (and the chain) as they should.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st
from torch import Tensor, nn

from adatriton import LevelMap, MultiResMap
from adatriton import ops as AF
from tests.reference.simulation import DenseSim

#: Multiplier of every test's example count (``ADATRITON_HYPOTHESIS_SCALE=20`` for a longer hunt).
SCALE = float(os.environ.get("ADATRITON_HYPOTHESIS_SCALE", "1"))
#: Unit roundoff per dtype.
UNIT = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}
#: Slack on the error bound (the bounds are worst-case already; the factor covers summation-order differences of
#: oneDNN / the interpreter's dot and the float64 reference's own rounding).
SAFETY = 4.0


def examples(n: int) -> int:
    """The example budget of one property test (scaled by ``$ADATRITON_HYPOTHESIS_SCALE``)."""
    return max(1, round(n * SCALE))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def level_maps(draw, max_batch: int = 3, max_side: int = 13, max_levels: int = 3) -> LevelMap:
    """An aligned level map, different per sample: ``LevelMap.random`` seeded from the example, odd sizes and
    sizes below one block included; sometimes with degenerate per-level probabilities (all fine, all coarse)."""
    k = draw(st.integers(1, max_levels), label="K")
    n = draw(st.integers(1, max_batch), label="N")
    h = draw(st.integers(1, max_side), label="Hf")
    w = draw(st.integers(1, max_side), label="Wf")
    stops = st.lists(st.sampled_from((0.0, 0.3, 0.7, 1.0)), min_size=k + 1, max_size=k + 1).map(tuple)
    probs = draw(st.one_of(st.none(), stops), label="probs")
    seed = draw(st.integers(0, 2**31 - 1), label="map seed")
    return LevelMap.random(n, h, w, k, probs=probs, generator=generator(seed))


def random_values(shape, dtype: torch.dtype, seed: int, scale: float = 1.0) -> Tensor:
    """Normal values rounded to ``dtype`` (the reference then sees exactly what the op sees)."""
    return (torch.randn(shape, dtype=torch.float64, generator=generator(seed)) * scale).to(dtype)


def eval_batch_norm(channels: int, dtype: torch.dtype, seed: int) -> nn.BatchNorm2d:
    """An eval-mode BatchNorm with random running statistics and affine parameters (no blow-up: var >= 0.5)."""
    g = generator(seed)
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(channels, generator=g))
        bn.weight.copy_(0.5 + torch.rand(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
    return bn.to(dtype).requires_grad_(False)


@dataclass
class Chain:
    """One op chain run on both sides: the op result ``x`` and the reference ``ref`` with bounds ``mag``, ``err``
    (dense finest-grid maps at ``stage``)."""

    lm: LevelMap
    x: MultiResMap
    dtype: torch.dtype
    backend: str
    ref: Tensor = field(init=False)
    mag: Tensor = field(init=False)
    err: Tensor = field(init=False)
    stage: int = field(init=False)
    steps: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.sim = DenseSim(self.lm.levels, self.lm.num_levels)
        self.ref = self.x.densify(backend="torch").double()
        self.mag = self.ref.abs()
        self.err = torch.zeros_like(self.ref)
        self.stage = self.x.stage
        self.u = UNIT[self.dtype]

    @property
    def channels(self) -> int:
        return self.x.channels

    @property
    def can_step(self) -> bool:
        return self.stage < self.lm.num_levels

    def conv(self, cout: int, k: int, spacing: int, groups: int, step: bool, bias: bool, seed: int) -> None:
        cin = self.channels
        fan_in = cin // groups * k * k
        w = random_values((cout, cin // groups, k, k), self.dtype, seed, fan_in**-0.5)
        b = random_values((cout,), self.dtype, seed + 1) if bias else None
        self.x = AF.conv2d(self.x, w, b, spacing, groups, downsample=step, backend=self.backend)
        wd, bd = w.double(), None if b is None else b.double()
        sim = self.sim
        self.ref = sim.conv(self.ref, wd, bd, spacing, self.stage, step, groups)
        self.mag = sim.conv(self.mag, wd.abs(), None if bd is None else bd.abs(), spacing, self.stage, step, groups)
        self.err = sim.conv(self.err, wd.abs(), None, spacing, self.stage, step, groups) + fan_in * self.u * self.mag
        self.stage += int(step)
        self.steps.append(f"conv(cout={cout}, k={k}, o={spacing}, g={groups}, step={step}, bias={bias})")

    def conv_bn_act(self, cout: int, spacing: int, step: bool, relu: bool, residual: bool, seed: int) -> None:
        """The fused conv-BatchNorm(-add)-ReLU (one launch on triton), 3x3; ``residual`` adds the input (same
        layout and channels, so only without a step and with ``cout == Cin``)."""
        before = (self.x, self.ref, self.mag, self.err)
        bn = eval_batch_norm(cout, self.dtype, seed + 2)
        cin = self.channels
        w = random_values((cout, cin, 3, 3), self.dtype, seed, (9 * cin) ** -0.5)
        res = before[0] if residual else None
        self.x = AF.conv_bn_act(
            self.x, w, None, bn, relu, res, tap_spacing=spacing, downsample=step, backend=self.backend
        )
        wd, sim = w.double(), self.sim
        self.ref = sim.conv(self.ref, wd, None, spacing, self.stage, step)
        self.mag = sim.conv(self.mag, wd.abs(), None, spacing, self.stage, step)
        self.err = sim.conv(self.err, wd.abs(), None, spacing, self.stage, step) + 9 * cin * self.u * self.mag
        self.stage += int(step)
        self._affine(bn)
        if residual:
            self.ref = self.ref + before[1]
            self.mag = self.mag + before[2]
            self.err = self.err + before[3] + self.u * self.mag
        if relu:
            self.ref = self.ref.relu()
        self.steps.append(f"conv_bn_act(cout={cout}, o={spacing}, step={step}, relu={relu}, residual={residual})")

    def _affine(self, bn: nn.BatchNorm2d) -> None:
        inv = torch.rsqrt(bn.running_var.double() + bn.eps)
        s = (bn.weight.double() * inv).view(1, -1, 1, 1)
        shift = (bn.running_mean.double() * s.flatten()).view(1, -1, 1, 1)
        b = bn.bias.double().view(1, -1, 1, 1)
        self.ref = (self.ref - bn.running_mean.double().view(1, -1, 1, 1)) * s + b
        # |s x| + |mean s| + |b| bounds every intermediate of (x - mean) s + b and of a folded x s + (b - mean s)
        self.mag = self.mag * s.abs() + shift.abs() + b.abs()
        self.err = self.err * s.abs() + 4 * self.u * self.mag

    def batch_norm(self, seed: int) -> None:
        bn = eval_batch_norm(self.channels, self.dtype, seed)
        self.x = AF.batch_norm(self.x, bn)
        self._affine(bn)
        self.steps.append("batch_norm(eval)")

    def relu(self) -> None:
        self.x = AF.relu(self.x)
        self.ref = self.ref.relu()
        self.steps.append("relu")

    def downsample(self, variant: str) -> None:
        self.x = AF.downsample(self.x, variant)
        sim, j = self.sim, self.stage
        self.ref = sim.downsample(self.ref, j, variant)
        if variant == "softpool":
            peak = sim.downsample(self.mag, j, "max")
            self.err = sim.downsample(self.err, j, "max") * (1 + 2 * peak) + 8 * self.u * peak
            self.mag = peak
        else:  # a selection: |max x| <= max |x|, and the error of a max is at most the largest error
            self.mag = sim.downsample(self.mag, j, "max" if variant == "max" else variant)
            self.err = sim.downsample(self.err, j, "max" if variant == "max" else variant)
        self.stage += 1
        self.steps.append(f"downsample({variant})")

    def check(self) -> None:
        """The op's densified result against the reference, within the carried error bound."""
        assert self.x.stage == self.stage, (self.x.stage, self.stage)
        got = self.x.densify(backend="torch").double()
        assert got.shape == self.ref.shape, (tuple(got.shape), tuple(self.ref.shape))
        bound = SAFETY * self.err + 1e-300
        excess = (got - self.ref).abs() / bound
        worst = float(excess.max()) if excess.numel() else 0.0
        assert worst <= 1.0, (
            f"{self.dtype} {self.backend} chain {self.steps}: |op - reference| reaches {worst:.3g} x the bound "
            f"(max error {float((got - self.ref).abs().max()):.3g}, max bound {float(bound.max()):.3g})"
        )
