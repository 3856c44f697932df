"""Compiled-kernel report per adaptive conv of a converted model, without a GPU.

``python -m adatriton.tools.kernel_report --model resnet101 --conversion 8to32 --size 1024 2048 --dtype float16
--arch 90 --out report.csv`` converts the torchvision model, runs one forward pass on the CPU with the triton
backend while :func:`adatriton.kernels.conv.record_launches` records every conv launch as the launcher would
specialise it for the GPU (``--arch`` 90 or 80, ``--sms`` SMs: 132 and 108 by default; the weights' real strides,
the dtype, the epilogue flags, the default config for that GPU or the tuned one of ``--cache``), compiles each
distinct specialisation ahead of time (``triton.compile`` for ``sm_<arch>``, in worker processes) and writes one CSV
row per conv: :data:`COLUMNS`.

What the columns measure (Triton's TTGIR, the PTX and the SASS of ``cuobjdump -sass``):

- ``registers``, ``spill_bytes`` (spill stores + loads of ptxas ``-v``), ``shared_bytes`` (Triton's dynamic request).
- ``a_buffers``, ``b_buffers``: shared-memory copies of the A (gathered rows) and B (weight) tiles the pipeliner
  allocates (0: the operand is not staged through shared memory by the pipeliner).
- ``loop_wait_group``: the smallest ``cp.async.wait_group N`` in the dot loop (copies left in flight; 0 stalls
  every iteration on its own loads; empty when the loop has none).
- ``mma_per_iter``, ``instructions_per_iter``, ``barriers_per_iter`` (``BAR``), ``shuffles_per_iter`` (``SHFL``):
  counted in the innermost SASS loop that runs the dot (per warp and iteration, i.e. per ``BLOCK_K`` step of one
  tap).
- ``tiles``, ``waves``: output tiles of the launch and ``tiles / sms``.

The recording forward runs in float32 in the Triton interpreter (``TRITON_INTERPRET=1``, set for a child process
when this process does not have it); the conv kernels are recorded, not run, as launches in ``--dtype`` (their
outputs are zeros: the report is about shapes only). The level map is :func:`adatriton.masks.synthetic` with
``--fraction`` of level-0 tiles.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib
import io
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import torch

from .. import masks
from ..kernels import conv
from ..models.convert import convert
from ..runtime import autotune
from .cli import ADAPTIVE_OUTPUT_STRIDES, DTYPES, MODELS, add_dtype_argument, fraction, output_stride, positive_int

__all__ = [
    "COLUMNS",
    "DEFAULT_SMS",
    "compile_kernel",
    "kernel_rows",
    "loop_stats",
    "main",
    "record_model",
    "write_csv",
]

#: SMs per GPU by compute capability: H100 SXM 132, A100 108.
DEFAULT_SMS = {90: 132, 80: 108}
#: One CSV row per conv, in this order.
COLUMNS = (
    "layer",
    "arch",
    "config",
    "rows",
    "cin",
    "cout",
    "taps",
    "groups",
    "weight_strides",
    "epilogue",
    "registers",
    "spill_bytes",
    "shared_bytes",
    "a_buffers",
    "b_buffers",
    "loop_wait_group",
    "mma_per_iter",
    "instructions_per_iter",
    "barriers_per_iter",
    "shuffles_per_iter",
    "tiles",
    "sms",
    "waves",
)
CONV_KERNEL = "adatriton.kernels.conv:_conv_elements_kernel"


# ----------------------------------------------------------------------------------------------- compiling
def _tool(name: str) -> str | None:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.access(path, os.X_OK) else None


def _cuobjdump(cubin: bytes, flag: str) -> tuple[str | None, str]:
    """``cuobjdump <flag>`` of ``cubin``: its stdout, or None and the reason."""
    exe = _tool("cuobjdump")
    if exe is None:
        return None, "cuobjdump not found in Triton's wheel"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        proc = subprocess.run([exe, flag, f.name], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"cuobjdump failed: {e!r}"
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        return None, f"cuobjdump rc={proc.returncode}: {(proc.stderr or proc.stdout).strip()[:300]}"
    return proc.stdout, "cuobjdump"


def _res_usage(cubin: bytes) -> tuple[dict[str, int] | None, str]:
    """``cuobjdump -res-usage``: {"REG", "STACK", "SHARED", "LOCAL", ...} of the kernel function, or the reason not."""
    out, source = _cuobjdump(cubin, "-res-usage")
    line = None if out is None else next((ln for ln in out.splitlines() if "REG:" in ln), None)
    if line is None:
        return None, source if out is None else "no REG: line in cuobjdump -res-usage"
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


def smem_allocs(ttgir: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of every shared-memory buffer the TTGIR allocates, e.g. ``("a", (3, 128, 64))``.

    The name is the source variable Triton's location info gives the SSA value (``%a_48`` -> ``"a"``); a pipelined
    operand's buffer has rank 3, its leading dimension being the number of stages it is multi-buffered over.
    """
    allocs = []
    for m in re.finditer(r"%(\w+?)(?:_\d+)? = ttg\.local_alloc\b[^\n]*?!ttg\.memdesc<([0-9x]+)x[a-z]", ttgir):
        allocs.append((m.group(1), tuple(int(d) for d in m.group(2).split("x"))))
    return allocs


