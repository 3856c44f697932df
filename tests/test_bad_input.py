"""Bad input a user meets first (issue 15), one row each: every row of the issue's "Bad input that gets a wrong or
no error" list and the "Silently wrong results" reproducers that are input errors.

A row either expects an error, a ``ValueError`` / ``TypeError`` or the project's subclass (``LevelMapError``,
``MaskInputError``, ``CheckpointError``), whose message names the argument, what was given and what is expected
(``says``: regexes that must all occur in the message), a warning, a usage error of a CLI, or that the input now
works (``check``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

try:
    import resource
except ImportError:  # not POSIX
    resource = None
import torch
import triton
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

import adatriton
from adatriton import LevelMap, LevelMapError, MultiResMap, masks
from adatriton import ops as AF
from adatriton.kernels import conv as conv_kernels
from adatriton.runtime import autotune as runtime_autotune
from adatriton.tools import calibrate as calibrate_tool

# ---------------------------------------------------------------------------------------------- the table's machinery
ARG_ERRORS = (ValueError, TypeError)


@dataclass
class Row:
    """``call(ctx)`` and what it must do: raise ``raises`` saying ``says``, warn ``warns`` saying ``says``, exit
    with a usage error saying ``says`` (``usage=True``), or return something ``check`` accepts."""

    call: Callable[[SimpleNamespace], Any]
    raises: tuple[type[BaseException], ...] | None = None
    warns: type[Warning] | None = None
    usage: bool = False
    says: tuple[str, ...] = ()
    check: Callable[[Any, SimpleNamespace], None] | None = None


def _says(message: str, patterns: tuple[str, ...]) -> None:
    missing = [p for p in patterns if not re.search(p, message)]
    assert not missing, f"the message {message!r} does not say {missing}"


# ---------------------------------------------------------------------------------------------- small fixtures
def _tiny_resnet() -> ResNet:
    torch.manual_seed(0)
    return ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16).eval()


def _levels(seed: int = 1) -> LevelMap:
    return LevelMap.random(1, 4, 4, 2, generator=torch.Generator().manual_seed(seed))


def _map(channels: int = 3, seed: int = 0) -> MultiResMap:
    g = torch.Generator().manual_seed(seed)
    return MultiResMap.from_dense(torch.randn(1, channels, 4, 4, generator=g), _levels())


def _weight(cout: int = 4, cin: int = 3) -> nn.Parameter:
    return nn.Parameter(torch.randn(cout, cin, 3, 3, generator=torch.Generator().manual_seed(2)))


def _torch_backend_equal(got: MultiResMap, x: MultiResMap, weight: torch.Tensor) -> None:
    want = AF.conv2d(x, weight.detach(), backend="torch")
    torch.testing.assert_close(got.values, want.values, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- rows: inputs
def _numpy_image(ctx):
    net = adatriton.convert(_tiny_resnet(), "8->32")
    return net(np.zeros((1, 3, 32, 32), np.float32), _levels())


def _converted_forward(ctx):
    return adatriton.convert(_tiny_resnet(), 8)


def _check_int_stride(net, ctx):
    assert net.output_stride == "8"
    with torch.inference_mode():
        assert net.forward_features(torch.randn(1, 3, 32, 40)).shape[-2:] == (4, 5)


def _keep_mask_probabilities(ctx):
    return LevelMap.from_keep_mask(torch.rand(1, 8, 8), "8->32")


def _tap_spacing(value):
    def call(ctx):
        return AF.conv2d(_map(), _weight().detach(), tap_spacing=value, backend="torch")

    return call


def _meta_level_map(ctx):
    return LevelMap(torch.zeros(1, 4, 4, dtype=torch.long, device="meta"), 2)


@contextlib.contextmanager
def _memory_headroom(nbytes: int):
    """Cap this process's address space at its current size + ``nbytes`` (POSIX with /proc; else no cap), so an
    unfixed O(4^K) validation fails in the allocator at once instead of zero-filling gigabytes."""
    statm = Path("/proc/self/statm")
    if resource is None or not statm.exists():
        yield
        return
    current = int(statm.read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = current + nbytes if hard == resource.RLIM_INFINITY else min(hard, current + nbytes)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _huge_k(ctx):
    # K >= 13 must be refused up front (unfixed, K = 13 allocates 1.3 GB, K >= 15 dies in the allocator)
    with _memory_headroom(256 << 20):
        return LevelMap(torch.zeros(1, 4, 4, dtype=torch.long), 13)


# ---------------------------------------------------------------------------------------------- rows: silently wrong
def _stale_packed_weight(update: str):
    """Triton conv, then the weight changes without a new tensor (``.data`` writes keep id and version)."""

    def call(ctx):
        x, w = _map(), _weight()
        with torch.no_grad():
            AF.conv2d(x, w, backend="triton")  # packs and caches the weight
            w2 = torch.randn_like(w)
            if update == "data.copy_":
                w.data.copy_(w2)
            elif update == "data =":
                w.data = w2
            else:
                torch.nn.utils.vector_to_parameters(w2.flatten(), [w])
            return AF.conv2d(x, w, backend="triton"), x, w

    return call


def _check_fresh_weight(result, ctx):
    got, x, w = result
    _torch_backend_equal(got, x, w)


def _half_after_float(ctx):
    """``net.half()`` after a float32 forward: the parameter's ``.data`` becomes half in place."""
    x, w = _map(), _weight()
    with torch.no_grad():
        AF.conv2d(x, w, backend="triton")
        w.data = w.data.half()
        xh = MultiResMap(x.values.half(), x.layout)
        return AF.conv2d(xh, w, backend="triton"), x, w


