"""What a suite is, what it gets (:class:`Options`, :class:`Context`), and how suites are found.

A suite is a module ``bench/<name>.py`` (no leading underscore) that defines ``SUITE = Suite(...)``; its
``run(ctx)`` returns :class:`~bench._schema.Row` objects, which the CLI merges into ``<out>/<name>.csv`` and turns
into ``<out>/<name>_summary.md`` and plots. Modules whose names start with ``_`` are the shared machinery.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from adatriton.runtime.backend import triton_runs_on

from ._measure import device_name, timestamp, versions
from ._report import plot_lines, summary
from ._schema import Row

__all__ = ["Context", "Options", "Suite", "load_suite", "suite_names"]


@dataclass(frozen=True)
class Options:
    """A run's settings after the CLI's values, the suite's (quick or full) defaults and these defaults merged.

    Attributes:
        device: where the networks run.
        dtype: parameters and inputs (``float32``, ``float16``, ``bfloat16``).
        batch: images per call.
        size: ``(H, W)`` of the input images.
        warmup, iters: untimed and timed calls per measurement (the paper: 10 and 10).
        fractions: level-0 area fractions of the adaptive rows.
        backbones, heads: models to build (``resnet50/101/152``; ``fcn``, ``deeplabv3``, ``deeplabv3plus``).
        conversions: adaptive output strides (``"8->32"``, ``"8->16"``).
        masks: level-map sources (``synthetic``, ``edges``).
        backends: adaptive backends (``auto``, ``torch``, ``dense``, ``triton``).
        backends_given: ``backends`` came from the command line (so ``triton`` on the CPU is not dropped).
        channels_last: channels-last inputs and weights.
        compile: time ``torch.compile``-d callables.
        quick: the CPU-sized variant.
        seed: weights, inputs and synthetic masks.
        progress: tqdm bars on stderr.
        out: output folder.
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    batch: int = 1
    size: tuple[int, int] = (1024, 2048)
    warmup: int = 10
    iters: int = 10
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7)
    backbones: tuple[str, ...] = ("resnet101",)
    heads: tuple[str, ...] = ("deeplabv3",)
    conversions: tuple[str, ...] = ("8->32", "8->16")
    masks: tuple[str, ...] = ("synthetic", "edges")
    backends: tuple[str, ...] = ("auto", "torch", "dense", "triton")
    backends_given: bool = False
    channels_last: bool = True
    compile: bool = False
    quick: bool = False
    seed: int = 0
    progress: bool = True
    out: Path = Path("results")

    def merged(self, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> Options:
        """These options with a suite's ``defaults`` applied, then the explicitly ``given`` values (None = not
        given) on top."""
        names = {f.name for f in fields(self)}
        unknown = (set(defaults) | set(given)) - names
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}")
        values = {**defaults, **{k: v for k, v in given.items() if v is not None}}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return replace(self, **values)


@dataclass
class Context:
    """What a suite's ``run`` gets: the options, a row factory that fills the run-wide columns, notes for the
    summary (skipped or failed measurements and why), and progress bars.

    Attributes:
        suite: the suite's name.
        opts: the merged :class:`Options`.
        notes: lines the summary lists under "Notes".
    """

    suite: str
    opts: Options
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        o = self.opts
        self._backends: tuple[str, ...] | None = None
        self._common = {
            "suite": self.suite,
            "dtype": str(o.dtype).removeprefix("torch."),
            "batch": o.batch,
            "channels_last": o.channels_last,
            "compiled": o.compile,
            "warmup": o.warmup,
            "iters": o.iters,
            "device": device_name(o.device),
            **versions(),
            "timestamp": timestamp(),
        }

    def row(self, **columns: Any) -> Row:
        """A :class:`Row` from ``columns`` plus the run-wide ones (suite, dtype, batch, device, versions, ...)."""
        return Row(**{**self._common, **columns})

    def note(self, text: str) -> None:
        """Record ``text`` for the summary and print it on stderr."""
        self.notes.append(text)
        print(f"[{self.suite}] {text}", file=sys.stderr)

    def progress(self, total: int, desc: str | None = None, unit: str = "row") -> tqdm:
        """A tqdm bar over ``total`` measurements (or calls) on stderr (disabled with ``--no-progress``)."""
        return tqdm(total=total, desc=desc or self.suite, unit=unit, file=sys.stderr, disable=not self.opts.progress)

    def backends(self) -> tuple[str, ...]:
        """The adaptive backends this run can time. ``triton`` without CUDA only runs in the Triton interpreter,
        far too slow to time: dropped from the defaults with a note, kept when asked for on the command line and
        the interpreter is on (``TRITON_INTERPRET=1``)."""
        if self._backends is not None:  # decided (and noted) once per run
            return self._backends
        chosen = []
        for name in self.opts.backends:
            if name == "triton" and self.opts.device.type != "cuda":
                if not self.opts.backends_given:
                    self.note("backend triton skipped: no CUDA device (the CPU has only the Triton interpreter)")
                    continue
                if not triton_runs_on(self.opts.device):
                    self.note("backend triton skipped: no CUDA device and TRITON_INTERPRET is not set")
                    continue
            chosen.append(name)
        self._backends = tuple(chosen)
        return self._backends


@dataclass(frozen=True)
class Suite:
    """A benchmark suite.

    Attributes:
        name: the CLI name; also the CSV's name (``<out>/<name>.csv``).
        description: one line for ``--help`` / ``--list``.
        run: ``run(ctx) -> rows``, one :class:`~bench._schema.Row` per measurement.
        full: option defaults of the full run (e.g. ``{"size": (1024, 2048)}``).
        quick: option defaults of the ``--quick`` run (a few minutes on 2 CPU cores).
        references: output strides of the dense rows the summary divides by: the finest dense network first (its
            time is what ``speedup_vs_os8`` should be relative to), then a coarser one; ``("8", "16")`` for the
            ResNet suites, e.g. ``("1", "8")`` for a network whose finest grid is OS1.
        summary: ``summary(table, suite, csv_path, notes, references) -> markdown`` of the merged CSV (default
            :func:`bench._report.summary`: times over the dense references).
        plot: ``plot(table, suite, out_dir, references) -> [paths]`` (default :func:`bench._report.plot_lines`:
            time and MAs against the level map; :func:`bench._report.plot_bars` draws grouped bars), or None.
    """

    name: str
    description: str
    run: Callable[[Context], Iterable[Row]]
    full: Mapping[str, Any] = field(default_factory=dict)
    quick: Mapping[str, Any] = field(default_factory=dict)
    references: tuple[str, str] = ("8", "16")
    summary: Callable[..., str] = summary
    plot: Callable[..., list[Path]] | None = plot_lines


def suite_names() -> list[str]:
    """Names of the suite modules in this package (every module without a leading underscore), sorted."""
    package = sys.modules[__package__]
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def load_suite(name: str) -> Suite:
    """Import ``bench.<name>`` and return its ``SUITE``.

    Raises:
        ValueError: no such module, or it defines no :class:`Suite` called ``SUITE``.
    """
    if name not in suite_names():
        raise ValueError(f"unknown suite {name!r}; available: {', '.join(suite_names())}")
    module = importlib.import_module(f"{__package__}.{name}")
    suite = getattr(module, "SUITE", None)
    if not isinstance(suite, Suite):
        raise ValueError(f"bench.{name} is not a suite: it defines no SUITE = bench.Suite(...)")
    if suite.name != name:
        raise ValueError(f"bench.{name} defines SUITE named {suite.name!r}; the module name must match")
    return suite
