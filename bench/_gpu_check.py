"""``python -m bench gpu-check`` (``make gpu-check``): everything that needs a GPU, in one command that fits in
9 minutes on one H100 / H200 with cold Triton caches and keeps going past a failing step.

It runs with the python it is started with (the GPU machine's preinstalled torch, torchvision and triton; no venv, no
ruff, no registry). The steps (:func:`default_steps`), in the order of issue 20, each a subprocess with its own
timeout, budgeted so that the timeouts add up to :data:`STEPS_BUDGET_S` and the whole run stays within
:data:`BUDGET_S` even when every step times out. Each box is planned from the Triton compiles of its step (distinct
kernel specializations with an H100's default configs, counted on the CPU; about 1.15 s each, plus about 10 s of
process and CUDA start-up):

1. ``environment`` (10 s, 0 compiles): GPU, driver, CUDA, library versions (:mod:`bench._gpu_steps`);
2. ``backends`` (40 s, 8): a tiny converted ResNet on every backend against the torch backend;
3. ``l2_bandwidth`` (20 s, 3): reads of a 32 MB L2-resident buffer from every SM;
4. ``convs`` (60 s, 4): the default config against cuDNN on ResNet-101's adaptive layer shapes at level-0
   fraction 0.3, NCHW and channels-last weights (TFLOP/s, fraction of cuDNN);
5. ``memcheck`` / ``racecheck`` (45 s each, 1 each): ``compute-sanitizer`` on a small forward (default / persistent
   config), when the tool is there;
6. ``cuda_graphs`` (70 s, 8): eager against CUDA-graph forward at 512x1024 and 1024x2048;
7. ``table2`` (150 s, 12): the ``table2`` suite 8->32 at 1024x2048 fp16, fractions 0.1 / 0.3 / 0.5;
8. ``gpu_tests`` (40 s) and ``autotune`` (30 s of its 119 compiles; saved per key, so a timeout keeps what was
   tuned). What does not fit (:data:`NOT_RUN`: calibration, the full layers suite) is said in the summary.

Every step runs with ``TRITON_INTERPRET=0`` and ``ADATRITON_CACHE_DIR=<out>/gpu_check/cache``. Everything is written
under ``<out>/gpu_check/`` (``gpu_check.log``: per step the command, status, seconds and the tail of its output;
``gpu_check/<step>.txt``: each step's output; the steps' JSON and CSV files) and packed at the end into
``<out>/gpu_check.tar.gz`` beside a short ``<out>/gpu_check_summary.txt`` (:func:`summary`). Exit status 0 when every
step passed (or when there is no CUDA device: nothing is run), 1 otherwise. ``--dry-run`` lists the steps and runs
nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ARCHIVE",
    "BUDGET_S",
    "NOT_RUN",
    "STEPS_BUDGET_S",
    "SUMMARY",
    "Step",
    "StepResult",
    "default_steps",
    "main",
    "pack",
    "run_steps",
    "summary",
]

#: The whole check, seconds (9 minutes).
BUDGET_S = 540.0
#: What the steps' timeouts add up to; the rest is start-up, the kill grace periods and the report.
STEPS_BUDGET_S = 510.0
#: Seconds between SIGTERM and SIGKILL of a step that ran out of time.
KILL_GRACE_S = 5.0
#: Lines of each step's output copied into the log.
TAIL_LINES = 15
#: Where the steps run: the repository root (``tests/``, ``python -m bench``).
ROOT = Path(__file__).resolve().parents[1]
#: The folder under ``--out`` the steps write into; packed into :data:`ARCHIVE` at the end, then removed.
WORK = "gpu_check"
#: The check's results: one archive and one short text summary, both directly under ``--out``.
ARCHIVE = "gpu_check.tar.gz"
SUMMARY = "gpu_check_summary.txt"
#: Steps whose output tail (their tables) the summary repeats.
SUMMARY_TAILS = {"environment": 14, "backends": 6, "l2_bandwidth": 7, "convs": 15, "cuda_graphs": 4}


@dataclass(frozen=True)
class Step:
    """One command of the check.

    Attributes:
        name: short name (file names, the summary).
        argv: the command.
        timeout_s: its time box, seconds.
        what: one line for the log.
        env: extra environment variables.
    """

    name: str
    argv: tuple[str, ...]
    timeout_s: float
    what: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class StepResult:
    """What one step did.

    Attributes:
        step: the step.
        status: ``passed``, ``failed`` (non-zero exit), ``timeout`` (killed at its time box), ``error`` (could not
            start) or ``skipped`` (no budget left).
        returncode: the exit status (None unless it exited).
        seconds: wall time.
        output: the file with its stdout and stderr.
    """

    step: Step
    status: str
    returncode: int | None
    seconds: float
    output: Path


def default_steps(out: Path, python: str = sys.executable) -> list[Step]:
    """The check's steps (see the module docstring), in the order of issue 20, writing under ``out``; their timeouts
    add up to :data:`STEPS_BUDGET_S`."""
    out = Path(out)
    bench = [python, "-m", "bench"]
    steps = [python, "-m", "bench._gpu_steps"]
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    sizes = ["--size", "1024", "2048"]
    common = ["--device", "cuda", "--dtype", "fp16", "--out", str(out), "--no-progress"]
    where = ["--out", str(out)]
    sanitizer = _sanitizer()
    sanitized = [python, "-m", "bench._gpu_steps", "small_forward", *where]
    return [
        Step("environment", (*steps, "environment", *where), 10, "GPU, driver, CUDA and library versions, tools"),
        Step("backends", (*steps, "backends", *where), 40, "a tiny converted ResNet on every backend vs torch"),
        Step("l2_bandwidth", (*steps, "l2_bandwidth", *where), 20, "L2 -> SM reads of a resident 32 MB buffer"),
        Step("convs", (*steps, "convs", *where), 60, "default config vs cuDNN, ResNet-101 layers, NCHW / CL weights"),
        Step(
            "memcheck",
            (sanitizer, "--tool", "memcheck", "--error-exitcode", "1", *sanitized) if sanitizer else _missing(),
            45,
            "compute-sanitizer memcheck of a small forward (default config)",
        ),
        Step(
            "racecheck",
            (sanitizer, "--tool", "racecheck", "--error-exitcode", "1", *sanitized, "--persistent")
            if sanitizer
            else _missing(),
            45,
            "compute-sanitizer racecheck of a small forward (persistent config)",
        ),
        Step("cuda_graphs", (*steps, "cuda_graphs", *where), 70, "eager vs CUDA-graph forward, 512x1024 and 1024x2048"),
        Step(
            "table2",
            (*bench, "table2", "--full", *sizes, *common, "--masks", "synthetic", "--fractions", "0.1", "0.3", "0.5")
            + ("--warmup", "5", "--iters", "10"),
            150,
            "table2 8->32 at 1024x2048 fp16 (synthetic masks, 3 fractions) vs dense OS8 / OS16",
        ),
        Step(
            "gpu_tests",
            (*pytest, "-m", "gpu", f"--junitxml={out / 'gpu_tests.xml'}", "tests"),
            40,
            "GPU-marked tests",
        ),
        Step(
            "autotune",
            (python, "-m", "adatriton.autotune", "--model", "resnet101", *sizes, "--dtype", "float16"),
            30,
            "autotune the ResNet-101 8->32 conv shapes (time-boxed; saved per key)",
        ),
    ]


#: What the check leaves out: it does not fit the 9 minutes after the steps above (said in the summary).
NOT_RUN = (
    "calibrate (python -m adatriton.calibrate --model resnet101 --size 1024 2048 --device cuda): about 70 s",
    "the layers suite at full size (python -m bench layers --full): the convs step measures its shapes at 0.3",
    "autotuning past its 30 s box: the cache keeps the keys tuned so far; run it again for the rest",
)


def _sanitizer() -> str | None:
    """compute-sanitizer on the PATH, beside nvcc or under /usr/local/cuda; None when absent."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for folder in [Path(p).parent for p in filter(None, [shutil.which("nvcc")])] + [Path("/usr/local/cuda/bin")]:
        if (folder / "compute-sanitizer").exists():
            return str(folder / "compute-sanitizer")
    return None


