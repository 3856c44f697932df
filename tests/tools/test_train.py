"""adatriton.tools.train.train in one process: exact resume from a mid-run checkpoint, mixed precision (CPU autocast,
bfloat16), and the errors for other models and for files that are no train() checkpoints."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import adatriton.tools.train as train_module
from adatriton import AdaptiveBatchNorm2d, LevelMap, MultiResMap
from adatriton.tools.train import SyncAdaptiveBatchNorm2d, SyncBatchNorm2d, convert_sync_batchnorm, train
from tests.models.test_learned import stripes
from tests.tools.test_train_ddp import MID, STEPS, _model, _recording_saves, _state_vector


def test_train_resume_continues_exactly(tmp_path, monkeypatch):
    """One process, with a seed: interrupted at iteration 3 and resumed, the run ends where the uninterrupted one
    does (weights, optimiser momentum, data order, Gumbel noise)."""
    torch.set_num_threads(1)
    data = stripes(n=6, size=32)
    log: list = []
    monkeypatch.setattr(train_module, "save_checkpoint", _recording_saves(log, tmp_path / "mid.pt"))
    net = _model(seed=0)
    history = train(
        net,
        data,
        batch_size=2,
        seed=3,
        max_iters=STEPS,
        checkpoint_dir=tmp_path / "a",
        checkpoint_every=MID,
        progress=False,
    )
    assert log == [(0, MID), (0, STEPS)]
    resumed = _model(seed=1)
    resumed_history = train(resumed, data, batch_size=2, seed=3, resume=tmp_path / "mid.pt", progress=False)
    assert resumed_history == history
    assert torch.equal(_state_vector(resumed), _state_vector(net))
    assert not resumed.training


def test_train_rejects_other_models_and_bad_resume_files(tmp_path):
    with pytest.raises(TypeError, match="LearnedMaskModel"):
        train(nn.Linear(2, 2), stripes(2), max_iters=1, progress=False)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(train_module.CheckpointError, match="not a train\\(\\) checkpoint"):
        train(_model(0), stripes(2), resume=tmp_path / "other.pt", progress=False)
    with pytest.raises(train_module.CheckpointError, match="does not exist"):
        train(_model(0), stripes(2), resume=tmp_path / "missing.pt", progress=False)


def test_train_under_autocast_bf16_cpu(tmp_path):
    """``amp=True`` on the CPU: forward and loss under bfloat16 autocast; finite losses, finite updates, float32
    weights, and the checkpoint holds no gradient scaler (CPU autocast needs none)."""
    torch.set_num_threads(1)
    net = _model(seed=0)
    before = [p.detach().clone() for p in net.parameters()]
    history = train(
        net, stripes(n=4, size=32), batch_size=2, max_iters=2, amp=True, seed=0, progress=False, checkpoint_dir=tmp_path
    )
    assert len(history) == 2 and all(math.isfinite(h["loss"]) and math.isfinite(h["fraction"]) for h in history)
    after = list(net.parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert "scaler" not in torch.load(tmp_path / "last.pt", weights_only=True)
    with pytest.raises(ValueError, match="bfloat16"):
        train(net, stripes(2), max_iters=1, amp=True, amp_dtype=torch.float16, progress=False)


def test_convert_sync_batchnorm_keeps_modules_and_single_process_results():
    """In place (the same module objects, classes swapped, state_dict unchanged); in one process and in eval mode
    exactly the parent's forward, on tensors and on multi-resolution maps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), AdaptiveBatchNorm2d(4))
    reference = copy.deepcopy(model)
    modules, keys = list(model.modules()), list(model.state_dict())
    assert convert_sync_batchnorm(model) is model
    assert list(model.modules()) == modules and list(model.state_dict()) == keys
    assert type(model[1]) is SyncBatchNorm2d and type(model[2]) is SyncAdaptiveBatchNorm2d
    x = torch.randn(2, 3, 8, 8)
    for mode in (True, False):
        model.train(mode)
        reference.train(mode)
        assert torch.equal(model(x), reference(x))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    levels = LevelMap.random(1, 4, 4, 1, generator=torch.Generator().manual_seed(0))
    mr = MultiResMap.from_dense(torch.randn(1, 4, 4, 4), levels)
    assert torch.equal(model[2](mr).values, reference[2](mr).values)
    with pytest.raises(TypeError, match="BatchNorm1d"):
        convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(3)))


@pytest.mark.gpu
def test_train_under_autocast_fp16_cuda_uses_a_grad_scaler(tmp_path):
    net = _model(seed=0)
    history = train(
        net,
        stripes(n=4, size=32),
        batch_size=2,
        max_iters=3,
        amp=True,
        seed=0,
        progress=False,
        device="cuda",
        checkpoint_dir=tmp_path,
    )
    assert all(math.isfinite(h["loss"]) for h in history)
    assert all(p.dtype == torch.float32 and p.is_cuda and torch.isfinite(p).all() for p in net.parameters())
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert "scale" in ckpt["scaler"]
    bf16 = _model(seed=0)
    train(
        bf16,
        stripes(n=4, size=32),
        batch_size=2,
        max_iters=1,
        amp=True,
        amp_dtype=torch.bfloat16,
        seed=0,
        progress=False,
        device="cuda",
        checkpoint_dir=tmp_path / "bf16",
    )
    assert "scaler" not in torch.load(tmp_path / "bf16" / "last.pt", weights_only=True)  # bfloat16 needs none
