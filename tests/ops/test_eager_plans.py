"""conv_bn_act's eager plans: an eager triton conv called again with the same weight, BatchNorm and layout replays the
launch of its first call without the checks, the dispatcher or conv_elements, handing the driver's launcher what the
full path handed it (with the new tensors); anything those decisions read that changed takes the full path, which
raises for bad input as before. Triton's launch path runs for real up to the driver's launch, which records its
arguments (the ``launcher`` fixture of conftest.py)."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

import adatriton
from adatriton import LevelMap, MultiResMap
from adatriton.kernels import conv as kconv
from adatriton.ops import conv as oconv
from adatriton.ops import dispatch
from adatriton.runtime import autotune
from adatriton.runtime.context import environment_snapshot, same_settings, settings_token
from tests.ops.test_launch_plans import same_launch

#: Position of the first kernel argument in a launcher call (grid x3, stream, function, metadata, launch metadata,
#: 2 hooks), then values at 0, the output at 11.
ARGS = 9


@pytest.fixture
def counted(launcher, monkeypatch):
    """``(launches, calls)``: the launcher calls, and how many calls reached ``conv_elements`` (the full path)."""
    launches, _ = launcher
    calls = [0]
    full = kconv.conv_elements

    def conv_elements(*args, **kwargs):
        calls[0] += 1
        return full(*args, **kwargs)

    monkeypatch.setattr(kconv, "conv_elements", conv_elements)
    return launches, calls


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def _case(k: int = 3, cin: int = 16, cout: int = 24):
    torch.manual_seed(0)
    lm = LevelMap.random(1, 12, 16, 2, generator=torch.Generator().manual_seed(1))
    x = MultiResMap.from_dense(torch.randn(1, cin, 12, 16), lm)
    weight = torch.randn(cout, cin, k, k).contiguous(memory_format=torch.channels_last)
    return x, weight, _bn(cout)


@pytest.mark.parametrize(
    ("k", "downsample", "residual"),
    [(3, False, False), (3, True, False), (1, False, True), (1, True, False), (1, False, False)],
)
def test_a_repeated_call_replays_the_full_paths_launch(counted, k, downsample, residual):
    """The first call is seen, the second planned (both through the full path), the third replays."""
    launches, calls = counted
    x, weight, bn = _case(k)
    out_layout = x.layout.next() if downsample else x.layout
    res = MultiResMap(torch.randn(out_layout.num_elements, 24), out_layout) if residual else None
    x2 = MultiResMap(x.values.clone(), x.layout)
    with torch.no_grad():
        outs = [
            adatriton.ops.conv_bn_act(v, weight, None, bn, True, res, downsample=downsample, backend="triton")
            for v in (x, x, x2)
        ]
    # seen, planned (both through the full path), replayed
    assert calls[0] == 2 and len(launches) == 3
    assert outs[2].layout is out_layout and outs[2].values.shape == (out_layout.num_elements, 24)
    same_launch(launches[0], launches[2], {ARGS: x2.values, ARGS + 11: outs[2].values})


def test_without_eager_plans_every_call_takes_the_full_path(counted):
    launches, calls = counted
    x, weight, bn = _case()
    with torch.no_grad(), oconv.eager_plans(False):
        for _ in range(3):
            adatriton.ops.conv_bn_act(x, weight, None, bn, True, backend="triton")
    assert calls[0] == 3 and len(launches) == 3


def test_a_converted_network_replays_every_conv(counted):
    """From the third forward with the same level map on (each conv seen, then planned): one launch per adaptive
    conv, and not one call through the full path."""
    import torchvision

    launches, calls = counted
    net = adatriton.convert(torchvision.models.resnet50().eval(), "8->32", backend="triton").eval()
    images = torch.randn(1, 3, 64, 96)
    levels = LevelMap.random(1, 8, 12, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        net.forward_features(images, levels)  # each conv seen
        convs = calls[0]
        with dispatch.recording() as records:  # recording: the full path, which records every choice
            net.forward_features(images, levels)
        assert calls[0] == 2 * convs == 2 * len(records)
        net.forward_features(images, levels)  # planned
        before = len(launches)
        net.forward_features(images, levels)
    assert calls[0] == 3 * convs and len(launches) - before == convs


def _edit_and_call(edit: str, x, weight, bn, monkeypatch, tmp_path):
    """Make the change ``edit`` and call the conv again; returns its result (or raises what it raises)."""
    kwargs = {"backend": "triton"}
    if edit == "weight_shape":
        weight.data = torch.randn(24, 8, 3, 3)
    elif edit == "weight_dtype":
        weight.data = weight.data.double()
    elif edit == "values_layout":  # other strides (not contiguous): the full path copies them
        x = MultiResMap(torch.randn(16, x.values.shape[0]).t(), x.layout)
    elif edit == "bn_train":
        bn.train()
    elif edit == "bn_dtype":
        bn.running_var.data = bn.running_var.data.half()
    elif edit == "tap_spacing_bool":
        kwargs["tap_spacing"] = True
    elif edit == "tap_spacing_float":
        kwargs["tap_spacing"] = 1.0
    elif edit == "forced":
        dispatch.force(weight, "torch")
    elif edit == "use_backend":
        kwargs["backend"] = None
        with adatriton.use_backend("torch"):
            return adatriton.ops.conv_bn_act(x, weight, None, bn, True, **kwargs)
    elif edit == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return adatriton.ops.conv_bn_act(x, weight, None, bn, True, **kwargs)
    elif edit == "grad":
        weight.requires_grad_(True)
        with torch.enable_grad():
            return adatriton.ops.conv_bn_act(x, weight, None, bn, True, **kwargs)
    elif edit == "no_interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    elif edit == "cache_dir":
        monkeypatch.setenv(autotune.CACHE_DIR_ENV, str(tmp_path))
    elif edit == "recording":
        with dispatch.recording() as records:
            out = adatriton.ops.conv_bn_act(x, weight, None, bn, True, **kwargs)
        assert len(records) == 1 and records[0]["backend"] == "triton"
        return out
    elif edit == "record_launches":
        with kconv.record_launches(90, 132) as recorder:
            out = adatriton.ops.conv_bn_act(x, weight, None, bn, True, **kwargs)
        assert len(recorder.launches) == 1
        return out
    else:
        raise AssertionError(edit)
    return adatriton.ops.conv_bn_act(x, weight, None, bn, True, **kwargs)


#: edit -> (error raised, None), or (None, whether the call launches the fused kernel through conv_elements)
EDITS = {
    "weight_shape": ((ValueError, "does not fit"), None),
    "weight_dtype": ((ValueError, "weight has dtype"), None),
    "values_layout": (None, True),
    "bn_train": (None, True),  # the unfused path: the conv alone, BatchNorm's own forward after it
    "bn_dtype": (None, True),
    "tap_spacing_bool": ((TypeError, "tap_spacing must be a positive int"), None),
    "tap_spacing_float": ((TypeError, "tap_spacing must be a positive int"), None),
    "forced": (None, False),
    "use_backend": (None, False),
    "autocast": (None, True),
    "grad": (None, True),
    "no_interpreter": ((RuntimeError, "needs a CUDA device"), None),
    "cache_dir": (None, True),
    "recording": (None, True),
    "record_launches": (None, True),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_what_the_plan_was_decided_on_changes_and_the_full_path_runs(counted, monkeypatch, tmp_path, edit):
    launches, calls = counted
    x, weight, bn = _case()
    with torch.no_grad():
        for _ in range(3):
            adatriton.ops.conv_bn_act(x, weight, None, bn, True, backend="triton")
    assert calls[0] == 2 and len(launches) == 3  # seen, planned, replayed
    error, launched = EDITS[edit]
    with torch.no_grad():
        if error is not None:
            with pytest.raises(error[0], match=error[1]):
                _edit_and_call(edit, x, weight, bn, monkeypatch, tmp_path)
            return
        out = _edit_and_call(edit, x, weight, bn, monkeypatch, tmp_path)
    assert calls[0] == (3 if launched else 2)
    assert isinstance(out, MultiResMap) and out.layout is x.layout
    if edit == "autocast":
        assert out.dtype == torch.bfloat16
    if edit == "grad":
        assert out.values.requires_grad


def test_a_residual_on_another_layout_is_refused_as_before(counted):
    x, weight, bn = _case(k=1)
    residual = MultiResMap(torch.randn(x.layout.num_elements, 24), x.layout)
    with torch.no_grad():
        for _ in range(3):
            adatriton.ops.conv_bn_act(x, weight, None, bn, True, residual, backend="triton")
        other = LevelMap.random(1, 12, 16, 2, generator=torch.Generator().manual_seed(5)).layout(0)
        elsewhere = MultiResMap(torch.randn(other.num_elements, 24), other)
        with pytest.raises(ValueError, match="residual has layout"):
            adatriton.ops.conv_bn_act(x, weight, None, bn, True, elsewhere, backend="triton")
        with pytest.raises(TypeError, match="expects a MultiResMap as residual"):
            adatriton.ops.conv_bn_act(x, weight, None, bn, True, residual.values, backend="triton")


def test_a_replaced_kernel_is_never_bypassed(counted, monkeypatch):
    launches, calls = counted
    x, weight, bn = _case()
    with torch.no_grad():
        for _ in range(3):
            adatriton.ops.conv_bn_act(x, weight, None, bn, True, backend="triton")
        seen = []

        class Spy:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: seen.append(grid)

        monkeypatch.setattr(kconv, "_conv_elements_kernel", Spy())
        adatriton.ops.conv_bn_act(x, weight, None, bn, True, backend="triton")
    assert len(seen) == 1 and calls[0] == 3 and len(launches) == 3


def test_the_plans_of_a_layout_go_with_it(counted):
    x, weight, bn = _case()
    key = id(x.layout)
    with torch.no_grad():
        adatriton.ops.conv_bn_act(x, weight, None, bn, True, backend="triton")
    assert key in oconv._EAGER
    del x
    gc.collect()
    assert key not in oconv._EAGER


def test_fixed_backend_is_what_select_returns_without_looking():
    x, weight, _ = _case()
    assert dispatch.fixed_backend(weight, "triton") == "triton"
    assert dispatch.fixed_backend(weight, "auto") is None
    with adatriton.use_backend("dense"):
        assert dispatch.fixed_backend(weight, None) == "dense" == dispatch.select(x, weight, 1, 1, False, None)
    with dispatch.forced(weight, "torch"):
        assert dispatch.fixed_backend(weight, "triton") == "torch" == dispatch.select(x, weight, 1, 1, False, "triton")
    with dispatch.recording():
        assert dispatch.fixed_backend(weight, "triton") is None


def test_the_settings_are_read_once_per_snapshot_and_again_when_one_changes(counted, monkeypatch):
    launches, calls = counted
    x, weight, bn = _case()
    reads = [0]
    is_tuning = autotune.is_tuning

    def counted_is_tuning():
        reads[0] += 1
        return is_tuning()

    monkeypatch.setattr(autotune, "is_tuning", counted_is_tuning)

    def call():
        return adatriton.ops.conv_bn_act(x, weight, None, bn, True)  # the backend from use_backend

    with torch.no_grad(), environment_snapshot(), adatriton.use_backend("triton"):
        for _ in range(3):
            call()  # seen, planned, replayed
        assert calls[0] == 2 and len(launches) == 3
        before = reads[0]
        for _ in range(3):
            call()
        assert calls[0] == 2 and len(launches) == 6 and reads[0] == before  # replayed, nothing read again
        with adatriton.use_backend("torch"):
            assert call().layout is x.layout and len(launches) == 6  # read again: the torch backend
        call()
        assert calls[0] == 2 and len(launches) == 7 and reads[0] > before  # read again, replayed
        with dispatch.recording() as records:
            call()
        assert len(records) == 1 and calls[0] == 3


def test_settings_tokens_change_with_every_block_and_come_back_after_it():
    assert settings_token() is None  # outside a snapshot the environment is read each time
    with environment_snapshot():
        first = settings_token()
        assert same_settings(first, settings_token())
        with adatriton.use_backend("dense"):
            inner = settings_token()
            assert not same_settings(first, inner)
        assert same_settings(first, settings_token())
        with environment_snapshot():
            assert not same_settings(first, settings_token())
    assert not same_settings(first, None) and not same_settings(None, None)


def test_flags_of_other_types_always_take_the_full_path(counted):
    """An int ReLU flag and a list for downsample work on the full path as before (an unhashable flag never reaches
    a plan's key)."""
    launches, calls = counted
    x, weight, bn = _case()
    with torch.no_grad():
        outs = [
            adatriton.ops.conv_bn_act(x, weight, None, bn, 1, downsample=[True], backend="triton") for _ in range(3)
        ]
    assert calls[0] == 3 and len(launches) == 3 and all(o.layout is x.layout.next() for o in outs)


def test_a_config_chosen_after_the_plan_is_launched_instead_of_the_planned_one(counted, monkeypatch):
    launches, calls = counted
    x, weight, bn = _case()

    def call():
        return adatriton.ops.conv_bn_act(x, weight, None, bn, True, backend="triton")

    with torch.no_grad():
        for _ in range(3):
            call()  # seen, planned, replayed
        tuned = kconv.ConvConfig(32, 32, 16, 2, 4)
        monkeypatch.setattr(autotune, "select_config", lambda **kwargs: tuned)
        with autotune.tuning():
            call()  # tuning: the full path, whose choice the config memo now holds
        assert calls[0] == 3
        call()  # the memo changed: the full path, with the tuned config (planned again)
        call()  # replayed
    assert calls[0] == 4 and len(launches) == 6
    same_launch(launches[4], launches[5], {ARGS: x.values, ARGS + 11: launches[5][ARGS + 11]})
    assert launches[5][-6:] != launches[2][-6:]  # the constexprs (BLOCK_M ... PERSISTENT) of another config
