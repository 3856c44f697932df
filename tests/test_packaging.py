"""Packaging: what the wheel holds, where ``adatriton.kernels`` comes from in a second clone or a wheel, and the
``adatriton-bench`` console script (the benchmarks stay in the repository, not in site-packages)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adatriton.tools import bench_cli

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")
PROBE = (
    "import json, adatriton, adatriton.kernels as k, adatriton.kernels.conv as c\n"
    "print(json.dumps([adatriton.__file__, k.__file__, c.__file__]))"
)


def _files_seen_from(cwd: Path) -> list[Path]:
    """``adatriton``, ``adatriton.kernels`` and ``adatriton.kernels.conv`` as a fresh interpreter in ``cwd`` loads them
    (``cwd`` first on its path, as for ``python -c`` and ``python -m``)."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=cwd, check=True)
    return [Path(p).resolve() for p in json.loads(out.stdout.strip().splitlines()[-1])]


@pytest.mark.subprocess
def test_a_second_clone_imports_its_own_kernels(tmp_path):
    """The editable install maps ``adatriton.kernels`` to this checkout's ``kernels/``; a copy of the tree run with the
    same interpreter must still get the copy's kernels, beside the copy's package."""
    clone = tmp_path / "clone2"
    for name in ("adatriton", "kernels"):
        shutil.copytree(ROOT / name, clone / name, ignore=IGNORE)
    shutil.copy(ROOT / "pyproject.toml", clone)
    package, kernels, conv = _files_seen_from(clone)
    clone = clone.resolve()
    assert package == clone / "adatriton" / "__init__.py"
    assert kernels == clone / "kernels" / "__init__.py"
    assert conv == clone / "kernels" / "conv.py"


@pytest.mark.subprocess
def test_a_wheel_layout_keeps_its_kernels_inside_the_package(tmp_path):
    """A wheel installs the kernels as ``adatriton/kernels/``; an unrelated top-level ``kernels`` package beside it
    in site-packages must not be taken for them."""
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "adatriton", site / "adatriton", ignore=IGNORE)
    shutil.copytree(ROOT / "kernels", site / "adatriton" / "kernels", ignore=IGNORE)
    (site / "kernels").mkdir()
    (site / "kernels" / "__init__.py").write_text("raise ImportError('another project')\n")
    package, kernels, conv = _files_seen_from(site)
    site = site.resolve()
    assert package == site / "adatriton" / "__init__.py"
    assert kernels == site / "adatriton" / "kernels" / "__init__.py"
    assert conv == site / "adatriton" / "kernels" / "conv.py"


def test_the_wheel_lists_every_package_and_no_top_level_bench():
    """The wheel's packages are a static list: every package directory of ``adatriton/`` (plus ``kernels/`` as
    ``adatriton.kernels``) must be on it, and nothing outside the ``adatriton`` name (``bench`` stays in the
    repository)."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "adatriton").rglob("__init__.py")}
    on_disk = packages | {"adatriton.kernels"}
    assert set(config["packages"]) == on_disk
    assert config["package-dir"] == {"adatriton.kernels": "kernels"}


def test_bench_cli_runs_the_benchmarks_of_this_clone(monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", ["adatriton-bench", "--list"])
    assert bench_cli.bench_dir() == ROOT / "bench"
    assert bench_cli.cli() == 0
    assert "table2" in capsys.readouterr().out


def test_bench_cli_without_the_repository_says_where_the_benchmarks_are(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench_cli, "ROOT", tmp_path)
    assert bench_cli.bench_dir(tmp_path) is None
    assert bench_cli.cli() == 2
    assert "ship with the repository" in capsys.readouterr().err