def loop_wait_groups(ptx: str) -> list[int]:
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


def loop_stats(sass: str) -> dict[str, int] | None:
    """Instruction counts of the innermost SASS loop that runs the dot (``cuobjdump -sass`` text), or None.

    A loop is a branch back to an address at or above it; of those holding a tensor-core instruction (``HGMMA`` /
    ``HMMA``, else ``FFMA`` for the FMA dots), the shortest. Counted from the target to the branch, ``NOP``
    excluded: ``instructions``, ``mma``, ``barriers`` (``BAR``), ``shuffles`` (``SHFL``), ``shared``
    (``LDS``/``STS``/``LDSM``), ``divisions`` (the reciprocal ``MUFU.RCP`` of an integer division).
    """
    ops = []  # (address, instruction)
    for line in sass.splitlines():
        if m := re.search(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", line):
            ops.append((int(m.group(1), 16), m.group(2).strip()))
    loops = []
    for end, (addr, op) in enumerate(ops):
        if (m := re.search(r"\bBRA\b(?:\.\w+)*\s+(?:`\()?0x([0-9a-f]+)", op)) and int(m.group(1), 16) <= addr:
            target = int(m.group(1), 16)
            start = next(i for i, (a, _) in enumerate(ops) if a >= target)
            loops.append((start, end))
    for pattern in (r"\b(?:HGMMA|HMMA)\.", r"\bFFMA\b"):
        with_dot = [(s, e) for s, e in loops if any(re.search(pattern, ops[i][1]) for i in range(s, e + 1))]
        if with_dot:
            start, end = min(with_dot, key=lambda loop: loop[1] - loop[0])
            body = [op for _, op in ops[start : end + 1] if not re.match(r"(?:@!?U?P\w+\s+)?NOP\b", op)]

            def count(p: str, body=body) -> int:
                return sum(1 for op in body if re.search(p, op))

            return {
                "instructions": len(body),
                "mma": count(pattern),
                "barriers": count(r"\bBAR\."),
                "shuffles": count(r"\bSHFL\."),
                "shared": count(r"\b(?:LDS|STS|LDSM)\b"),
                "divisions": count(r"\bMUFU\.RCP\b"),
            }
    return None


def compile_kernel(
    kernel: str,
    signature: Sequence[tuple[str, str]],
    constexprs: Sequence[tuple[str, object]],
    aligned: Sequence[str],
    cap: int,
    num_warps: int,
    num_stages: int | None,
    sass: bool = True,
) -> dict:
    """Compile a ``@triton.jit`` kernel for ``sm_<cap>`` ahead of time and return the facts about it.

    Needs a process in which Triton's kernels were created without ``TRITON_INTERPRET`` and, for the register and
    spill facts, ``TRITON_DUMP_PTXAS_LOG=1`` with an empty Triton cache (a cache hit runs no ptxas).

    Args:
        kernel: ``"module:function"``.
        signature: every parameter in order, with its Triton type or ``"constexpr"``.
        constexprs: values of the ``"constexpr"`` parameters.
        aligned: parameters specialised as 16-divisible.
        cap: compute capability (80, 90).
        num_warps, num_stages: compile options (``num_stages`` None: Triton's default).
        sass: disassemble the cubin for :func:`loop_stats` (``cuobjdump -sass``: about a third of a compile's
            time for the conv kernel, more than half for densify); False leaves ``"loop"`` None.

    Returns:
        A dict: compile time, sizes, shared memory, registers, spills, MMA instructions, cp.async, the shared
        allocations of the TTGIR, the loop's wait groups and :func:`loop_stats` of the SASS (``"loop"``);
        ``{"error": traceback}`` if it fails.
    """
    import traceback

    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.runtime.jit import JITFunction

        module, name = kernel.split(":")
        fn = getattr(importlib.import_module(module), name)
        if not isinstance(fn, JITFunction):
            raise TypeError(
                f"{kernel} is a {type(fn).__name__}, not a JITFunction: TRITON_INTERPRET was set when it was created"
            )
        params = [p for p, _ in signature]
        if params != list(fn.arg_names):
            raise ValueError(f"the parameters {params} do not match {kernel}{tuple(fn.arg_names)}")
        src = ASTSource(
            fn,
            dict(signature),
            {(params.index(k),): val for k, val in constexprs},
            attrs={(params.index(k),): [["tt.divisibility", 16]] for k in aligned},
        )
        options = {"num_warps": num_warps}
        if num_stages is not None:
            options["num_stages"] = num_stages
        log = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            k = triton.compile(src, target=GPUTarget("cuda", cap, 32), options=options)
        seconds = time.perf_counter() - start
        ptx, cubin = k.asm.get("ptx", ""), k.asm.get("cubin", b"")
        ptxas = _ptxas_facts(log.getvalue())
        usage, usage_source = _res_usage(cubin) if cubin else (None, "no cubin")
        if usage is not None:
            regs, regs_source = usage.get("REG"), "cuobjdump"
        else:
            regs, regs_source = ptxas.get("regs"), f"ptxas -v log ({usage_source})"
        disassembly = _cuobjdump(cubin, "-sass")[0] if cubin and sass else None
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
            "smem_allocs": smem_allocs(k.asm.get("ttgir", "")),
            "loop_wait_groups": loop_wait_groups(ptx),
            "loop": None if disassembly is None else loop_stats(disassembly),
        }
    except BaseException:  # noqa: B036 -- a compiler error must come back as text
        return {"error": traceback.format_exc()}


