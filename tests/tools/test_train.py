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


# ---------------------------------------------------------------------------------------------- refusing harm
def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bitwise(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert list(state) == list(snapshot)
    for key, value in snapshot.items():
        assert torch.equal(state[key], value), key


BAD_HYPERPARAMETERS = [
    ({"gamma": math.nan}, ValueError, "gamma must be a finite number in \\[0.0, 1.0\\]"),
    ({"gamma": 1.5}, ValueError, "gamma must be a finite number in \\[0.0, 1.0\\], got 1.5"),
    ({"gamma": -0.1}, ValueError, "gamma"),
    ({"gamma": True}, TypeError, "gamma must be a real number, got bool"),
    ({"gamma": "0.5"}, TypeError, "gamma must be a real number, got str"),
    ({"mask_weight": math.inf}, ValueError, "mask_weight must be a finite number >= 0.0, got inf"),
    ({"mask_weight": -1.0}, ValueError, "mask_weight"),
    ({"lr_head": math.nan}, ValueError, "lr_head must be a finite number >= 0.0, got nan"),
    ({"lr_backbone": -0.01}, ValueError, "lr_backbone"),
    ({"lr_mask": math.inf}, ValueError, "lr_mask"),
    ({"momentum": 1.0}, ValueError, "momentum must be a finite number in \\[0.0, 1.0\\)"),
    ({"weight_decay": math.nan}, ValueError, "weight_decay"),
    ({"poly_power": -0.9}, ValueError, "poly_power"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
    ({"batch_size": 2.0}, TypeError, "batch_size must be an int, got float"),
    ({"epochs": 0}, ValueError, "epochs must be >= 1"),
    ({"max_iters": 0}, ValueError, "max_iters must be >= 1"),
    ({"max_iters": 1.5}, TypeError, "max_iters must be an int or None"),
    ({"checkpoint_every": -1}, ValueError, "checkpoint_every"),
    ({"num_workers": -1}, ValueError, "num_workers"),
    ({"ignore_index": 255.0}, TypeError, "ignore_index must be an int"),
    ({"seed": 0.5}, TypeError, "seed must be an int"),
]


@pytest.mark.parametrize(
    "kwargs, error, match",
    BAD_HYPERPARAMETERS,
    ids=[f"{next(iter(k))}={v}" for k, *_ in BAD_HYPERPARAMETERS for v in k.values()],
)
def test_train_rejects_bad_hyperparameters_before_anything_runs(kwargs, error, match, tmp_path):
    net = _model(seed=0)
    before = _snapshot(net)
    settings = {"batch_size": 2, "max_iters": 1, "progress": False, "checkpoint_dir": tmp_path / "ckpt", **kwargs}
    with pytest.raises(error, match=match):
        train(net, stripes(n=2, size=32), **settings)
    _assert_bitwise(net, before)
    assert net.training and not (tmp_path / "ckpt").exists()


def _relabelled(labels: torch.Tensor) -> list:
    return [(image, labels) for image, _ in stripes(n=2, size=32)]


BAD_DATA = {
    "float-labels": (lambda: _relabelled(torch.ones(32, 32)), TypeError, "labels must be integer class indices"),
    "label-too-big": (lambda: _relabelled(torch.full((32, 32), 3)), ValueError, r"labels must be in \[0, 3\).*3"),
    "negative-label": (lambda: _relabelled(torch.full((32, 32), -1)), ValueError, r"found -1"),
    "label-shape": (lambda: _relabelled(torch.zeros(16, 32, dtype=torch.long)), ValueError, "labels must be"),
    "image-rank": (
        lambda: [(torch.zeros(32, 32), torch.zeros(32, 32, dtype=torch.long))] * 2,
        ValueError,
        r"images must be float \(3, H, W\)",
    ),
    "integer-images": (
        lambda: [(torch.zeros(3, 32, 32, dtype=torch.uint8), torch.zeros(32, 32, dtype=torch.long))] * 2,
        ValueError,
        "images must be float",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_DATA))
def test_train_rejects_bad_data_and_leaves_the_model_as_it_was(kind, tmp_path):
    torch.set_num_threads(1)
    make, error, match = BAD_DATA[kind]
    net = _model(seed=0)
    before = _snapshot(net)
    with pytest.raises(error, match=match):
        train(net, make(), batch_size=2, max_iters=1, progress=False, checkpoint_dir=tmp_path, shuffle=False)
    _assert_bitwise(net, before)  # BatchNorm statistics too: the forward's update is undone
    assert not (tmp_path / "last.pt").exists()


def _poisoned(at: int, n: int = 6) -> list:
    data = stripes(n=n, size=32)
    image, label = data[at]
    data[at] = (torch.full_like(image, math.nan), label)
    return data


def test_train_stops_on_the_first_non_finite_loss_before_stepping_or_saving(tmp_path):
    """A NaN image in the third batch: iterations 1 and 2 train and are checkpointed; the third stops before its
    optimiser step, the model is bitwise the checkpoint of iteration 2 (weights and BatchNorm statistics), and no
    checkpoint of the third is written."""
    torch.set_num_threads(1)
    net = _model(seed=0)
    settings = {"batch_size": 2, "shuffle": False, "progress": False, "checkpoint_every": 1, "max_iters": 3}
    with pytest.raises(FloatingPointError, match="non-finite loss at iteration 3 .*weights and statistics of it"):
        train(net, _poisoned(at=4), checkpoint_dir=tmp_path, **settings)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 2 and len(ckpt["history"]) == 2
    _assert_bitwise(net, ckpt["model"])
    assert all(torch.isfinite(p).all() for p in net.parameters())

    first = _model(seed=0)
    before = _snapshot(first)
    with pytest.raises(FloatingPointError, match="iteration 1 "):
        train(first, _poisoned(at=0), checkpoint_dir=tmp_path / "first", **settings)
    _assert_bitwise(first, before)
    assert not (tmp_path / "first" / "last.pt").exists()


def test_train_skipped_grad_scaler_steps_are_no_errors(tmp_path, monkeypatch):
    """A GradScaler whose scale overflows every gradient skips every step (the weights stay), and that is not an
    error: the run ends normally. (CPU stand-in for CUDA float16: the scaler without autocast.)"""
    torch.set_num_threads(1)
    real = torch.amp.GradScaler
    monkeypatch.setattr(train_module, "_amp_settings", lambda amp, amp_dtype, device: (None, True))
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: real(device, init_scale=math.inf))
    net = _model(seed=0)
    before = [p.detach().clone() for p in net.parameters()]
    history = train(
        net, stripes(n=4, size=32), batch_size=2, max_iters=2, amp=True, progress=False, checkpoint_dir=tmp_path
    )
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), before))  # every step skipped
    assert "scaler" in torch.load(tmp_path / "last.pt", weights_only=True)