def _missing() -> tuple[str, ...]:
    """The command of a step whose tool is absent: it says so and passes (nothing to check)."""
    return (sys.executable, "-c", "print('compute-sanitizer is not on this machine: not run')")


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's process group (it was started in its own session), SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def run_steps(
    steps: Sequence[Step],
    out: Path,
    budget_s: float = BUDGET_S,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    cwd: Path = ROOT,
) -> list[StepResult]:
    """Run ``steps`` one after the other, whatever the previous ones did, each within its timeout and within what
    is left of ``budget_s`` (less a small reserve for the report); write ``<out>/gpu_check.log``.

    Args:
        steps: what to run.
        out: output folder (``gpu_check.log``, ``gpu_check/<step>.txt``).
        budget_s: the whole run's time box, seconds.
        env: the environment of every step (default: this process's); each step's ``env`` is added.
        log: where progress lines go (they are also written to the log).
        clock: seconds (tests may pass a fake one).
        cwd: where the steps run (default: the repository root).

    Returns:
        One :class:`StepResult` per step, in order.
    """
    out = Path(out)
    (out / "gpu_check").mkdir(parents=True, exist_ok=True)
    log_path = out / "gpu_check.log"
    reserve = min(10.0, 0.05 * budget_s)
    start = clock()
    results: list[StepResult] = []
    with log_path.open("w") as log_file:

        def say(line: str = "") -> None:
            log(line)
            log_file.write(line + "\n")
            log_file.flush()

        say(f"gpu-check {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}: {len(steps)} steps, ")
        say(f"budget {budget_s:.0f} s (steps' time boxes: {sum(s.timeout_s for s in steps):.0f} s), output in {out}")
        for i, step in enumerate(steps, 1):
            output = out / "gpu_check" / f"{step.name}.txt"
            left = budget_s - reserve - (clock() - start)
            timeout = min(step.timeout_s, left)
            say()
            say(f"== [{i}/{len(steps)}] {step.name}: {step.what}")
            say(f"   $ {shlex.join(step.argv)}")
            if timeout < 1:
                say(f"   skipped: {left:.0f} s of the budget left")
                results.append(StepResult(step, "skipped", None, 0.0, output))
                continue
            say(f"   time box {timeout:.0f} s")
            t0 = clock()
            status, code = "error", None
            try:
                with output.open("w") as sink:
                    proc = subprocess.Popen(
                        step.argv,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env={**(os.environ if env is None else env), **step.env},
                        start_new_session=True,
                        cwd=cwd,
                    )
                    try:
                        code = proc.wait(timeout=timeout)
                        status = "passed" if code == 0 else "failed"
                    except subprocess.TimeoutExpired:
                        _kill(proc)
                        status = "timeout"
            except OSError as err:
                output.write_text(f"could not start: {err}\n")
            seconds = clock() - t0
            results.append(StepResult(step, status, code, seconds, output))
            say(f"   -> {status}{'' if code is None else f' (exit {code})'} in {seconds:.1f} s; output: {output}")
            for line in _tail(output):
                say(f"   | {line}")
        say()
        say(f"== summary ({clock() - start:.0f} s of {budget_s:.0f} s)")
        say()
        say("| step | status | seconds | time box | output |")
        say("|---|---|---|---|---|")
        for r in results:
            say(f"| {r.step.name} | {r.status} | {r.seconds:.1f} | {r.step.timeout_s:.0f} | {r.output.name} |")
        csvs = sorted(p.relative_to(out) for p in out.rglob("*.csv"))
        say()
        say("CSVs under " + str(out) + ": " + (", ".join(map(str, csvs)) or "none"))
    return results


