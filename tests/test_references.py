"""Every dotted ``adatriton.…`` reference in the README, docs/*.md and the docstrings and comments of ``adatriton/``,
``kernels/`` and ``bench/`` names a real object, so a moved or deleted name cannot linger in the prose.

A reference resolves by importing its longest importable module prefix and looking the rest up with ``getattr``
(``adatriton.models.convert.convert``: the module ``adatriton.models.convert``, then its ``convert``). Roles such as
``:func:`~adatriton.ops.conv2d``` are found the same way. Not references: the console script ``adatriton-bench``,
file paths (``adatriton/core/...``), the ``torch.ops.adatriton.*`` custom-op namespace and the dispatcher's logger
name, written as "the ``adatriton.dispatch`` logger".
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A dotted name that starts a word: not ``torch.ops.adatriton.x``, ``path/adatriton.x`` or ``adatriton-bench``.
REFERENCE = re.compile(r"(?<![\w./-])adatriton(?:\.[A-Za-z_]\w*)+")
# The dispatcher logs under this name; it names a logger, not a module.
LOGGER = re.compile(r"[`\"']*\s+logger\b")


def _references(text: str, first_line: int = 1) -> list[tuple[int, str]]:
    """``(line, reference)`` for every reference in ``text`` whose first line is ``first_line``."""
    found = []
    for match in REFERENCE.finditer(text):
        if match.group() == "adatriton.dispatch" and LOGGER.match(text, match.end()):
            continue
        found.append((first_line + text.count("\n", 0, match.start()), match.group()))
    return found


def _python_prose(path: Path) -> list[tuple[int, str]]:
    """References in the docstrings (every string statement, so attribute docstrings too) and comments of a file."""
    source = path.read_text()
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found += _references(node.value.value, node.lineno)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found += _references(token.string, token.start[0])
    return found


def _all_references() -> dict[str, list[str]]:
    """``{reference: ["file:line", ...]}`` over the README, the docs and the Python sources."""
    where: dict[str, list[str]] = {}
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    sources = [p for d in ("adatriton", "kernels", "bench") for p in sorted((ROOT / d).rglob("*.py"))]
    for path in texts + sources:
        refs = _python_prose(path) if path.suffix == ".py" else _references(path.read_text())
        for line, ref in refs:
            where.setdefault(ref, []).append(f"{path.relative_to(ROOT)}:{line}")
    return where


def _resolve(reference: str) -> bool:
    """Whether ``reference`` names an object: import the longest module prefix, ``getattr`` the rest."""
    parts = reference.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):
                raise  # the module exists but one of its own imports is missing: a real error
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_the_scan_finds_references_in_every_kind_of_source():
    where = _all_references()
    files = {place.split(":")[0] for places in where.values() for place in places}
    assert "README.md" in files
    assert any(f.startswith("docs/") for f in files)
    assert any(f.startswith("adatriton/") for f in files)
    assert any(f.startswith("bench/") for f in files)


def test_the_pattern_skips_paths_scripts_custom_ops_and_the_logger():
    text = (
        "adatriton/core/levelmap.py, adatriton-bench, torch.ops.adatriton.densify, the ``adatriton.dispatch`` "
        "logger; :func:`~adatriton.ops.conv2d` and adatriton.convert."
    )
    assert [ref for _, ref in _references(text)] == ["adatriton.ops.conv2d", "adatriton.convert"]


def test_resolution_tells_real_names_from_stale_ones():
    assert _resolve("adatriton.models.convert.convert")  # the module, then its function
    assert _resolve("adatriton.LevelMap.from_keep_mask")
    assert not _resolve("adatriton.functional.conv2d")
    assert not _resolve("adatriton.ops.no_such_op")


def test_every_dotted_reference_resolves():
    where = _all_references()
    stale = [f"{ref}  ({', '.join(places)})" for ref, places in sorted(where.items()) if not _resolve(ref)]
    assert not stale, "references to names that do not exist:\n" + "\n".join(stale)
