"""``python -m bench [SUITE ...]`` (console script ``adatriton-bench``): run benchmark suites, write
``<out>/<suite>.csv`` (rows merged by key), ``<out>/<suite>_summary.md`` and ``<out>/<suite>_*.png``.
``python -m bench gpu-check [--dry-run]`` runs the GPU check instead (:mod:`bench._gpu_check`).

Without a suite it runs ``table2``. Without CUDA the run is ``--quick`` (CPU-sized, a few minutes on 2 cores)
unless ``--full`` is given; on CUDA it is the full run unless ``--quick`` is given. Explicit options override the
suite's quick / full defaults. Progress goes to stderr; each suite's summary and file paths to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ._cli import (
    DTYPES,
    add_backends,
    add_device,
    add_dtype,
    add_iters,
    add_model,
    fraction,
    non_negative_int,
    output_stride,
    positive_int,
)
from ._report import write_reports
from ._suite import Context, Options, load_suite, suite_names

DEFAULT_SUITES = ("table2",)


def build_parser() -> argparse.ArgumentParser:
    """The command line (``python -m bench --help``)."""
    names = suite_names()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Runtime and multiply-add benchmarks of adaptive vs dense networks; one CSV, a markdown "
        "summary and plots per suite.",
    )
    p.add_argument(
        "suites",
        nargs="*",
        metavar="SUITE",
        help=f"suites to run, of {names} (default: table2); `python -m bench gpu-check` runs the GPU check instead",
    )
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=None, help="CPU-sized run (default without CUDA)")
    mode.add_argument("--full", action="store_true", help="full-size run (default with CUDA)")
    add_device(p)
    add_dtype(p, None, "default: fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--batch", type=positive_int, help="images per call (default 1)")
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), help="input size (suite default)")
    p.add_argument("--warmup", type=non_negative_int, help="untimed calls per measurement (full: 10)")
    add_iters(p, "timed calls per measurement (full: 10)")
    p.add_argument("--fractions", type=fraction, nargs="+", help="level-0 area fractions of the adaptive rows")
    add_model(p)
    p.add_argument("--heads", nargs="+", choices=("fcn", "deeplabv3", "deeplabv3plus"), help="segmentation heads")
    p.add_argument(
        "--conversions",
        "--output-stride",
        dest="conversions",
        nargs="+",
        type=output_stride,
        choices=("8->32", "8->16"),
        metavar="CONVERSION",
        help="adaptive output strides: 8to32, 8to16 (8:32 and a quoted '8->32' read the same)",
    )
    p.add_argument("--masks", nargs="+", choices=("synthetic", "edges"), help="level-map sources")
    add_backends(p, "adaptive backends (auto = per-layer dispatcher); triton on the CPU only when named here")
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None, help="channels-last (default on)"
    )
    p.add_argument("--compile", action="store_true", default=None, help="time torch.compile-d callables")
    p.add_argument("--seed", type=int, help="weights, inputs and synthetic masks (default 0)")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def resolve(args: argparse.Namespace, suite) -> Options:
    """The suite's :class:`Options`: base defaults, then its quick / full defaults, then the explicit options."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    quick = bool(args.quick) if args.quick or args.full else device.type != "cuda"
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    base = Options(device=device, dtype=dtype, quick=quick, out=args.out, progress=not args.no_progress)
    given = {
        name: getattr(args, name)
        for name in (
            "batch",
            "warmup",
            "iters",
            "fractions",
            "backbones",
            "heads",
            "conversions",
            "masks",
            "backends",
            "channels_last",
            "compile",
            "seed",
        )
    }
    given["size"] = tuple(args.size) if args.size else None
    given["backends_given"] = True if args.backends else None
    return base.merged(suite.quick if quick else suite.full, given)


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """Run the suites named in ``argv`` (see the module docstring).

    Args:
        argv: arguments without the program name; None reads ``sys.argv``. ``gpu-check ...`` runs the GPU check.

    Returns:
        ``{suite: {"csv", "summary", "plots", "table", "seconds"}}``; for ``gpu-check``:
        ``{"gpu-check": {"returncode": status}}``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gpu-check"]:
        from ._gpu_check import main as gpu_check

        return {"gpu-check": {"returncode": gpu_check(argv[1:])}}
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name in suite_names():
            try:
                print(f"{name:10s} {load_suite(name).description}")
            except (ValueError, ImportError) as err:
                print(f"{name:10s} (unavailable: {err})")
        return {}
    names = args.suites or list(DEFAULT_SUITES)
    try:
        suites = [load_suite(name) for name in names]
    except ValueError as err:
        parser.error(str(err))
    results = {}
    for suite in suites:
        opts = resolve(args, suite)
        if opts.device.type == "cpu":
            # Random weights can drive activations into denormal floats, which x86 computes orders of magnitude
            # slower; trained networks do not live there, so flush them (dense and adaptive rows alike).
            torch.set_flush_denormal(True)
        else:
            torch.backends.cudnn.benchmark = True  # the dense references get cuDNN's best algorithm
        ctx = Context(suite.name, opts)
        start = time.perf_counter()
        rows = list(suite.run(ctx))
        seconds = time.perf_counter() - start
        report = write_reports(rows, suite.name, opts.out, ctx.notes, suite.references, suite.summary, suite.plot)
        report["seconds"] = seconds
        results[suite.name] = report
        print(report["summary"].read_text())
        print(f"{suite.name}: {len(rows)} rows in {seconds:.0f} s ({'quick' if opts.quick else 'full'} run)")
        print(f"wrote {report['csv']}, {report['summary']}" + "".join(f", {p}" for p in report["plots"]))
        sys.stdout.flush()
    return results


def cli() -> int:
    """The ``adatriton-bench`` console script: :func:`main` on ``sys.argv``; exit status 0 (``gpu-check``: its
    own)."""
    return main().get("gpu-check", {}).get("returncode", 0)


if __name__ == "__main__":
    sys.exit(cli())