def summary(results: Sequence[StepResult], seconds: float, budget_s: float = BUDGET_S) -> str:
    """The short text summary: one line per step, the tables of the measuring steps, what was not run."""
    lines = [f"gpu-check: {sum(r.status == 'passed' for r in results)}/{len(results)} steps passed in "
             f"{seconds:.0f} s of {budget_s:.0f} s; everything else is in {ARCHIVE}", ""]  # fmt: skip
    lines += [f"{r.step.name:13s} {r.status:8s} {r.seconds:6.1f} s of {r.step.timeout_s:3.0f} s" for r in results]
    for r in results:
        keep = SUMMARY_TAILS.get(r.step.name)
        if keep and r.status in ("passed", "failed"):
            lines += ["", f"== {r.step.name}", *_tail(r.output, keep)]
    lines += ["", "not run (does not fit the 9 minutes):", *(f"- {item}" for item in NOT_RUN)]
    return "\n".join(lines) + "\n"


def pack(work: Path, archive: Path, keep: bool = False) -> Path:
    """Pack ``work`` into the gzipped tar ``archive`` (members under ``work``'s name), then remove ``work`` unless
    ``keep``: what comes back from a lent machine must be a few files."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work, arcname=work.name)
    if not keep:
        shutil.rmtree(work)
    return archive


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench gpu-check",
        description="Everything that needs a GPU in one run of at most 9 minutes (environment, backends, L2 "
        "bandwidth, convs vs cuDNN, compute-sanitizer, CUDA graphs, table2, GPU tests, autotuning); keeps going past "
        f"a failing step; writes <out>/{ARCHIVE} and <out>/{SUMMARY}.",
    )
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    p.add_argument("--cache-dir", type=Path, help=f"ADATRITON_CACHE_DIR of the steps (default: <out>/{WORK}/cache)")
    p.add_argument("--dry-run", action="store_true", help="list the steps and their time boxes; run nothing")
    p.add_argument("--keep", action="store_true", help=f"keep <out>/{WORK} (the archive's contents) unpacked")
    return p


def main(argv: Sequence[str] | None = None, cuda_available: Callable[[], bool] | None = None) -> int:
    """The ``gpu-check`` command.

    Args:
        argv: arguments after ``gpu-check``.
        cuda_available: whether a CUDA device is visible (default ``torch.cuda.is_available``).

    Returns:
        The exit status: 0 when every step passed, or when there is no CUDA device (nothing is run); else 1.
    """
    args = _parser().parse_args(argv)
    args.out = args.out.resolve()
    work = args.out / WORK
    steps = default_steps(work)
    if args.dry_run:
        print(f"gpu-check: {len(steps)} steps, time boxes {sum(s.timeout_s for s in steps):.0f} s of {BUDGET_S:.0f}")
        for step in steps:
            print(f"  {step.name:12s} {step.timeout_s:4.0f} s  {shlex.join(step.argv)}")
        print("not run (does not fit the 9 minutes):")
        for item in NOT_RUN:
            print(f"  {item}")
        return 0
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available
    if not cuda_available():
        print("gpu-check: no CUDA device is visible; nothing was run (run it on a machine with an H100 / H200)")
        return 0
    env = {
        **os.environ,
        "TRITON_INTERPRET": "0",
        "ADATRITON_CACHE_DIR": str(args.cache_dir or work / "cache"),
        "PYTHONUNBUFFERED": "1",
    }
    start = time.monotonic()
    results = run_steps(steps, work, BUDGET_S, env)
    text = summary(results, time.monotonic() - start)
    (work / SUMMARY).write_text(text)
    (args.out / SUMMARY).write_text(text)
    pack(work, args.out / ARCHIVE, keep=args.keep)
    print(f"gpu-check: {args.out / SUMMARY} and {args.out / ARCHIVE}")
    return 0 if all(r.status == "passed" for r in results) else 1
