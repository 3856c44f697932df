"""Worker side of the ahead-of-time kernel compile test (``tests/aot/test_kernels_aot.py``).

The tests run under ``TRITON_INTERPRET=1`` (``tests/conftest.py``), and with it set every ``@triton.jit`` function
-- the project's kernels and Triton's own ``tl.cdiv`` & co. -- is created as an ``InterpretedFunction``, which
``triton.compile`` cannot lower (it fails inside ``tl.cdiv``). Unsetting the variable later does not help: the
functions already exist. So the compiles run in spawned worker processes whose :func:`init_worker` removes
``TRITON_INTERPRET`` before anything imports Triton; that is why this module must not import Triton, torch or the
kernels at import time (the worker imports it to unpickle :func:`init_worker`).

The worker only gathers facts (:func:`compile_variant` returns a plain dict, from the kernel report's compile
function); the test decides what passes.
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compile: a kernel, fully typed, for one GPU target and one launch config (picklable, no Triton)."""

    kernel: str  # "module:function" of the @triton.jit kernel
    signature: tuple[tuple[str, str], ...]  # every parameter in order, with its Triton type or "constexpr"
    constexprs: tuple[tuple[str, object], ...]  # values of the "constexpr" parameters
    aligned: tuple[str, ...]  # parameters specialised as 16-divisible, as Triton's launcher does at runtime
    cap: int  # compute capability: 80, 90
    num_warps: int
    num_stages: int | None  # None: Triton's default


def init_worker(cache_dir: str) -> None:
    """Spawned-worker initialiser: compile for real, into a private cache, with the ptxas log printed."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = cache_dir  # a fresh cache: every variant really runs ptxas
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas -v (registers, spills), printed by Triton; captured below


def compile_variant(v: Variant) -> dict:
    """Compile ``v`` for ``sm_<cap>`` and return what the test checks (:func:`adatriton.tools.kernel_report.
    compile_kernel`: registers, spills, shared memory, buffers, loop waits); ``{"error":
    traceback}`` if it fails. Imports the project only here, after :func:`init_worker` unset ``TRITON_INTERPRET``."""
    try:
        from adatriton.tools.kernel_report import compile_kernel
    except BaseException:  # noqa: B036 -- an import error must come back as text, not break the pool
        import traceback

        return {"error": traceback.format_exc()}
    # no SASS: the test checks registers, spills, shared memory, buffers, waits and MMA, not the SASS loop counts
    return compile_kernel(v.kernel, v.signature, v.constexprs, v.aligned, v.cap, v.num_warps, v.num_stages, sass=False)
