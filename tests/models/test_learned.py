"""Learned masks (docs/semantics.md §6): the estimator's shapes and decisions, the level maps it makes, the eval
forward (the
``"8->16"`` adaptive network driven by the mask), the training forward (dense OS8 / OS16 ``layer3`` blended at the
``layer4`` input, straight-through gradients) and a few iterations of :func:`adatriton.tools.train.train`.

Most tests use a tiny DeepLabv3 (a bottleneck ResNet with blocks ``[1, 1, 2, 2]`` and thin inner widths: the same
layer output widths and strides as ResNet-50, a fraction of the cost) so the file runs in well under a minute on
two CPU cores; one test builds the real ``deeplabv3("resnet50")``. Equivalences run in float64 with eval-mode
BatchNorm and randomised statistics.
"""

import pytest
import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

import adatriton
from adatriton import LevelMap
from adatriton.masks import LearnedMask
from adatriton.models import segmentation
from adatriton.models.learned import DOWNSAMPLE, KEEP, LearnedMaskModel, upsample_mask
from adatriton.tools.train import param_groups, poly_lr, train

DT = torch.float64


def tiny_deeplab(num_classes: int = 3, aux: bool = False) -> DeepLabV3:
    """DeepLabv3 on a [1, 1, 2, 2]-block bottleneck ResNet with 16-wide groups (layer output widths 256 .. 2048 and
    strides as usual) and DeepLabHead's layout (ASPP with rates 12/24/36, 3x3 conv, BN, ReLU, 1x1) at 32 channels."""
    resnet = ResNet(Bottleneck, [1, 1, 2, 2], width_per_group=16, replace_stride_with_dilation=[False, True, True])
    return_layers = {"layer4": "out", "layer3": "aux"} if aux else {"layer4": "out"}
    body = IntermediateLayerGetter(resnet, return_layers=return_layers)
    head = nn.Sequential(
        ASPP(2048, [12, 24, 36], out_channels=32),
        nn.Conv2d(32, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, num_classes, 1),
    )
    return DeepLabV3(body, head, FCNHead(1024, num_classes) if aux else None)


def randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return model


def fixed_logits(monkeypatch, mask: torch.Tensor) -> None:
    """Make every LearnedMask return logits whose argmax is ``mask`` ((N, 1, h16, w16), 1 = downsample)."""

    def forward(self, features):
        return torch.cat([1 - mask, mask], dim=1).to(features.dtype) * 4 - 2

    monkeypatch.setattr(LearnedMask, "forward", forward)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    seg = randomise_bn(tiny_deeplab(aux=True)).to(DT).eval()
    return LearnedMaskModel(seg).to(DT).eval()


