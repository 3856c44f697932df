"""Triton 3.6's interpreter with numpy >= 2 (``adatriton.kernels.compat``): a loop bound computed from kernel
arguments runs, as in the conv kernel."""

import os

import pytest
import torch
import triton
import triton.language as tl

from adatriton.kernels.compat import interpreter_needs_index_patch, patch_interpreter


def test_versions_that_need_the_patch():
    assert interpreter_needs_index_patch("3.6.0") and interpreter_needs_index_patch("3.7.1+git1234")
    assert not interpreter_needs_index_patch("3.8.0") and not interpreter_needs_index_patch("4.0.0")


@triton.jit
def _count(out_ptr, n, TAPS: tl.constexpr, BLOCK: tl.constexpr):
    blocks = tl.cdiv(n, BLOCK)
    total = 0
    for it in range(0, TAPS * blocks):  # the conv kernel's loop: a bound from a kernel argument
        total += it
    tl.store(out_ptr, total)


def test_a_loop_bound_from_kernel_arguments_runs():
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 or a GPU")
    assert patch_interpreter() == (interpreter_needs_index_patch() and os.environ.get("TRITON_INTERPRET") == "1")
    out = torch.zeros(1, dtype=torch.int32, device="cpu" if not torch.cuda.is_available() else "cuda")
    _count[(1,)](out, 70, TAPS=3, BLOCK=32)
    assert out.item() == sum(range(3 * 3))
