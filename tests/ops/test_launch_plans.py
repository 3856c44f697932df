"""conv_elements' remembered launches: a conv launched again with tensors of the same shapes, strides and dtypes skips
the checks and Triton's binder, and hands the driver's launcher exactly what Triton's own JITFunction.run handed it
the first time (with the new tensors). Triton's launch path runs for real here, up to the driver's launch, which
records its arguments (bench/host.py's no-launch kernel)."""

from __future__ import annotations

import pytest
import torch

from adatriton.kernels import conv


def same_launch(first: tuple, second: tuple, fresh: dict[int, torch.Tensor]) -> None:
    """``second`` is ``first`` with the tensors at the positions in ``fresh`` replaced by those (the others equal)."""
    assert len(first) == len(second)
    for i, (a, b) in enumerate(zip(first, second)):
        if isinstance(a, torch.Tensor):
            assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype), i
            if i in fresh:
                assert b is fresh[i], i
        else:
            assert a == b, i


def _problem(rows=50, cin=32, cout=24, taps=9, dtype=torch.float32):
    torch.manual_seed(0)
    values = torch.randn(rows, cin, dtype=dtype)
    index = torch.randint(0, rows + 1, (rows, taps), dtype=torch.int32)
    k = int(taps**0.5)
    weight = torch.randn(cout, cin, k, k, dtype=dtype)
    return values, index, weight


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_a_repeated_launch_replays_the_full_paths_arguments(launcher, layout):
    launches, full = launcher
    values, index, weight = _problem()
    if layout == "channels_last":
        weight = weight.contiguous(memory_format=torch.channels_last)
    bn = (torch.rand(24), torch.rand(24), torch.rand(24), torch.rand(24) + 1, 1e-5)
    residual = torch.randn(50, 24)
    second = values.clone()
    outs = [conv.conv_elements(v, index, weight, taps=9, bn=bn, residual=residual, act=1) for v in (values, second)]
    assert full[0] == 1 and len(launches) == 2
    # positions after grid x3, stream, function, metadata, launch metadata, 2 hooks: values 0, out 11
    same_launch(launches[0], launches[1], {9: second, 9 + 11: outs[1]})
    if layout == "nchw":  # the channels-last copy is made at every launch, never kept
        assert launches[1][9 + 2] is not launches[0][9 + 2]
        assert launches[1][9 + 2].is_contiguous(memory_format=torch.channels_last)


def test_plain_1x1_and_scale_shift(launcher):
    launches, full = launcher
    values, _, weight = _problem(taps=1)
    scale, shift = torch.rand(24), torch.rand(24)
    for _ in range(3):
        conv.conv_elements(values, None, weight, taps=1, scale=scale, shift=shift)
    assert full[0] == 1 and len(launches) == 3
    same_launch(launches[0], launches[2], {9: values})


def test_what_changes_the_specialisation_takes_the_full_path(launcher):
    launches, full = launcher
    values, index, weight = _problem()
    conv.conv_elements(values, index, weight, taps=9)
    # a misaligned values pointer (Triton specialises on 16-byte alignment), another shape, a non-contiguous index
    # (copied by the full path), another dtype: each launches through JITFunction.run
    shifted = torch.randn(50 * 32 + 1)[1:].view(50, 32)
    conv.conv_elements(shifted, index, weight, taps=9)
    conv.conv_elements(values[:40], index[:40], weight, taps=9)
    wide = torch.randint(0, 51, (50, 18), dtype=torch.int32)[:, ::2]
    conv.conv_elements(values, wide, weight, taps=9)
    conv.conv_elements(values, wide, weight, taps=9)
    conv.conv_elements(values.half(), index, weight.half(), taps=9)
    assert full[0] == 6 and len(launches) == 6
    assert launches[1][9].data_ptr() % 16 != 0
    # the first one again: the misaligned launch of the same shapes replaced its plan, so once more in full, then
    # remembered
    conv.conv_elements(values, index, weight, taps=9)
    conv.conv_elements(values, index, weight, taps=9)
    assert full[0] == 7 and len(launches) == 8


def test_a_patched_kernel_is_never_bypassed(launcher, monkeypatch):
    launches, full = launcher
    values, index, weight = _problem()
    conv.conv_elements(values, index, weight, taps=9)
    seen = []

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(grid)

            return launch

    monkeypatch.setattr(conv, "_conv_elements_kernel", Spy())
    conv.conv_elements(values, index, weight, taps=9)
    assert len(seen) == 1 and len(launches) == 1
