"""The graph converter's fusion pass (adatriton.models.graph.fusion): conv -> BatchNorm -> add -> activation on maps
as one conv_bn_act call, with the activations of the zoo (ReLU6, Hardswish, SiLU, ReLU).

Float64, random weights, mixed level maps. The unfused reference is the same converted network with a hook on
every module (a hooked group runs op by op, adatriton.nn.hooks).
"""

import copy

import pytest
import torch
import torchvision
from torch import nn

import adatriton
from adatriton import LevelMap
from adatriton.models.graph.mapops import map_conv_bn_act


def _randomise_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def _convert(name: str, x: torch.Tensor):
    torch.manual_seed(0)
    model = _randomise_bn(getattr(torchvision.models, name)()).double().eval()
    net = adatriton.convert(model, "8->32", example_input=x, method="graph", backend="torch")
    n, h, w = net.finest_grid(x)
    return model, net, LevelMap.random(n, h, w, 2, generator=torch.Generator().manual_seed(1))


def _unfused(net: nn.Module, run):
    handles = [m.register_forward_hook(lambda *a: None) for m in net.modules()]
    try:
        return run()
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize(
    "name, activations",
    [
        ("mobilenet_v2", {"relu6", None}),
        ("mobilenet_v3_large", {"hardswish", None}),  # its ReLU blocks run before OS8
        ("efficientnet_b0", {"silu", None}),
        ("resnet50", {"relu", None}),
    ],
)
def test_fused_groups_equal_the_unfused_network(name, activations):
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    model, net, lm = _convert(name, x)
    fused = [n for n in net.graph.nodes if n.target is map_conv_bn_act]
    assert {n.args[8] for n in fused} == activations
    assert len(fused) == sum(p.note.startswith("fused: ") for p in net.plan) > 0
    assert f"one conv_bn_act call): {len(fused)}" in net.conversion_summary()
    assert net.state_dict().keys() == model.state_dict().keys()
    if name in ("mobilenet_v2", "resnet50"):  # every adaptive conv fused, residual adds included
        assert len(fused) == len(net.adaptive_convs())
        assert any(n.args[4] is not None for n in fused)
    with torch.no_grad():
        got = net(x, lm)
        expected = _unfused(net, lambda: net(x, lm))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * expected.abs().max().item())


def test_train_mode_and_gradients_stay_exact():
    """Train-mode BatchNorm (statistics over the elements, running statistics updated) and gradients take the
    unfused sequence inside the fused op: outputs, running statistics and gradients equal the unfused network."""
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    _, net, lm = _convert("mobilenet_v2", x)
    other = copy.deepcopy(net)
    net.train(), other.train()
    torch.manual_seed(5)  # the same dropout masks
    out = net(x, lm)
    torch.manual_seed(5)
    expected = _unfused(other, lambda: other(x, lm))
    assert torch.equal(out, expected)
    for a, b in zip(net.buffers(), other.buffers()):
        assert torch.equal(a, b)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, a), b in zip(net.named_parameters(), other.parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_a_model_with_drop_in_layers_fuses_as_the_original():
    """A ResNet swapped to adatriton's drop-in layers (``swap_modules``, or ``convert``'s ``filter_fn``) fuses every
    conv with its BatchNorm, add and ReLU on the graph path too: one conv_bn_act call per adaptive conv, a block's
    conv1 included (it enters the map beside its strided shortcut), and the same outputs as the original model's
    graph conversion."""
    x = torch.randn(2, 3, 40, 56, dtype=torch.float64)
    model, net, lm = _convert("resnet50", x)
    swapped = copy.deepcopy(model)
    adatriton.swap_modules(swapped)  # in place
    assert type(swapped.layer3[0].relu).__name__ == "AdaptiveReLU"
    again = adatriton.convert(swapped, "8->32", example_input=x, method="graph", backend="torch")
    for converted in (net, again):
        convs = converted.adaptive_convs()
        assert convs[0].target == "layer3.0.conv1" and len(convs) == 3 * 9 + 2
        assert all(p.note.startswith("fused: ") for p in convs)
    with torch.no_grad():
        torch.testing.assert_close(again(x, lm), net(x, lm), rtol=0, atol=0)
