"""``train()`` for any converted model with a loss of the user's (issue 24): a converted ResNet with an attached
mask source and a graph-path CNN with a ``levels_fn`` train with ``loss_fn``; losses are finite, the weights move,
and a run resumed from its mid-run checkpoint ends bitwise where the uninterrupted one does."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

import adatriton
import adatriton.tools.train as train_module
from adatriton import masks
from adatriton.tools.train import train
from tests.models.test_learned import randomise_bn
from tests.tools.test_train_ddp import MID, STEPS, _model, _recording_saves, _state_vector

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 6, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Blocky RGB images in [0, 1] (so edge masks are mixed) with a class label each."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, size // 16, size // 16, generator=g)
    images = F.interpolate(coarse, size=(size, size), mode="nearest")
    return [(images[i], torch.tensor(i % 3)) for i in range(n)]


def _resnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = randomise_bn(ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16, num_classes=3))
    return adatriton.convert(model, "8->32", mask=masks.edges(fraction=0.3))


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    convs = [nn.Conv2d(3 if i == 0 else 8, 8, 3, 2, 1) for i in range(5)]
    body = [m for conv in convs for m in (conv, nn.BatchNorm2d(8), nn.ReLU())]
    model = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return adatriton.convert(model, "8->32", example_input=torch.empty(1, 3, 64, 64))


def _edges(images: torch.Tensor):
    return masks.edges(images, "8->32", fraction=0.3)


BUILDS = {"resnet-attached-mask": (_resnet, None), "graph-levels-fn": (_cnn, _edges)}


@pytest.mark.parametrize("kind", list(BUILDS))
def test_a_converted_model_trains_with_a_user_loss_and_resumes_exactly(kind, tmp_path, monkeypatch):
    build, levels_fn = BUILDS[kind]
    data = _data()
    log: list = []
    monkeypatch.setattr(train_module, "save_checkpoint", _recording_saves(log, tmp_path / "mid.pt"))
    net = build(seed=0)
    before = [p.detach().clone() for p in net.parameters()]
    options = {"loss_fn": F.cross_entropy, "levels_fn": levels_fn, "batch_size": 2, "seed": 3, "progress": False}
    history = train(net, data, max_iters=STEPS, checkpoint_dir=tmp_path / "a", checkpoint_every=MID, **options)
    assert log == [(0, MID), (0, STEPS)]
    assert [sorted(h) for h in history] == [["iteration", "loss", "lr"]] * STEPS
    assert all(math.isfinite(h["loss"]) for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(net.parameters(), before))
    assert not net.training

    resumed = build(seed=1)
    resumed_history = train(resumed, data, resume=tmp_path / "mid.pt", **options)
    assert resumed_history == history
    assert torch.equal(_state_vector(resumed), _state_vector(net))


def test_train_needs_a_loss_for_other_models_and_no_levels_fn_for_the_learned_one():
    with pytest.raises(TypeError, match="loss_fn"):
        train(_cnn(0), _data(2), max_iters=1, progress=False)
    with pytest.raises(TypeError, match="predicts its own mask"):
        train(_model(0), _data(2), loss_fn=F.cross_entropy, levels_fn=_edges, max_iters=1, progress=False)
    with pytest.raises(TypeError, match="one-element Tensor"):
        train(_cnn(0), _data(2), loss_fn=lambda out, y: 1.0, levels_fn=_edges, max_iters=1, progress=False)
