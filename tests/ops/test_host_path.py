"""The host path: level maps built with one host sync, maps that own their levels, weights and BatchNorm read as
they are at call time (no stale derived copies), the fused epilogues, autocast casting, and input errors."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import adatriton
import adatriton.ops as AF
from adatriton import LevelMap, LevelMapDtypeError, LevelMapError, MultiResMap
from adatriton.runtime.host import host_reads

#: aten ops that read a device value back to the host.
SYNCS = {"_local_scalar_dense", "nonzero", "item", "masked_select", "unique", "_unique2", "is_nonzero"}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCS:
            self.syncs.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- level maps
@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_level_map_and_all_its_tables_cost_one_host_sync(k):
    levels = LevelMap.random(2, 13, 18, k, generator=_gen(k)).levels
    before = host_reads()
    with SyncCounter() as counter:
        lm = LevelMap(levels, k)
        for stage in range(k + 1):
            lay = lm.layout(stage)
            lay.tap_index(3, 1 << stage, downsample=False)
            if stage < k:
                lay.tap_index(3, 1 << stage, downsample=True)
                lay.downsample_sources("top_left")
                lay.downsample_sources("max")
    assert counter.syncs == [], "implicit syncs"
    assert host_reads() - before == 1


def test_layout_counts_equal_the_level_values():
    lm = LevelMap.random(3, 21, 14, 2, generator=_gen(3))
    for stage in range(3):
        lay = lm.layout(stage)
        assert lay.num_elements == len(lay.batch_index) == sum(lay.counts)
        ids = lay.cell_index
        for v in range(stage + 1):
            real = ids[v][ids[v] < lay.num_elements]
            assert torch.equal(real.sort().values, torch.arange(lay.offsets[v], lay.offsets[v] + lay.counts[v]))


def test_level_map_owns_its_levels():
    levels = torch.zeros(1, 8, 8, dtype=torch.long)
    lm = LevelMap(levels, 2)
    lm.layout(2)
    levels[0, :4, :4] = 2  # the caller refills its tensor: the map (and its cached layouts) must not change
    assert lm.fractions().tolist() == [1.0, 0.0, 0.0]
    assert lm.layout(2).counts == (64, 0, 0)
    levels[0, 0, 1] = 1  # misaligned, written after construction: nothing reads it
    assert lm.layout(1).counts == (64, 0)


@pytest.mark.parametrize("k", [13, 20])
def test_too_many_levels_is_a_clear_error(k):
    with pytest.raises(LevelMapError, match=r"num_levels must be at most 12"):
        LevelMap(torch.zeros(1, 4, 4, dtype=torch.long), k)


def test_twelve_levels_on_a_small_map_stays_small():
    lm = LevelMap(torch.full((1, 4, 4), 12, dtype=torch.long), 12)
    assert lm.element_counts() == [0] * 12 + [1]


def test_level_map_on_meta_is_a_clear_error():
    with pytest.raises(LevelMapError, match="meta device"):
        LevelMap(torch.zeros(1, 4, 4, dtype=torch.long, device="meta"), 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_float_keep_mask_is_refused(dtype):
    probs = torch.rand(1, 8, 8, dtype=dtype)
    with pytest.raises(LevelMapDtypeError, match="threshold probabilities first"):
        LevelMap.from_keep_mask(probs, "8->32")


def test_integer_keep_mask_must_be_zero_or_one():
    with pytest.raises(LevelMapError, match="0/1 integers"):
        LevelMap.from_keep_mask(torch.full((1, 8, 8), 3), "8->32")
    assert LevelMap.from_keep_mask(torch.ones(1, 8, 8, dtype=torch.long), "8->32").fractions()[0] == 1


def test_from_dense_values_are_contiguous_rows():
    lm = LevelMap.uniform(1, 6, 7, 0, 2)
    x = torch.randn(1, 5, 6, 7)
    mr = MultiResMap.from_dense(x, lm)
    assert mr.values.is_contiguous() and torch.equal(mr.values, x.permute(0, 2, 3, 1).reshape(42, 5))
    cl = x.contiguous(memory_format=torch.channels_last)
    assert MultiResMap.from_dense(cl, lm).values.data_ptr() == cl.data_ptr()  # a view, no copy


# ---------------------------------------------------------------------------------------------- input errors
def test_numpy_image_into_a_converted_net():
    net = adatriton.convert(torchvision.models.resnet50(), "8->32").eval()
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        net(np.zeros((1, 3, 32, 32), dtype=np.float32), LevelMap.uniform(1, 4, 4, 0, 2))


@pytest.mark.parametrize(
    ("spacing", "error", "match"),
    [(1.5, TypeError, "tap_spacing must be a positive int"), (0, ValueError, "tap_spacing"), (-2, ValueError, "tap")],
    ids=["float", "zero", "negative"],
)
def test_bad_tap_spacing(spacing, error, match):
    lm = LevelMap.uniform(1, 4, 4, 0, 1)
    x = MultiResMap(torch.randn(16, 3), lm.layout(0))
    with pytest.raises(error, match=match):
        AF.conv2d(x, torch.randn(4, 3, 3, 3), tap_spacing=spacing)


# ---------------------------------------------------------------------------------------------- fused epilogues
def _bn(channels: int, seed: int, dtype=torch.float64) -> nn.BatchNorm2d:
    gen = _gen(seed)
    bn = nn.BatchNorm2d(channels).to(dtype).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
        bn.weight.copy_(torch.randn(channels, generator=gen))
        bn.bias.copy_(torch.randn(channels, generator=gen))
    return bn


@pytest.mark.parametrize("backend", ["torch", "dense"])
@pytest.mark.parametrize(
    ("k", "step", "groups"),
    [(3, False, 1), (3, True, 1), (1, True, 1), (1, False, 1), (3, False, 2)],
    ids=["3x3", "3x3-step", "1x1-step", "1x1", "3x3-groups2"],
)
def test_fused_cpu_epilogue_equals_op_by_op(backend, k, step, groups):
    lm = LevelMap.random(2, 9, 11, 2, generator=_gen(5))
    x = MultiResMap(torch.randn(lm.layout(0).num_elements, 6, generator=_gen(6), dtype=torch.float64), lm.layout(0))
    w = torch.randn(8, 6 // groups, k, k, generator=_gen(7), dtype=torch.float64)
    b = torch.randn(8, generator=_gen(8), dtype=torch.float64)
    bn = _bn(8, 9)
    out_layout = lm.layout(1) if step else lm.layout(0)
    res = MultiResMap(torch.randn(out_layout.num_elements, 8, generator=_gen(10), dtype=torch.float64), out_layout)
    with torch.no_grad():
        fused = AF.conv_bn_act(x, w, b, bn, True, res, 2, groups, step, backend)
        plain = AF.bn_add_act(AF.conv2d(x, w, b, 2, groups, step, backend), bn, True, res)
    torch.testing.assert_close(fused.values, plain.values, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- no stale weights
def _triton_conv_case():
    lm = LevelMap.random(1, 8, 8, 1, generator=_gen(11))
    x = MultiResMap(torch.randn(lm.layout(0).num_elements, 16, generator=_gen(12)), lm.layout(0))
    conv = adatriton.AdaptiveConv2d(16, 16, 3, padding=1, bias=False)
    bn = _bn(16, 13, torch.float32)
    return x, conv, bn


def _expected(x, conv, bn):
    with torch.no_grad():
        return AF.conv_bn_act(x, conv.weight, None, bn, True, backend="torch").values


@pytest.mark.parametrize(
    "edit",
    ["data_copy", "data_assign", "vector_to_parameters", "optimizer_step", "bn_data_copy", "load_state_dict"],
)
def test_weight_and_batchnorm_edits_are_seen_by_the_triton_backend(edit):
    x, conv, bn = _triton_conv_case()
    with torch.no_grad():
        conv.multires(x, bn=bn, relu=True, backend="triton")  # a first call (caches, if any, are warm)
        w2 = torch.randn_like(conv.weight)
        if edit == "data_copy":
            conv.weight.data.copy_(w2)
        elif edit == "data_assign":
            conv.weight.data = w2
        elif edit == "vector_to_parameters":
            torch.nn.utils.vector_to_parameters(w2.flatten(), [conv.weight])
        elif edit == "optimizer_step":
            conv.weight.copy_(w2)
        elif edit == "bn_data_copy":
            bn.running_var.data.copy_(bn.running_var * 4)
        else:
            conv.load_state_dict({"weight": w2})
        got = conv.multires(x, bn=bn, relu=True, backend="triton").values
    torch.testing.assert_close(got, _expected(x, conv, bn), rtol=2e-5, atol=2e-5)


def test_dtype_move_after_a_forward_on_triton():
    x, conv, bn = _triton_conv_case()
    with torch.no_grad():
        conv.multires(x, bn=bn, relu=True, backend="triton")
        conv.half()
        got = conv.multires(MultiResMap(x.values.half(), x.layout), bn=bn, relu=True, backend="triton").values
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), _expected(x, conv.float(), bn), rtol=2e-2, atol=2e-2)


def test_batchnorm_only_fine_tuning_on_triton_gets_gradients():
    x, conv, bn = _triton_conv_case()
    conv.weight.requires_grad_(False)
    got = conv.multires(x, bn=bn, relu=True, backend="triton").values
    got.sum().backward()
    ref_bn = _bn(16, 13, torch.float32)
    AF.conv_bn_act(x, conv.weight, None, ref_bn, True, backend="torch").values.sum().backward()
    torch.testing.assert_close(bn.weight.grad, ref_bn.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.bias.grad, ref_bn.bias.grad, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- autocast
def test_conv_under_cpu_autocast_runs_in_bfloat16():
    lm = LevelMap.random(1, 8, 8, 1, generator=_gen(14))
    x = MultiResMap(torch.randn(lm.layout(0).num_elements, 4, generator=_gen(15)), lm.layout(0))
    w = torch.randn(5, 4, 3, 3, generator=_gen(16))
    with torch.autocast("cpu", torch.bfloat16):
        got = AF.conv2d(x, w, tap_spacing=1)
    assert got.dtype == torch.bfloat16
    ref = AF.conv2d(x, w, tap_spacing=1).values
    torch.testing.assert_close(got.values.float(), ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())
