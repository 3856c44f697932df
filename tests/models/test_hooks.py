"""Module hooks on converted models (issue 24: "hooks fire"): forward and forward-pre hooks registered on every
submodule run, on every converted model (ResNets, the segmentation models, D2-Net and other CNNs: the graph path,
fused conv groups included); on a module that runs on a multi-resolution map they receive the MultiResMap.

Float32, random weights, small inputs, mixed level maps. With hooks a fused conv-BN-act group runs unfused (so its
hooks see each module's own maps): the output then equals the fused one up to float32 rounding, and exactly where
nothing is fused (dense strides).
"""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import segmentation as tvseg

import adatriton
from adatriton import LevelMap, MultiResMap
from adatriton.models import d2net
from adatriton.models.d2net import D2Net
from adatriton.nn import call_with_hooks, has_hooks


def _levels(net, n, h, w, seed=0):
    if not net.num_levels:
        return None
    f = net.finest_stride
    return LevelMap.random(n, -(-h // f), -(-w // f), net.num_levels, generator=torch.Generator().manual_seed(seed))


def _hook_everything(net: nn.Module):
    """Forward and forward-pre hooks on every module; returns (fired pre, fired post, input types, handles)."""
    pre, post, kinds, handles = [], [], {}, []
    for name, module in net.named_modules():

        def before(m, args, name=name):
            pre.append(name)

        def after(m, args, out, name=name):
            post.append(name)
            kinds[name] = (type(args[0]) if args else None, type(out))

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    return pre, post, kinds, handles


def _check_all_fire(net: nn.Module, run, exact: bool):
    with torch.no_grad():
        plain = run()
        pre, post, kinds, handles = _hook_everything(net)
        try:
            hooked = run()
        finally:
            for h in handles:
                h.remove()
    # every module but the containers that have no forward (ASPP's ``convs`` ModuleList is iterated, not called)
    names = {name for name, m in net.named_modules() if not isinstance(m, (nn.ModuleList, nn.ModuleDict))}
    assert set(pre) == names, f"pre-hooks not run: {sorted(names - set(pre))[:10]}"
    assert set(post) == names, f"hooks not run: {sorted(names - set(post))[:10]}"
    flat = [(plain, hooked)] if isinstance(plain, torch.Tensor) else [(plain[k], hooked[k]) for k in plain]
    for a, b in flat:
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    return kinds


@pytest.mark.parametrize("conversion", ["8", "8->32", "16->32"])
def test_resnet50_hooks_fire_on_every_module(conversion):
    torch.manual_seed(0)
    net = adatriton.convert(torchvision.models.resnet50().eval(), conversion)
    x = torch.randn(2, 3, 64, 96)
    lm = _levels(net, 2, 64, 96)
    kinds = _check_all_fire(net, lambda: net(x, lm), exact=conversion == "8")
    assert kinds["layer1.0.conv1"] == (torch.Tensor, torch.Tensor)  # dense at every conversion
    if net.adaptive:
        assert kinds["layer4.1.conv2"] == (MultiResMap, MultiResMap)
        # layer4 takes the map from layer3 at 8->32; at 16->32 the dense OS16 features enter the map inside it
        assert kinds["layer4"] == (torch.Tensor if conversion == "16->32" else MultiResMap, MultiResMap)
        assert kinds["fc"] == (torch.Tensor, torch.Tensor)


def test_deeplabv3_resnet50_hooks_fire_on_every_module():
    torch.manual_seed(0)
    model = tvseg.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True).eval()
    net = adatriton.convert(model, "8->32")
    x = torch.randn(1, 3, 64, 64)
    lm = _levels(net, 1, 64, 64)
    kinds = _check_all_fire(net, lambda: net(x, lm), exact=False)
    assert kinds["backbone.layer3.0.conv2"][0] is MultiResMap
    assert kinds["classifier"] == (torch.Tensor, torch.Tensor)


@pytest.mark.parametrize("output_stride", ["1->8", "4"])
def test_d2net_hooks_fire_on_every_module(output_stride):
    torch.manual_seed(0)
    feats = d2net.vgg_features((4, 4, "M", 6, 6, "M", 8, 8, 8, "M", 10, 10, 10), batch_norm=True)
    net = D2Net(feats, output_stride).eval()
    x = torch.randn(1, 3, 24, 40)
    lm = LevelMap.random(1, 24, 40, 3, generator=torch.Generator().manual_seed(1)) if net.adaptive else None
    kinds = _check_all_fire(net, lambda: net(x, lm), exact=not net.adaptive)
    # conv1_x run densely before the first step (a stage-0 map computes the same pixels); conv2_1 (module 7) on the map
    assert kinds["features.0"][0] is torch.Tensor
    assert kinds["features.7"][0] is (MultiResMap if net.adaptive else torch.Tensor)


def test_graph_path_hooks_fire_on_every_module_fused_groups_included():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    x = torch.randn(1, 3, 64, 96)
    net = adatriton.convert(model, "8->32", example_input=x, method="graph")
    assert any(p.note.startswith("fused: ") for p in net.plan)
    lm = _levels(net, 1, 64, 96)
    kinds = _check_all_fire(net, lambda: net(x, lm), exact=False)
    assert kinds["features.10.conv.1.0"] == (MultiResMap, MultiResMap)  # a fused conv, run unfused for its hooks
    assert kinds["features.10"] == (MultiResMap, MultiResMap)  # a container
    assert kinds["features.0.0"] == (torch.Tensor, torch.Tensor)


def test_hook_return_values_replace_inputs_and_outputs():
    """As ``nn.Module.__call__``: a pre-hook's return value replaces the input, a forward hook's the output, on a
    fused group's conv (graph path) and on a bottleneck of the ResNet runner."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    graph = adatriton.convert(torchvision.models.mobilenet_v2().eval(), "8->32", example_input=x, method="graph")
    resnet = adatriton.convert(torchvision.models.resnet50().eval(), "8->32")
    for net, name in ((graph, "features.10.conv.1.0"), (resnet, "layer3.1")):
        lm = _levels(net, 1, 64, 64)
        module = net.get_submodule(name)
        with torch.no_grad():
            plain = net(x, lm)
            handle = module.register_forward_hook(lambda m, args, out: out.with_values(out.values * 0))
            zeroed = net(x, lm)
            handle.remove()
            handle = module.register_forward_pre_hook(lambda m, args: args[0].with_values(args[0].values * 0))
            zero_input = net(x, lm)
            handle.remove()
            again = net(x, lm)
        scale = plain.abs().max()
        assert (plain - zeroed).abs().max() > 0.01 * scale and (plain - zero_input).abs().max() > 0.01 * scale
        assert torch.equal(plain, again)  # removed hooks: the fused path again


def test_call_with_hooks_matches_module_call_semantics():
    """call_with_hooks on a module equals calling it: global hooks first, with_kwargs hooks, replaced values."""
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    seen = []
    handles = [
        nn.modules.module.register_module_forward_pre_hook(lambda m, a: seen.append("global pre")),
        lin.register_forward_pre_hook(lambda m, a: (a[0] * 2,)),
        lin.register_forward_pre_hook(lambda m, a, kw: seen.append(sorted(kw)), with_kwargs=True),
        lin.register_forward_hook(lambda m, a, out: out + 1),
        lin.register_forward_hook(lambda m, a, kw, out: seen.append(("kw", out.shape)), with_kwargs=True),
    ]
    try:
        assert has_hooks(nn.ReLU())  # the global pre-hook counts for every module
        expected, calls = lin(x), list(seen)
        seen.clear()
        got = call_with_hooks(lin, lin.forward, x)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(got, expected) and seen == calls == ["global pre", [], ("kw", (2, 3))]
    assert not has_hooks(lin, None)
