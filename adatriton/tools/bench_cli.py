"""The ``adatriton-bench`` console script: ``python -m bench`` of the repository this package was installed from.

The benchmarks ship with the repository (``bench/`` beside ``adatriton/``), not in the wheel: a top-level package
named ``bench`` in site-packages would claim a name that any project may use. From an editable install of a clone the
script finds that clone's ``bench/`` and runs it; from a wheel it says where the benchmarks are and exits with 2.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

__all__ = ["bench_dir", "cli"]

#: The directory that holds ``adatriton/``: a clone's root for an editable install, site-packages for a wheel.
ROOT = Path(__file__).resolve().parents[2]


def bench_dir(root: Path | None = None) -> Path | None:
    """The ``bench/`` package beside ``adatriton/`` under ``root`` (default :data:`ROOT`), or ``None`` where there is
    none (a wheel)."""
    path = (ROOT if root is None else root) / "bench"
    return path if (path / "__main__.py").is_file() else None


def cli() -> int:
    """Run ``python -m bench`` on ``sys.argv`` from the clone's root; its exit status (0; ``gpu-check``: its own).

    Returns:
        The exit status; 2, with a message on stderr, where no ``bench/`` sits beside the package.
    """
    bench = bench_dir()
    if bench is None:
        print(
            f"adatriton-bench: no bench/ beside the installed package (looked in {ROOT}). The benchmarks ship with "
            "the repository, not with the package: clone it, run `make env` there and then `python -m bench` "
            "(or adatriton-bench) from its root.",
            file=sys.stderr,
        )
        return 2
    # The clone's root goes first so that `bench` is this clone's package, whatever else the path holds.
    sys.path.insert(0, str(bench.parent))
    main = importlib.import_module("bench.__main__")
    if Path(main.__file__).resolve().parent != bench:
        print(f"adatriton-bench: `bench` was already imported from {main.__file__}, not {bench}", file=sys.stderr)
        return 2
    return main.cli()


if __name__ == "__main__":
    sys.exit(cli())