# ---------------------------------------------------------------------------------------------- the estimator
@pytest.mark.parametrize("size", [(8, 8), (7, 9), (1, 1), (5, 4)])
def test_estimator_shapes(size):
    est = LearnedMask(512)
    logits = est(torch.randn(2, 512, *size))
    h16, w16 = (-(-s // 2) for s in size)
    assert logits.shape == (2, 2, h16, w16)
    for mode in (est.train(), est.eval()):
        m = mode.hard_mask(logits)
        assert m.shape == (2, 1, h16, w16)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
    lm = est.level_map(torch.randn(2, 512, *size))
    assert isinstance(lm, LevelMap) and lm.shape == (2, *size) and lm.num_levels == 1


def test_estimator_layers():
    convs = [m for m in LearnedMask(512).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 64, 64, 2]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)


def test_argmax_deterministic_and_sampling_varies():
    est = LearnedMask(512).eval()
    feats = torch.randn(2, 512, 12, 12)
    logits = torch.zeros(2, 2, 6, 6)  # equal odds: argmax keeps (ties), sampling flips coins
    logits[:, DOWNSAMPLE, :3] = 1.0
    a, b = est.hard_mask(logits), est.hard_mask(logits)
    assert torch.equal(a, b)
    assert torch.equal(a[:, 0], (logits[:, DOWNSAMPLE] > logits[:, KEEP]).float())
    assert torch.equal(est.level_map(feats).levels, est.level_map(feats).levels)
    draws = torch.stack([est.hard_mask(logits, sample=True) for _ in range(8)])
    assert not all(torch.equal(draws[0], d) for d in draws[1:])
    assert 0.2 < float(draws[:, :, :, 3:].mean()) < 0.8  # the keep half: p(downsample) = 0.5 there
    train_draws = torch.stack([est.train().hard_mask(logits) for _ in range(4)])
    assert not all(torch.equal(train_draws[0], d) for d in train_draws[1:])


def test_level_map_from_mask():
    mask = torch.tensor([[[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]])  # (1, 1, 2, 3) at OS16
    lm = LearnedMask.levels_from_mask(mask, (3, 5))
    expected = torch.tensor([[1, 1, 0, 0, 1], [1, 1, 0, 0, 1], [0, 0, 1, 1, 0]])
    assert torch.equal(lm.levels[0], expected)
    assert torch.equal(upsample_mask(mask, 3, 5)[0, 0].long(), expected)
    with pytest.raises(NotImplementedError, match="8->16"):
        LearnedMask.levels_from_mask(mask, (3, 5), "8->32")


# ---------------------------------------------------------------------------------------------- eval forward
def test_eval_runs_adaptive_network(net):
    x = torch.randn(2, 3, 64, 80, dtype=DT)
    with torch.no_grad():
        # Centre the estimator's decisions on this input so that both levels occur.
        logits = net.mask(net.layer2_features(x))
        net.mask.layers[-1].bias[DOWNSAMPLE] -= (logits[:, DOWNSAMPLE] - logits[:, KEEP]).median() + 1e-3
        out = net(x)
        lm = net.last_levels
        assert lm.shape == (2, 8, 10)
        assert 0 < float(lm.fractions()[1]) < 1  # both levels occur: the adaptive path is exercised
        ref = adatriton.convert(net.model, "8->16")(x, lm)  # the map given, not predicted inside the forward
    assert type(net.adaptive_model).__name__ == "AdaptiveGraphModule"
    assert list(out) == ["out", "aux"] and out["out"].shape == (2, 3, 64, 80)
    torch.testing.assert_close(out["out"], ref["out"], rtol=0, atol=0)
    torch.testing.assert_close(out["aux"], ref["aux"], rtol=0, atol=0)
    assert float(net.last_fraction) == pytest.approx(float(lm.fractions()[1]))
    with torch.no_grad():
        again = net(x)
    assert torch.equal(again["out"], out["out"])


@pytest.mark.parametrize("downsample", [False, True])
def test_eval_forced_masks(net, monkeypatch, downsample):
    x = torch.randn(2, 3, 64, 64, dtype=DT)
    fixed_logits(monkeypatch, torch.full((2, 1, 4, 4), float(downsample), dtype=DT))
    with torch.no_grad():
        out = net(x)["out"]
        if downsample:  # every cell at level 1: the strided layer3 everywhere
            ref = adatriton.convert(net.model, "8->16")(x, LevelMap.uniform(2, 8, 8, 1, 1))["out"]
        else:
            ref = net.model(x)["out"]  # the dense OS8 model
    assert float(net.last_fraction) == float(downsample)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------- training forward
def _capture_head_input(net):
    seen = {}
    handle = net.model.classifier.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    return seen, handle


def test_train_blend_all_keep_is_dense_os8(net):
    x = torch.randn(2, 3, 64, 64, dtype=DT)
    with torch.no_grad():
        out, fraction = net.forward_train(x, mask=torch.zeros(2, 1, 4, 4, dtype=DT))
        ref = net.model(x)
    assert float(fraction) == 0.0
    torch.testing.assert_close(out["out"], ref["out"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["aux"], ref["aux"], rtol=1e-10, atol=1e-10)


def test_train_blend_all_downsample_is_os16(net):
    x = torch.randn(2, 3, 64, 64, dtype=DT)
    seen, handle = _capture_head_input(net)
    try:
        with torch.no_grad():
            out, fraction = net.forward_train(x, mask=torch.ones(2, 1, 4, 4, dtype=DT))
            layer4 = seen["x"]
            os16 = adatriton.convert(net.model.backbone, "16").forward_features(x)
            adaptive = adatriton.convert(net.model, "8->16")(x, LevelMap.uniform(2, 8, 8, 1, 1))
    finally:
        handle.remove()
    assert float(fraction) == 1.0
    # layer4 is the OS16 network's, repeated over 2x2 OS8 cells; the heads then run on the OS8 grid, as the
    # "8->16" network's heads do on its densified level-1 features.
    torch.testing.assert_close(layer4, upsample_mask(os16, 8, 8), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["out"], adaptive["out"], rtol=1e-10, atol=1e-10)


def test_train_blend_mixed_mask(net):
    """A mixed mask: the layer3 blend (which the aux head reads) picks, per OS16 cell, the dense OS8 or the
    upsampled dense OS16 layer3 output."""
    x = torch.randn(1, 3, 64, 64, dtype=DT)
    mask = torch.tensor([[[[1.0, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]]]], dtype=DT)
    with torch.no_grad():
        out, fraction = net.forward_train(x, mask=mask)
        l3_os8 = adatriton.convert(net.model.backbone, "8").forward_backbone(x, None, ("layer3",))["layer3"]
        l3_os16 = adatriton.convert(net.model.backbone, "16").forward_backbone(x, None, ("layer3",))["layer3"]
        m = upsample_mask(mask, 8, 8)
        blend = m * upsample_mask(l3_os16, 8, 8) + (1 - m) * l3_os8
        aux = net.model.aux_classifier(blend)
        aux = torch.nn.functional.interpolate(aux, size=(64, 64), mode="bilinear", align_corners=False)
    assert float(fraction) == 0.5
    torch.testing.assert_close(out["aux"], aux, rtol=1e-10, atol=1e-10)


def test_straight_through_gradients_reach_estimator():
    torch.manual_seed(0)
    net = LearnedMaskModel(tiny_deeplab()).train()
    x = torch.randn(2, 3, 64, 64)
    out, fraction = net.forward_train(x)
    assert fraction.requires_grad
    (out["out"].square().mean() + (fraction - 0.5) ** 2).backward()
    grads = [p.grad for p in net.mask.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # the fraction alone also trains the estimator (straight-through from the hard mask to the logits)
    net.zero_grad()
    net.forward_train(x)[1].backward()
    assert float(net.mask.layers[-1].bias.grad[DOWNSAMPLE]) > 0
    assert float(net.mask.layers[-1].bias.grad[KEEP]) < 0


def test_torchvision_and_resnet50_models():
    from torchvision.models.segmentation import deeplabv3_resnet50

    for seg in (
        segmentation.deeplabv3(backbone="resnet50", num_classes=3),
        deeplabv3_resnet50(weights=None, weights_backbone=None),
    ):
        net = LearnedMaskModel(seg).eval()
        keys = set(net.state_dict())
        assert keys == {f"model.{k}" for k in seg.state_dict()} | {f"mask.{k}" for k in net.mask.state_dict()}
    with torch.no_grad():
        out = net(torch.randn(1, 3, 48, 40))
    assert out["out"].shape == (1, 21, 48, 40) and net.last_levels.shape == (1, 6, 5)
    with pytest.raises(TypeError):
        LearnedMaskModel(nn.Conv2d(3, 3, 1))


# ---------------------------------------------------------------------------------------------- training loop
def stripes(n: int = 4, size: int = 64) -> list:
    """Images with a vertical boundary at varying columns; left class 0, right class 1 (class 2 unused), and an
    ignored (255) border column."""
    g = torch.Generator().manual_seed(0)
    data = []
    for i in range(n):
        label = torch.zeros(size, size, dtype=torch.long)
        col = size // 4 + (i * size) // (2 * n)
        label[:, col:] = 1
        label[:, col] = 255
        colour = torch.tensor([1.0, -1.0, 0.5])[:, None, None]
        image = 0.1 * torch.randn(3, size, size, generator=g) + (label == 1).float()[None] * colour
        data.append((image, label))
    return data


def test_poly_lr():
    assert poly_lr(0.1, 0, 10) == 0.1
    assert poly_lr(0.1, 5, 10, 1.0) == pytest.approx(0.05)
    assert poly_lr(0.1, 10, 10) == 0.0


def test_param_groups_cover_every_parameter_once():
    net = LearnedMaskModel(tiny_deeplab(aux=True))
    groups = param_groups(net, 0.01, 0.1, 0.001)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 0.01), ("head", 0.1), ("mask", 0.001)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}


def test_train_few_iterations(tmp_path):
    torch.manual_seed(0)
    net = LearnedMaskModel(tiny_deeplab())
    with torch.no_grad():  # start far from gamma: the estimator downsamples ~88% of the cells
        net.mask.layers[-1].bias.copy_(torch.tensor([0.0, 2.0]))
    data = stripes()
    probe = torch.stack([img for img, _ in data])

    def expected_fraction() -> float:
        with torch.no_grad():
            logits = net.mask(net.eval().layer2_features(probe))
        return float(logits.softmax(1)[:, DOWNSAMPLE].mean())

    before = expected_fraction()
    history = train(
        net,
        data,
        batch_size=2,
        max_iters=6,
        gamma=0.5,
        mask_weight=4.0,
        lr_mask=0.05,  # the paper's 0.001 moves the estimator too little in 6 iterations
        seed=0,
        checkpoint_dir=tmp_path,
        checkpoint_every=4,
        progress=False,
    )
    after = expected_fraction()
    assert len(history) == 6 and not net.training
    assert set(history[0]) >= {"loss", "ce", "mask_term", "fraction", "lr"}
    assert history[0]["lr"] == 0.01 and history[0]["lr_head"] == 0.1 and history[0]["lr_mask"] == 0.05
    assert history[-1]["lr"] < history[1]["lr"] < history[0]["lr"]
    first = sum(h["ce"] for h in history[:2]) / 2
    last = sum(h["ce"] for h in history[-2:]) / 2
    assert last < first
    assert history[-1]["loss"] < history[0]["loss"]
    # the estimator's expected fraction (deterministic probe) and the sampled fractions both approach gamma
    assert abs(after - 0.5) < abs(before - 0.5) - 0.05
    gap = [abs(h["fraction"] - 0.5) for h in history]
    assert sum(gap[-2:]) < sum(gap[:2])
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 6 and len(ckpt["history"]) == 6
    fresh = LearnedMaskModel(tiny_deeplab())
    fresh.load_state_dict(ckpt["model"])
    for (k, a), b in zip(net.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_train_rejects_plain_models():
    with pytest.raises(TypeError, match="LearnedMaskModel"):
        train(tiny_deeplab(), stripes(2), max_iters=1, progress=False)
