"""``python -m bench --out results``: the project's main job, the backbone runtime table (see :mod:`bench.backbone`).

Writes ``<out>/backbone_runtime.csv`` and prints the table and the CSV's path to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .backbone import MODELS, BenchConfig, run_backbone, write_rows
from .kernels import DENSITIES, SHAPES, run_kernels, write_kernel_rows

#: Full-run defaults; ``--quick`` swaps in the tiny ones (smoke tests), explicit options override either.
DEFAULTS = {"size": (512, 1024), "repeats": 3, "warmup": 1}
QUICK = {"size": (64, 128), "repeats": 1, "warmup": 0}


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"fraction must be in [0, 1], got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--size``, ``--repeats`` and ``--warmup`` are resolved against ``--quick``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Backbone runtime of dense OS8/OS16/OS32 and adaptive 8->32 ResNets, side by side.",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    parser.add_argument("--model", choices=MODELS, default="resnet101", help="torchvision model (random weights)")
    parser.add_argument(
        "--size",
        type=_positive,
        nargs=2,
        metavar=("H", "W"),
        help=f"input size (default: {DEFAULTS['size'][0]} {DEFAULTS['size'][1]})",
    )
    parser.add_argument(
        "--fractions",
        type=_fraction,
        nargs="+",
        default=[0.3],
        help="level-0 area fractions of the adaptive rows (default: 0.3)",
    )
    parser.add_argument("--repeats", type=_positive, help=f"timed calls per row (default: {DEFAULTS['repeats']})")
    parser.add_argument("--warmup", type=_non_negative, help=f"untimed calls first (default: {DEFAULTS['warmup']})")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, input and keep mask (default: 0)")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available, else cpu")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: size {QUICK['size'][0]}x{QUICK['size'][1]}, repeats {QUICK['repeats']}, "
        f"warmup {QUICK['warmup']}",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--suite",
        choices=("all", "backbone", "kernels"),
        default="all",
        help="backbone: whole backbones (backbone_runtime.csv); kernels: single layers, sparse vs dense "
        "(kernel_runtime.csv); all: both (default)",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the bench, write the CSV, print the table.

    Args:
        argv: command-line arguments without the program name; None reads ``sys.argv``.

    Returns:
        Path of the first CSV written (``backbone_runtime.csv`` unless only ``--suite kernels`` ran).
    """
    args = parse_args(argv)
    paths = []
    if args.suite in ("all", "backbone"):
        paths.append(_backbone(args))
    if args.suite in ("all", "kernels"):
        paths.append(_kernels(args))
    sys.stdout.flush()
    return paths[0]


def _show(table: pd.DataFrame, path: Path, header: str) -> None:
    shown = table.drop(columns=[c for c in table.columns if c.endswith("_version") or c == "timestamp"])
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.float_format", "{:.4g}".format):
        print(header)
        print(shown.to_string(index=False))
    print(f"wrote {path}")


def _backbone(args: argparse.Namespace) -> Path:
    config = BenchConfig(
        model=args.model,
        height=args.size[0],
        width=args.size[1],
        fractions=tuple(args.fractions),
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        device=args.device,
    )
    rows = run_backbone(config, progress=not args.no_progress)
    path, table = write_rows(rows, args.out)
    r = rows[0]
    _show(
        table,
        path,
        f"{r.timestamp}  {r.device}  torch {r.torch_version}  torchvision {r.torchvision_version}  "
        f"triton {r.triton_version or '-'}  adatriton {r.adatriton_version}",
    )
    return path


def _kernels(args: argparse.Namespace) -> Path:
    shapes, densities = SHAPES, DENSITIES
    if args.quick:  # an 8x16 grid and two densities: seconds on the CPU
        shapes = tuple(
            (f"{k}x{k}-{ci // 4}-{co // 4}", ci // 4, co // 4, k, o, 8, 16) for _, ci, co, k, o, _, _ in SHAPES
        )
        densities = (0.3, 1.0)
    rows = run_kernels(args.device, None, args.repeats, args.warmup, densities, shapes, not args.no_progress)
    path, table = write_kernel_rows(rows, args.out)
    _show(table, path, f"single layers on {rows[0].device}, {rows[0].dtype}")
    return path


if __name__ == "__main__":
    main()
