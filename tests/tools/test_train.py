"""adatriton.train.train in one process: exact resume from a mid-run checkpoint, mixed precision (CPU autocast,
bfloat16), and the errors for other models and for files that are no train() checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import adatriton.tools.train as train_module
from adatriton.train import train
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