def _worker(path_in: str, path_out: str) -> None:
    """Compile every job pickled in ``path_in`` (a list of :func:`compile_kernel` argument tuples), in order, and
    pickle the list of results to ``path_out``."""
    with open(path_in, "rb") as f:
        jobs = pickle.load(f)
    results = [compile_kernel(*job) for job in jobs]
    with open(path_out, "wb") as f:
        pickle.dump(results, f)


def compile_many(jobs: Sequence[tuple], workers: int = 2) -> list[dict]:
    """:func:`compile_kernel` of every job, in ``workers`` child processes that start without
    ``TRITON_INTERPRET`` (so the kernels are real ``JITFunction`` there), with fresh Triton caches and the ptxas
    log on. Results in job order."""
    workers = max(1, min(workers, len(jobs)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DUMP_PTXAS_LOG"] = "1"
    with tempfile.TemporaryDirectory(prefix="kernel-report-") as tmp:
        procs = []
        for w in range(workers):
            chunk = list(jobs[w::workers])
            path_in, path_out = os.path.join(tmp, f"in{w}.pkl"), os.path.join(tmp, f"out{w}.pkl")
            with open(path_in, "wb") as f:
                pickle.dump(chunk, f)
            cmd = [sys.executable, "-m", "adatriton.tools.kernel_report", "--compile-worker", path_in, path_out]
            procs.append((subprocess.Popen(cmd, env={**env, "TRITON_CACHE_DIR": os.path.join(tmp, f"cache{w}")}),
                          path_out))  # fmt: skip
        results: list[dict | None] = [None] * len(jobs)
        for w, (proc, path_out) in enumerate(procs):
            if proc.wait() != 0 or not os.path.exists(path_out):
                raise RuntimeError(f"kernel compile worker {w} failed (exit status {proc.returncode})")
            with open(path_out, "rb") as f:
                for i, r in enumerate(pickle.load(f)):
                    results[w + i * workers] = r
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- recording
@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What :func:`record_model` builds and records (the CLI's options)."""

    model: str = "resnet101"
    conversion: str = "8->32"
    size: tuple[int, int] = (1024, 2048)
    batch: int = 1
    dtype: str = "fp16"
    arch: int = 90
    sms: int | None = None
    fraction: float = 0.3
    seed: int = 0
    weights: str = "as-built"  # "as-built" (torchvision's NCHW), "channels-last"
    cache: str | None = None  # a tuned autotune cache file (JSON) of the GPU


def _tuned_chooser(path: str) -> Callable:
    """``choose`` for :func:`~adatriton.kernels.conv.record_launches`: the config of ``path``'s tuned cache."""
    import json

    with open(path) as f:
        gpu = json.load(f).get("gpu", "")
    cache = autotune.AutotuneCache(gpu, path)

    def choose(rows, cin_g, cout_g, taps, groups, dtype, gather):
        return cache.get(autotune.conv_key(rows, cin_g, cout_g, taps, groups, dtype, gather))

    return choose


def record_model(opts: ReportOptions) -> list[tuple[str, object]]:
    """``(layer name, LaunchRecord)`` of every conv launch of one forward of the converted model, in order.

    Needs ``TRITON_INTERPRET=1`` in this process (the triton backend on the CPU); the conv kernels are recorded,
    not run.
    """
    import torchvision

    torch.manual_seed(opts.seed)
    model = getattr(torchvision.models, opts.model)()
    # float32 on the CPU (half-precision CPU convs are orders of magnitude slower), recorded as the dtype asked for
    net = convert(model, opts.conversion, backend="triton").eval()
    if opts.weights == "channels-last":
        net = net.to(memory_format=torch.channels_last)
    names = {}
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            names.setdefault(module.weight.data_ptr(), name)
    h, w = opts.size
    levels = masks.synthetic(opts.batch, h, w, opts.conversion, opts.fraction, kind="blobs", seed=opts.seed)
    x = torch.zeros(opts.batch, 3, h, w)
    sms = opts.sms or DEFAULT_SMS.get(opts.arch, 132)
    choose = _tuned_chooser(opts.cache) if opts.cache else None
    with torch.no_grad(), conv.record_launches(opts.arch, sms, choose, DTYPES[opts.dtype]) as recorder:
        net(x, levels)
    return [(names.get(r.weight_ptr, "?"), r) for r in recorder.launches]


# ----------------------------------------------------------------------------------------------- rows
def _row(name: str, record, facts: dict, arch: int, sms: int) -> dict:
    c = dict(record.constexprs)
    cfg = record.config
    bm, bn, bk = cfg[:3]
    # The pipelined buffers by the kernel's variable names (a, b), which also tells square tiles' apart
    allocs = [(name, shape) for name, shape in facts.get("smem_allocs", []) if len(shape) == 3]
    a_buf = sum(shape[0] for name, shape in allocs if name == "a" and shape[1:] == (bm, bk))
    b_buf = sum(shape[0] for name, shape in allocs if name == "b" and shape[1:] == (bk, bn))
    waits = facts.get("loop_wait_groups") or []
    loop = facts.get("loop") or {}
    spills = (facts.get("spill_stores") or 0) + (facts.get("spill_loads") or 0)
    flags = [f for f in ("HAS_SHIFT", "HAS_SCALE", "HAS_BN", "HAS_RES") if c.get(f)]
    if c.get("ACT"):
        flags.append(conv.ACTIVATIONS[c["ACT"]].upper())
    # the module's weight strides, then (n, c, y, x) as the kernel reads them (a launcher copy may differ)
    strides = "x".join(map(str, record.weight_stride)) + " read " + "x".join(map(str, record.read_stride[1:]))
    return {
        "layer": name,
        "arch": f"sm_{arch}",
        "config": "x".join(map(str, cfg[:3])) + f"-s{cfg[3]}-w{cfg[4]}" + ("-p" if cfg.persistent else ""),
        "rows": record.rows,
        "cin": record.cin_g * record.groups,
        "cout": record.cout_g * record.groups,
        "taps": record.taps,
        "groups": record.groups,
        "weight_strides": strides + ("" if "w_ptr" in record.aligned else " unaligned"),
        "epilogue": "+".join(f.removeprefix("HAS_").lower() for f in flags) or "-",
        "registers": facts.get("regs"),
        "spill_bytes": spills,
        "shared_bytes": facts.get("shared"),
        "a_buffers": a_buf,
        "b_buffers": b_buf,
        "loop_wait_group": min(waits) if waits else "",
        "mma_per_iter": loop.get("mma", ""),
        "instructions_per_iter": loop.get("instructions", ""),
        "barriers_per_iter": loop.get("barriers", ""),
        "shuffles_per_iter": loop.get("shuffles", ""),
        "tiles": record.tiles,
        "sms": sms,
        "waves": round(record.tiles / sms, 2),
    }


def kernel_rows(launches: Sequence[tuple[str, object]], arch: int, sms: int, workers: int = 2) -> list[dict]:
    """One row (:data:`COLUMNS`) per recorded launch; each distinct specialisation is compiled once."""
    keys, jobs = {}, []
    for _, r in launches:
        job = (CONV_KERNEL, r.signature, r.constexprs, r.aligned, arch, r.num_warps, r.num_stages)
        if job not in keys:
            keys[job] = len(jobs)
            jobs.append(job)
    results = compile_many(jobs, workers)
    for job, facts in zip(jobs, results):
        if "error" in facts:
            raise RuntimeError(f"compiling {dict(job[2])} for sm_{arch} failed:\n{facts['error']}")
    return [_row(name, r, results[keys[(CONV_KERNEL, r.signature, r.constexprs, r.aligned, arch, r.num_warps,
                                         r.num_stages)]], arch, sms) for name, r in launches]  # fmt: skip


def write_csv(rows: Sequence[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m adatriton.tools.kernel_report",
        description="Per adaptive conv of a converted model: the Triton kernel the launcher would run on a GPU, "
        "compiled ahead of time here (registers, spills, shared memory, pipelining, SASS loop counts, waves).",
    )
    p.add_argument("--model", choices=MODELS, default="resnet101", help="torchvision backbone (default: %(default)s)")
    p.add_argument(
        "--conversion",
        "--output-stride",
        dest="conversion",
        type=output_stride,
        choices=ADAPTIVE_OUTPUT_STRIDES,
        default="8->32",
        help="adaptive output stride (default: %(default)s)",
    )
    p.add_argument("--size", nargs=2, type=positive_int, default=(1024, 2048), metavar=("H", "W"))
    p.add_argument("--batch", type=positive_int, default=1)
    add_dtype_argument(p, default="fp16")
    p.add_argument("--arch", type=int, choices=sorted(DEFAULT_SMS), default=90, help="compute capability")
    p.add_argument("--sms", type=positive_int, default=None, help="SM count (default: 132 for 90, 108 for 80)")
    p.add_argument("--fraction", type=fraction, default=0.3, help="level-0 fraction of the synthetic level map")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--weights",
        choices=("as-built", "channels-last"),
        default="as-built",
        help="conv weights as torchvision builds them and convert leaves them (NCHW), or model.to(channels_last)",
    )
    p.add_argument("--cache", default=None, help="a tuned autotune cache file (JSON) to take configs from")
    p.add_argument("--workers", type=positive_int, default=2, help="compile processes (default: %(default)s)")
    p.add_argument("--out", required=True, help="CSV file to write")
    return p


def _record_in_child(opts: ReportOptions) -> list[tuple[str, object]]:
    """:func:`record_model` in a child process started with ``TRITON_INTERPRET=1``."""
    with tempfile.TemporaryDirectory(prefix="kernel-report-") as tmp:
        path_in, path_out = os.path.join(tmp, "opts.pkl"), os.path.join(tmp, "launches.pkl")
        with open(path_in, "wb") as f:
            pickle.dump(opts, f)
        cmd = [sys.executable, "-m", "adatriton.tools.kernel_report", "--record-worker", path_in, path_out]
        subprocess.run(cmd, env={**os.environ, "TRITON_INTERPRET": "1"}, check=True)
        with open(path_out, "rb") as f:
            return pickle.load(f)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--compile-worker"], ["--record-worker"]):
        if argv[0] == "--compile-worker":
            _worker(argv[1], argv[2])
        else:
            with open(argv[1], "rb") as f:
                launches = record_model(pickle.load(f))
            with open(argv[2], "wb") as f:
                pickle.dump(launches, f)
        return 0
    args = _parser().parse_args(argv)
    sms = args.sms or DEFAULT_SMS[args.arch]
    opts = ReportOptions(
        model=args.model,
        conversion=args.conversion,
        size=tuple(args.size),
        batch=args.batch,
        dtype=args.dtype,
        arch=args.arch,
        sms=sms,
        fraction=args.fraction,
        seed=args.seed,
        weights=args.weights,
        cache=args.cache,
    )
    start = time.perf_counter()
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    launches = record_model(opts) if interpreting else _record_in_child(opts)
    rows = kernel_rows(launches, args.arch, sms, args.workers)
    write_csv(rows, args.out)
    distinct = len({(r.signature, r.constexprs, r.aligned, r.num_warps, r.num_stages) for _, r in launches})
    print(
        f"{len(rows)} convs, {distinct} distinct kernels compiled for sm_{args.arch} in "
        f"{time.perf_counter() - start:.0f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
