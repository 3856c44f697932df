"""Distributed training (DDP, gloo on the CPU): two processes started with ``torch.multiprocessing.spawn`` train a
tiny learned-mask DeepLabv3 for a few steps through :func:`adatriton.tools.train.train` (a plain model and a dataset,
which ``train`` wraps and shards); afterwards both hold identical parameters and buffers, only rank 0 wrote the one
checkpoint, synchronised BatchNorm equals single-process BatchNorm on the whole batch, and a run resumed from a
mid-run checkpoint (a DDP-wrapped model and a DataLoader with a DistributedSampler, as set up by hand) ends exactly
where the uninterrupted run ends."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

import adatriton.tools.train as train_module
from adatriton.models.learned import LearnedMaskModel
from adatriton.tools.train import convert_sync_batchnorm, train
from tests.models.test_learned import stripes, tiny_deeplab

WORLD = 2
STEPS, MID = 5, 3  # iterations of the run, and where its mid-run checkpoint is taken


def _model(seed: int) -> LearnedMaskModel:
    torch.manual_seed(seed)
    return LearnedMaskModel(tiny_deeplab())


def _state_vector(model: nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten() for t in model.state_dict().values()])


def _parameter_vector(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def _recording_saves(log: list, mid_copy: Path | None):
    """Wrap save_checkpoint: log (rank, iteration) of every write, keep a copy of the mid-run checkpoint."""
    original = train_module.save_checkpoint

    def save(path, state):
        rank = dist.get_rank() if dist.is_initialized() else 0
        log.append((rank, state["iteration"]))
        out = original(path, state)
        if mid_copy is not None and state["iteration"] == MID:
            shutil.copy(out, mid_copy)
        return out

    return save


def _check_sync_batchnorm(rank: int) -> dict[str, float]:
    """SyncBatchNorm over two processes, each holding half the batch, against one BatchNorm on the whole batch:
    outputs, running statistics and gradients (the sum of both processes' losses is the whole batch's)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, 3, 5, generator=g, dtype=torch.float64) * 3 + 1
    weight = torch.randn(6, 4, 3, 5, generator=g, dtype=torch.float64)
    ref_bn = nn.BatchNorm2d(4).double().train()
    with torch.no_grad():
        ref_bn.weight.uniform_(0.5, 1.5, generator=g)
        ref_bn.bias.uniform_(-0.5, 0.5, generator=g)
    bn = convert_sync_batchnorm(copy.deepcopy(ref_bn))
    xr = x.clone().requires_grad_()
    ref = ref_bn(xr)
    (ref * weight).sum().backward()
    half = slice(3 * rank, 3 * rank + 3)
    xs = x[half].clone().requires_grad_()
    out = bn(xs)
    (out * weight[half]).sum().backward()
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)
    return {
        "out": float((out - ref[half]).abs().max()),
        "stats": float(
            max((bn.running_mean - ref_bn.running_mean).abs().max(), (bn.running_var - ref_bn.running_var).abs().max())
        ),
        "input_grad": float((xs.grad - xr.grad[half]).abs().max()),
        "param_grad": float((grads - torch.cat([ref_bn.weight.grad, ref_bn.bias.grad])).abs().max()),
    }


def _ddp_worker(rank: int, world: int, port: int, root: str) -> None:
    t0 = time.perf_counter()
    root = Path(root)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = {"sync_bn": _check_sync_batchnorm(rank)}
        data = stripes(n=8, size=32)  # 4 images per process: 2 batches per epoch, so the run spans 3 epochs
        log: list = []
        train_module.save_checkpoint = _recording_saves(log, root / "mid.pt" if rank == 0 else None)
        options = dict(batch_size=2, seed=0, progress=False, sync_batchnorm=True)

        net = _model(seed=0)
        initial = _parameter_vector(net)
        history = train(net, data, max_iters=STEPS, checkpoint_dir=root / "run", checkpoint_every=MID, **options)
        result.update(state=_state_vector(net), moved=float((_parameter_vector(net) - initial).abs().max()))
        result.update(history=history, saves=list(log))
        dist.barrier()  # rank 0's mid.pt exists

        # Resumed, as a user would set it up by hand: a DDP-wrapped model and a DataLoader with a DistributedSampler
        # (the reproducers); other initial weights, so everything must come from the checkpoint.
        resumed = _model(seed=1)
        loader = DataLoader(
            data, batch_size=2, sampler=DistributedSampler(data, seed=0), generator=torch.Generator().manual_seed(0)
        )
        log.clear()
        history = train(
            DistributedDataParallel(resumed),
            loader,
            resume=root / "mid.pt",
            checkpoint_dir=root / "resumed",
            **options,
        )
        result.update(resumed_state=_state_vector(resumed), resumed_history=history, resumed_saves=list(log))
        result["worker_s"] = time.perf_counter() - t0
        torch.save(result, root / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_stay_in_sync_and_resume(tmp_path):
    start = time.perf_counter()
    mp.spawn(_ddp_worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    wall = time.perf_counter() - start
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))

    for rank in (r0, r1):
        assert max(rank["sync_bn"].values()) < 1e-12, rank["sync_bn"]

    diff = float((r0["state"] - r1["state"]).abs().max())
    print(
        f"\nDDP ({WORLD} processes, gloo): max |rank0 - rank1| over parameters and buffers = {diff}, "
        f"parameters moved by up to {r0['moved']:.3g}, wall time {wall:.1f} s (in the workers {r0['worker_s']:.1f} s)"
    )
    assert diff == 0.0
    assert r0["moved"] > 1e-3  # the ranks agree because they trained together, not because nothing changed
    assert r0["history"] == r1["history"] and len(r0["history"]) == STEPS  # averaged logs: the same on both

    # Only rank 0 writes: the mid-run checkpoint and the final one, into one file.
    assert r0["saves"] == [(0, MID), (0, STEPS)] and r1["saves"] == []
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pt"]
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["iteration"] == STEPS and ckpt["world_size"] == WORLD
    assert not any(k.startswith("module.") for k in ckpt["model"])

    # Resumed from the mid-run checkpoint: the same final state and history as the uninterrupted run.
    assert r0["resumed_saves"] == [(0, STEPS)] and r1["resumed_saves"] == []
    resumed_diff = float((r0["resumed_state"] - r0["state"]).abs().max())
    print(f"resumed at iteration {MID}: max |resumed - uninterrupted| = {resumed_diff}")
    assert resumed_diff == 0.0 and torch.equal(r0["resumed_state"], r1["resumed_state"])
    assert r0["resumed_history"] == r0["history"]
