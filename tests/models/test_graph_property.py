"""Property test of the graph path (docs/semantics.md §8) over random small CNNs: ``adatriton.convert`` either
converts and the converted model equals the dense simulation of the rules (``tests/reference/graph_simulation.py``)
on a random mixed level map, in float64, or it raises a clear ``GraphConversionError``; no other exception, ever.

The CNNs mix convs of every kernel size, stride, dilation and grouping the rules name (and some they do not: padding
modes other than zeros, unpadded convs, even kernels, 3x3 pools with stride 2), BatchNorm, the activations ReLU, ReLU6,
Hardswish, SiLU and GELU, residual additions (strided ones with a 1x1 shortcut), 2x2 max and average pools,
squeeze-and-excitation, and sometimes a classifier head; inputs of odd sizes, and example inputs of other (also
very small) sizes. Derandomized (the same 200 networks every run), a few channels each.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import adatriton
from adatriton import LevelMap
from adatriton.models.graph import GraphConversionError
from tests.reference.graph_simulation import simulate

DT = torch.float64
#: conversion -> (finest stride a, levels K, stride-2 layers the model needs to reach a * 2^K).
CONVERSIONS = {"1->8": (1, 3, 3), "8->16": (8, 1, 4), "8->32": (8, 2, 5), "16->32": (16, 1, 5)}
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU)


class Residual(nn.Module):
    """``body(x) + shortcut(x)``: a basic block, strided (1x1 conv shortcut) or not (identity)."""

    def __init__(self, body: nn.Module, shortcut: nn.Module):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class SqueezeExcite(nn.Module):
    """``x * sigmoid(fc2(relu(fc1(mean(x)))))``, as MobileNetV3 / EfficientNet do it."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, 2, 1), nn.Conv2d(2, channels, 1)

    def forward(self, x):
        s = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Head(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@st.composite
def layers(draw, cin: int, stride: int) -> tuple[nn.Module, int]:
    """One layer (or block) with input channels ``cin`` and stride ``stride``; returns it and its output channels."""
    kind = draw(st.sampled_from(["conv"] * 4 + ["bn", "act", "act", "res", "res", "pool", "se"]))
    if draw(st.integers(0, 15)) == 0:
        kind = "odd"
    if kind == "pool" or (kind in ("bn", "act", "se") and stride == 2):
        if stride == 1:
            return nn.Identity(), cin
        return draw(st.sampled_from([nn.MaxPool2d(2, 2), nn.AvgPool2d(2, 2), nn.MaxPool2d(3, 2, 1)])), cin
    if kind == "bn":
        return nn.BatchNorm2d(cin), cin
    if kind == "act":
        return draw(st.sampled_from(ACTIVATIONS))(), cin
    if kind == "se":
        return SqueezeExcite(cin), cin
    cout = draw(st.integers(1, 4))
    if kind == "odd":
        # Layers the rules cannot express on a map: padding modes other than zeros, unpadded convs, even kernels.
        # In the dense part the converter refuses those whose grid is neither the floor nor the ceil of the input's
        # over the stride (unpadded, 2x2 with stride 1); a 2x2 / stride 2 or a 4x4 / stride 2 / padding 1 conv
        # keeps it (the floor) and runs there as in the original network.
        odd = draw(st.sampled_from(["reflect", "replicate", "circular", "unpadded", "even", "even"]))
        if odd == "unpadded":
            return nn.Conv2d(cin, cout, 3, stride, 0), cout
        if odd == "even":
            k = draw(st.sampled_from([2, 4]))
            return nn.Conv2d(cin, cout, k, stride, draw(st.sampled_from([0, 1]))), cout
        return nn.Conv2d(cin, cout, 3, stride, 1, padding_mode=odd), cout
    if kind == "res":
        body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            draw(st.sampled_from(ACTIVATIONS))(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        )
        shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)
        return Residual(body, shortcut), cout
    k = draw(st.sampled_from([1, 3, 5]))
    dilation = draw(st.sampled_from([1, 1, 2])) if k > 1 else 1
    groups = draw(st.sampled_from([1, 1, 2, "depthwise"]))
    if groups == "depthwise":
        groups = cout = cin
    elif cin % groups or cout % groups:
        groups = 1
    return nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups, bias=draw(st.booleans())), cout


@st.composite
def cases(draw):
    conversion = draw(st.sampled_from(sorted(CONVERSIONS)))
    a, k, needed = CONVERSIONS[conversion]
    strides = needed + draw(st.sampled_from([-1, 0, 0, 0, 0, 1]))  # sometimes one short (no adaptive part), one more
    n_layers = strides + draw(st.integers(0, 4))
    strided = set(draw(st.permutations(range(n_layers)))[:strides])
    modules, channels = [], 3
    for i in range(n_layers):
        module, channels = draw(layers(channels, 2 if i in strided else 1))
        modules.append(module)
    if draw(st.booleans()):
        modules.append(Head(channels))
    coarsest = a << k
    size = st.integers(coarsest, 3 * coarsest - 1)
    x_size = (draw(size), draw(size))
    # Example inputs of other sizes than the input, down to 1x1: one too small for the conversion must raise the
    # GraphConversionError that says so (and gives the smallest size that works).
    side = st.integers(1, 3 << strides)
    example = draw(st.one_of(st.none(), st.tuples(side, side)))
    seed = draw(st.integers(0, 2**16))
    return conversion, nn.Sequential(*modules), x_size, example, seed


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval().to(DT)


pytestmark = pytest.mark.usefixtures("one_thread")


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(cases())
def test_random_cnns_convert_and_equal_the_simulation_or_raise_graph_conversion_error(case):
    conversion, model, x_size, example, seed = case
    model = _randomised(model, seed)
    x = torch.randn(2, 3, *x_size, dtype=DT, generator=torch.Generator().manual_seed(seed))
    example_input = None if example is None else torch.empty(1, 3, *example, dtype=DT)
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError:
        assume(False)  # an input the model itself cannot take (a kernel larger than its padded input)
    try:
        net = adatriton.convert(model, conversion, example_input=example_input)
    except GraphConversionError as err:
        assert str(err), "an empty message"
        return
    k = net.num_levels
    n, hf, wf = net.finest_grid(x)
    lm = LevelMap.random(n, hf, wf, k, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        got = net(x, lm)
        expected = simulate(model, x, lm.levels, CONVERSIONS[conversion][0], k)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    err = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= 1e-11 * max(scale, 1.0), f"max abs diff {err:.3g} at scale {scale:.3g}"