def _check_half(result, ctx):
    got, x, w = result
    assert got.dtype == torch.float16
    want = AF.conv2d(x, w.detach().float(), backend="torch")
    torch.testing.assert_close(got.values.float(), want.values, rtol=2e-2, atol=2e-2)


def _adaptive(dense: torch.Tensor, lm: LevelMap) -> torch.Tensor:
    """Enter, conv, two downsampling steps, conv at the coarsest stage, densify: uses the map's stage 1 and 2."""
    w = _weight().detach()
    x = AF.downsample(AF.downsample(AF.conv2d(MultiResMap.from_dense(dense, lm), w, backend="torch")))
    return AF.conv2d(x, _weight(4, 4).detach(), tap_spacing=4, backend="torch").densify()


def _levelmap_refilled_in_place(ctx):
    t = LevelMap.random(1, 8, 8, 2, generator=torch.Generator().manual_seed(3)).levels.clone()
    lm = LevelMap(t, 2)
    dense = torch.randn(1, 3, 8, 8)
    _adaptive(dense, lm)  # builds and caches the index tables, as a network's first call does
    t.copy_(LevelMap.random(1, 8, 8, 2, generator=torch.Generator().manual_seed(4)).levels)  # the caller refills
    return lm, dense


def _check_consistent_map(result, ctx):
    """What the network computes and what the map reports agree (both the old map, or both the new one)."""
    lm, dense = result
    fresh = LevelMap(lm.levels.clone(), 2)
    assert torch.equal(lm.fractions(), fresh.fractions())
    assert torch.equal(_adaptive(dense, lm), _adaptive(dense, fresh))


def _levelmap_misaligned_write(ctx):
    t = torch.full((1, 8, 8), 2, dtype=torch.long)
    lm = LevelMap(t, 2)
    lm.layout(0)
    t[0, 1, 1] = 0  # breaks the 4x4 block at the top left: not an aligned map
    return lm


def _check_still_valid(lm, ctx):
    """Either the map kept its own (valid) copy, or using it raises the validation error."""
    try:
        LevelMap(lm.levels.clone(), 2)
    except LevelMapError:
        with pytest.raises(LevelMapError):
            _adaptive(torch.randn(1, 3, 8, 8), lm)


def _bn_only_fine_tuning(ctx):
    """Frozen conv, trainable eval-mode BatchNorm affine: the triton backend must not take the fused path."""
    x = _map(4)
    w = _weight(4, 4).requires_grad_(False)
    grads = {}
    for backend in ("triton", "torch"):
        bn = nn.BatchNorm2d(4).eval()
        y = AF.conv_bn_act(x, w, None, bn, relu=True, backend=backend)
        y.values.sum().backward()
        grads[backend] = (bn.weight.grad, bn.bias.grad)
    return grads


