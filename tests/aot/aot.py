"""Worker side of the ahead-of-time kernel compile test (``tests/aot/test_kernels_aot.py``).

The tests run under ``TRITON_INTERPRET=1`` (``tests/conftest.py``), and with it set every ``@triton.jit`` function
-- the project's kernels and Triton's own ``tl.cdiv`` & co. -- is created as an ``InterpretedFunction``, which
``triton.compile`` cannot lower (it fails inside ``tl.cdiv``). Unsetting the variable later does not help: the
functions already exist. So the compiles run in spawned worker processes whose :func:`init_worker` removes
``TRITON_INTERPRET`` before anything imports Triton; that is why this module must not import Triton, torch or the
kernels at import time (the worker imports it to unpickle :func:`init_worker`).

The worker only gathers facts (:func:`compile_variant` returns a plain dict); the test decides what passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import re
import subprocess
import tempfile
import time
import traceback


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


def _tool(name: str) -> str | None:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.access(path, os.X_OK) else None


def _res_usage(cubin: bytes) -> tuple[dict[str, int] | None, str]:
    """``cuobjdump -res-usage``: {"REG", "STACK", "SHARED", "LOCAL", ...} of the kernel function, or the reason not."""
    exe = _tool("cuobjdump")
    if exe is None:
        return None, "cuobjdump not found in Triton's wheel"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        proc = subprocess.run([exe, "-res-usage", f.name], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"cuobjdump failed: {e!r}"
    finally:
        os.unlink(f.name)
    line = next((ln for ln in proc.stdout.splitlines() if "REG:" in ln), None)
    if proc.returncode != 0 or line is None:
        return None, f"cuobjdump rc={proc.returncode}: {(proc.stderr or proc.stdout).strip()[:300]}"
    return {k: int(v) for k, v in re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", line)}, "cuobjdump"


def _ptxas_facts(log: str) -> dict[str, int]:
    facts = {}
    if m := re.search(r"Used (\d+) registers", log):
        facts["regs"] = int(m.group(1))
    if m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log):
        facts["spill_stores"], facts["spill_loads"] = int(m.group(1)), int(m.group(2))
    if m := re.search(r"(\d+) bytes stack frame", log):
        facts["stack"] = int(m.group(1))
    return facts


def _smem_allocs(ttgir: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of every shared-memory buffer the TTGIR allocates, e.g. ``("a", (3, 128, 64))``.

    The name is the source variable Triton's location info gives the SSA value (``%a_48`` -> ``"a"``); a pipelined
    operand's buffer has rank 3, its leading dimension being the number of stages it is multi-buffered over.
    """
    allocs = []
    for m in re.finditer(r"%(\w+?)(?:_\d+)? = ttg\.local_alloc\b[^\n]*?!ttg\.memdesc<([0-9x]+)x[a-z]", ttgir):
        allocs.append((m.group(1), tuple(int(d) for d in m.group(2).split("x"))))
    return allocs


def _loop_wait_groups(ptx: str) -> list[int]:
    """The ``N`` of every ``cp.async.wait_group N`` inside an innermost loop of the PTX that runs a dot.

    LLVM marks each innermost loop's header label with an ``Inner Loop Header`` comment; the loop runs from there to
    the last branch back to that label. ``N`` is how many cp.async groups the wait leaves in flight: 0 means every
    iteration stalls on its own loads (no overlap of the copies with the dot).
    """
    lines = ptx.splitlines()
    headers, label = {}, None
    for i, line in enumerate(lines):
        if m := re.match(r"(\$L__BB\d+_\d+):", line):
            label = (m.group(1), i)
        if label and "Inner Loop Header" in line:
            headers[label[0]] = label[1]
        elif not m and not line.lstrip().startswith("//"):
            label = None  # the comment belongs to the label only if nothing but comments come between
    dot = re.compile(r"\b(?:wgmma\.mma_async|mma\.sync|fma\.rn\.f32)")
    waits = []
    for name, start in headers.items():
        back = [j for j, line in enumerate(lines) if j > start and re.search(rf"\bbra(?:\.uni)?\s+\{name};", line)]
        body = lines[start : max(back, default=start)]
        if any(dot.search(line) for line in body):
            waits += [int(n) for n in re.findall(r"cp\.async\.wait_group\s+(\d+)", "\n".join(body))]
    return waits


def compile_variant(v: Variant) -> dict:
    """Compile ``v`` for ``sm_<cap>`` and return what the test checks; ``{"error": traceback}`` if it fails."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.runtime.jit import JITFunction

        module, name = v.kernel.split(":")
        fn = getattr(importlib.import_module(module), name)
        if not isinstance(fn, JITFunction):
            raise TypeError(
                f"{v.kernel} is a {type(fn).__name__}, not a JITFunction: the worker imported it before init_worker "
                "unset TRITON_INTERPRET (spawn re-imports the __main__ script: it must not import the kernels)"
            )
        params = [p for p, _ in v.signature]
        if params != list(fn.arg_names):
            raise ValueError(f"the test's parameters {params} do not match {v.kernel}{tuple(fn.arg_names)}")
        src = ASTSource(
            fn,
            dict(v.signature),
            {(params.index(k),): val for k, val in v.constexprs},
            attrs={(params.index(k),): [["tt.divisibility", 16]] for k in v.aligned},
        )
        options = {"num_warps": v.num_warps}
        if v.num_stages is not None:
            options["num_stages"] = v.num_stages
        log = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            k = triton.compile(src, target=GPUTarget("cuda", v.cap, 32), options=options)
        seconds = time.perf_counter() - start
        ptx, cubin = k.asm.get("ptx", ""), k.asm.get("cubin", b"")
        ptxas = _ptxas_facts(log.getvalue())
        usage, usage_source = _res_usage(cubin) if cubin else (None, "no cubin")
        if usage is not None:
            regs, regs_source = usage.get("REG"), "cuobjdump"
        else:
            regs, regs_source = ptxas.get("regs"), f"ptxas -v log ({usage_source})"
        return {
            "compile_s": round(seconds, 2),
            "ptx_bytes": len(ptx),
            "cubin_bytes": len(cubin),
            "shared": int(k.metadata.shared),  # dynamic shared memory Triton requests at launch
            "static_shared": (usage or {}).get("SHARED", 0),  # reserved by ptxas in the cubin itself
            "regs": regs,
            "regs_source": regs_source if regs is not None else f"none ({usage_source}; no ptxas log)",
            "ptxas_regs": ptxas.get("regs"),
            "local": (usage or {}).get("LOCAL"),
            "stack": (usage or {}).get("STACK", ptxas.get("stack")),
            "spill_stores": ptxas.get("spill_stores"),
            "spill_loads": ptxas.get("spill_loads"),
            # distinct tensor-core instructions, e.g. "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
            "mma": sorted(set(re.findall(r"\b(?:wgmma\.mma_async|mma\.sync)[\w.]*", ptx))),
            "cp_async": "cp.async" in ptx,
            "smem_allocs": _smem_allocs(k.asm.get("ttgir", "")),
            "loop_wait_groups": _loop_wait_groups(ptx),
        }
    except BaseException:  # noqa: B036 -- a compiler error must come back as text, not break the pool
        return {"error": traceback.format_exc()}