def _check_bn_grads(grads, ctx):
    for got, want in zip(grads["triton"], grads["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- rows: checkpoints
def _checkpoint_from(kind: str):
    def call(ctx):
        model = _tiny_resnet()
        path = ctx.tmp_path / "path.pth"
        if kind == "None":
            return adatriton.load_authors_state_dict(model, None)
        if kind == "missing":
            return adatriton.load_authors_state_dict(model, str(path))
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("not a checkpoint\n")
        elif kind == "list":
            torch.save([1, 2, 3], path)
        else:
            torch.save(_tiny_resnet().state_dict(), path)
            if kind == "truncated":
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return adatriton.load_authors_state_dict(model, str(path)), model

    return call


def _check_loaded(result, ctx):
    keys, model = result
    assert not keys.missing_keys and not keys.unexpected_keys
    assert torch.equal(model.conv1.weight, _tiny_resnet().conv1.weight)


# ---------------------------------------------------------------------------------------------- rows: tools, masks
def _impossible_autotune_entry(ctx):
    ctx.monkeypatch.setenv("ADATRITON_CACHE_DIR", str(ctx.tmp_path))
    ctx.monkeypatch.setattr(runtime_autotune, "_caches", {})
    shape = {"rows": 100, "cin_g": 16, "cout_g": 16, "taps": 9, "groups": 1, "dtype": torch.float32, "gather": True}
    path = runtime_autotune.cache_path("cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {runtime_autotune.conv_key(**shape): {"config": [3, 5, 7, 1, 3], "time_ms": 1.0, "candidates": 2}}
    path.write_text(
        json.dumps({"schema": 1, "gpu": "interpreter-cpu", "triton": triton.__version__, "entries": entries})
    )
    got = runtime_autotune.select_config(**shape, device=torch.device("cpu"), launch=lambda config: None)
    assert got == conv_kernels.default_config(100, 16, 16)  # the bucket falls back instead of crashing the launch


def _calibrate_cli(argv):
    def call(ctx):
        return calibrate_tool.main(argv)

    return call


def _edges_hwc(ctx):
    return masks.edges(np.zeros((48, 64, 3), np.uint8), "8->32")


def _edges_fraction_at_256(ctx):
    rng = np.random.default_rng(0)
    img = torch.as_tensor(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).permute(2, 0, 1)[None]
    return masks.edges(img, "8->32"), masks.edges(img, "8->32", fraction=0.3)


def _check_fraction(result, ctx):
    default, budget = result
    assert float(default.fractions()[0]) > 0.95  # the documented small-image default: no savings
    assert abs(float(budget.fractions()[0]) - 0.3) < 0.1


# ------------------------------------------------------------------------------------- rows: ops on plain tensors
def _plain(channels: int = 3) -> torch.Tensor:
    return torch.randn(1, channels, 4, 4, generator=torch.Generator().manual_seed(3))


def _op_call(name: str, *args: Callable[[], Any], **kwargs: Callable[[], Any]) -> Callable[[SimpleNamespace], Any]:
    """``adatriton.ops.<name>(*args, **kwargs)`` with every argument built at the call (the issue's reproducers)."""

    def call(ctx):
        return getattr(adatriton.ops, name)(*(a() for a in args), **{k: v() for k, v in kwargs.items()})

    return call


def _plain_tensor_row(name: str, *args, arg: str = "", got: str = "Tensor", **kwargs):
    says = (re.escape(f"{name} expects a MultiResMap"), rf"as {arg}\b" if arg else "MultiResMap, got", got)
    return pytest.param(Row(_op_call(name, *args, **kwargs), (TypeError,), says=says), id=f"{name}-{arg or 'x'}-{got}")


def _bn():
    return nn.BatchNorm2d(3).eval()


def _offsets():
    return MultiResMap(torch.zeros(_map().values.shape[0], 18), _map().layout)


_PLAIN_TENSOR_ROWS = [
    _plain_tensor_row("conv2d", _plain, lambda: _weight().detach()),
    _plain_tensor_row("conv2d", lambda: _plain().numpy(), lambda: _weight().detach(), got="ndarray"),
    _plain_tensor_row("conv_bn_act", _plain, lambda: _weight().detach()),
    _plain_tensor_row("conv_bn_act", _map, lambda: _weight(3).detach(), arg="residual", residual=_plain),
    _plain_tensor_row("downsample", _plain),
    _plain_tensor_row("batch_norm", _plain, _bn),
    _plain_tensor_row("bn_add_act", _plain, _bn),
    _plain_tensor_row("bn_add_act", _map, arg="residual", residual=_plain),
    _plain_tensor_row("relu", _plain),
    _plain_tensor_row("add", _map, _plain, arg="y"),
    _plain_tensor_row("deform_conv2d", _plain, _offsets, lambda: _weight().detach()),
    _plain_tensor_row("deform_conv2d", _map, _plain, lambda: _weight().detach(), arg="offset"),
    _plain_tensor_row("densify", _plain),
    _plain_tensor_row("element_areas", _plain),
    _plain_tensor_row("global_avg_pool", _plain),
    _plain_tensor_row("global_max_pool", _plain),
    _plain_tensor_row("avg_downsample", _plain),
    _plain_tensor_row("layer_norm", _plain),
    _plain_tensor_row("linear", _plain, lambda: torch.randn(4, 3)),
    _plain_tensor_row("per_sample", _plain, lambda: torch.ones(3)),
    _plain_tensor_row("downsample", lambda: None, got="NoneType"),
]


# ---------------------------------------------------------------------------------------------- the table
ROWS = [
    # -- a numpy image into a converted net
    pytest.param(
        Row(_numpy_image, ARG_ERRORS, says=("expected a torch.Tensor", "ndarray|numpy")),
        id="converted-net-numpy-image",
    ),
    # -- probabilities as a keep mask
    pytest.param(
        Row(
            _keep_mask_probabilities,
            ARG_ERRORS,
            says=(re.escape("a keep mask must be bool or 0/1 integers; threshold probabilities first"), "float"),
        ),
        id="from-keep-mask-float-probabilities",
    ),
    # -- convert: backend checked at once, ints for dense strides
    pytest.param(
        Row(
            lambda ctx: adatriton.convert(_tiny_resnet(), "8->32", backend="cuda"),
            ARG_ERRORS,
            says=("backend", "'cuda'", r"'torch', 'dense', 'triton', 'auto'"),
        ),
        id="convert-backend-cuda",
    ),
    pytest.param(
        Row(
            lambda ctx: adatriton.convert(_tiny_resnet(), "8-32"), ARG_ERRORS, says=("output_stride", "'8-32'", "8->32")
        ),
        id="convert-output-stride-8-32",
    ),
    pytest.param(Row(_converted_forward, check=_check_int_stride), id="convert-int-dense-stride-8-works"),
    # -- tap spacing
    pytest.param(
        Row(_tap_spacing(1.5), ARG_ERRORS, says=("tap[_ ]spacing", r"1\.5")),
        id="conv2d-tap-spacing-1.5",
    ),
    pytest.param(
        Row(_tap_spacing(0), ARG_ERRORS, says=("tap[_ ]spacing", r"\b0\b", ">= 1|positive")), id="conv2d-tap-spacing-0"
    ),
    pytest.param(
        Row(_tap_spacing(-2), ARG_ERRORS, says=("tap[_ ]spacing", "-2", ">= 1|positive")),
        id="conv2d-tap-spacing-minus-2",
    ),
    # -- level maps: meta device, K bound
    pytest.param(Row(_meta_level_map, ARG_ERRORS, says=("meta",)), id="levelmap-on-meta-device"),
    pytest.param(Row(_huge_k, ARG_ERRORS, says=(r"\b13\b", "K|num_levels|levels")), id="levelmap-k-13"),
    # -- checkpoints: a path or a mapping, load failures in CheckpointError naming the file
    pytest.param(Row(_checkpoint_from("valid"), check=_check_loaded), id="checkpoint-path-loads"),
    pytest.param(
        Row(_checkpoint_from("None"), (*ARG_ERRORS, adatriton.CheckpointError), says=("None", "path|mapping")),
        id="checkpoint-none",
    ),
    pytest.param(
        Row(_checkpoint_from("missing"), (adatriton.CheckpointError,), says=("path.pth",)),
        id="checkpoint-missing-file",
    ),
    pytest.param(
        Row(_checkpoint_from("truncated"), (adatriton.CheckpointError,), says=("path.pth",)),
        id="checkpoint-truncated-file",
    ),
    pytest.param(
        Row(_checkpoint_from("empty"), (adatriton.CheckpointError,), says=("path.pth",)),
        id="checkpoint-empty-file",
    ),
    pytest.param(
        Row(_checkpoint_from("text"), (adatriton.CheckpointError,), says=("path.pth",)),
        id="checkpoint-not-a-checkpoint-text",
    ),
    pytest.param(
        Row(_checkpoint_from("list"), (adatriton.CheckpointError,), says=("path.pth", "state_dict|mapping")),
        id="checkpoint-not-a-state-dict-list",
    ),
    # -- autotune cache: an impossible config is dropped with a warning
    pytest.param(
        Row(_impossible_autotune_entry, warns=UserWarning, says=("dropping 1 malformed", "BLOCK_M=3")),
        id="autotune-entry-3-5-7-1-3",
    ),
    # -- CLIs: closed sets are argparse choices
    pytest.param(
        Row(
            _calibrate_cli(["--output-stride", "8-32"]),
            usage=True,
            says=("--output-stride", "invalid choice: '8-32'", "8->32"),
        ),
        id="calibrate-cli-output-stride-8-32",
    ),
    pytest.param(
        Row(_calibrate_cli(["--dtype", "half"]), usage=True, says=("--dtype", "invalid choice: 'half'", "fp16")),
        id="calibrate-cli-dtype-half",
    ),
    # -- masks: (H, W, 3) images, the budget at small sizes
    pytest.param(
        Row(_edges_hwc, ARG_ERRORS, says=(r"\(N, 3, H, W\)", r"\(48, 64, 3\)", re.escape("permute(2, 0, 1)[None]"))),
        id="edges-hwc-image",
    ),
    pytest.param(Row(_edges_fraction_at_256, check=_check_fraction), id="edges-256px-default-and-fraction"),
    # -- silently wrong results that are input errors (issue: "fix these first")
    pytest.param(
        Row(_stale_packed_weight("data.copy_"), check=_check_fresh_weight),
        id="triton-weight-data-copy-after-forward",
    ),
    pytest.param(
        Row(_stale_packed_weight("data ="), check=_check_fresh_weight),
        id="triton-weight-data-assign-after-forward",
    ),
    pytest.param(
        Row(_stale_packed_weight("vector_to_parameters"), check=_check_fresh_weight),
        id="triton-weight-vector-to-parameters-after-forward",
    ),
    pytest.param(Row(_half_after_float, check=_check_half), id="triton-weight-half-after-float-forward"),
    pytest.param(
        Row(_levelmap_refilled_in_place, check=_check_consistent_map),
        id="levelmap-caller-tensor-refilled-in-place",
    ),
    pytest.param(
        Row(_levelmap_misaligned_write, check=_check_still_valid),
        id="levelmap-caller-tensor-misaligned-write",
    ),
    pytest.param(Row(_bn_only_fine_tuning, check=_check_bn_grads), id="triton-bn-only-fine-tuning-backward"),
    # -- ops given a plain tensor (or anything else) where they need a MultiResMap (issue 23.6): one TypeError each
    *_PLAIN_TENSOR_ROWS,
]


# ---------------------------------------------------------------------------------------------- rows: issue 23 (safety)
def _train_with(**kwargs):
    def call(ctx):
        from adatriton.tools.train import train
        from tests.models.test_learned import stripes
        from tests.tools.test_train_ddp import _model

        settings = {"batch_size": 2, "max_iters": 1, "progress": False, "checkpoint_dir": ctx.tmp_path, **kwargs}
        data = settings.pop("data", None) or stripes(n=2, size=32)
        return train(_model(seed=0), data, **settings)

    return call


def _float_labels():
    from tests.models.test_learned import stripes

    return [(image, label.float()) for image, label in stripes(n=2, size=32)]


def _nested_cache_file(which: str):
    def call(ctx):
        from adatriton.runtime import calibration as D

        ctx.monkeypatch.setenv("ADATRITON_CACHE_DIR", str(ctx.tmp_path))
        ctx.monkeypatch.setattr(runtime_autotune, "_caches", {})
        D.clear_calibration_cache()
        path = runtime_autotune.cache_path("cpu") if which == "autotune" else D.calibration_path("cpu")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("[" * 100000 + "]" * 100000)
        try:
            return runtime_autotune.get_cache("cpu").load() if which == "autotune" else D.load_calibration("cpu")
        finally:
            D.clear_calibration_cache()

    return call


def _authors_training_checkpoint(ctx):
    from tests.models.test_checkpoints import _learned, to_authors_learned_layout, with_training_classifier

    state = _learned(seed=0).state_dict()
    checkpoint = with_training_classifier(to_authors_learned_layout(state, state))
    return adatriton.load_authors_state_dict(_learned(seed=1), checkpoint)


def _check_strict_load(result, ctx):
    assert result.missing_keys == [] and result.unexpected_keys == []


ROWS += [
    pytest.param(Row(_train_with(gamma=float("nan")), raises=ARG_ERRORS, says=("gamma", "nan")), id="train-gamma-nan"),
    pytest.param(
        Row(_train_with(gamma=1.5), raises=ARG_ERRORS, says=("gamma", r"\[0.0, 1.0\]", "1.5")), id="train-gamma-1.5"
    ),
    pytest.param(
        Row(_train_with(mask_weight=float("inf")), raises=ARG_ERRORS, says=("mask_weight", "inf")),
        id="train-mask-weight-inf",
    ),
    pytest.param(
        Row(_train_with(lr_head=float("nan")), raises=ARG_ERRORS, says=("lr_head", "nan")), id="train-lr-head-nan"
    ),
    pytest.param(
        Row(_train_with(batch_size=0), raises=ARG_ERRORS, says=("batch_size", ">= 1", "0")), id="train-batch-size-0"
    ),
    pytest.param(
        Row(_train_with(data=_float_labels()), raises=ARG_ERRORS, says=("labels", "integer", "float32")),
        id="train-float-labels",
    ),
    pytest.param(
        Row(_nested_cache_file("autotune"), warns=UserWarning, says=("ignoring autotune cache", "nested too deeply")),
        id="autotune-cache-deeply-nested-json",
    ),
    pytest.param(
        Row(_nested_cache_file("calibration"), warns=UserWarning, says=("ignoring dispatch calibration", "nested")),
        id="calibration-file-deeply-nested-json",
    ),
    pytest.param(Row(_authors_training_checkpoint, check=_check_strict_load), id="authors-training-checkpoint-strict"),
]


@pytest.fixture
def ctx(tmp_path, monkeypatch, capsys):
    return SimpleNamespace(tmp_path=tmp_path, monkeypatch=monkeypatch, capsys=capsys)


@pytest.mark.parametrize("row", ROWS)
def test_bad_input(row: Row, ctx):
    if row.raises is not None:
        with pytest.raises(row.raises) as err:
            row.call(ctx)
        assert isinstance(err.value, (ValueError, TypeError, adatriton.CheckpointError)), type(err.value)
        _says(str(err.value), row.says)
    elif row.warns is not None:
        with pytest.warns(row.warns) as caught:
            row.call(ctx)
        _says(" | ".join(str(w.message) for w in caught), row.says)
    elif row.usage:
        with pytest.raises(SystemExit) as err:
            row.call(ctx)
        assert err.value.code == 2
        stderr = ctx.capsys.readouterr().err
        assert "Traceback" not in stderr
        _says(stderr, row.says)
    else:
        row.check(row.call(ctx), ctx)
