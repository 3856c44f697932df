"""The package's shape: layers that import only downwards, no import cycles, no private names across modules, and a
light ``import adatriton``.

The layers, lowest first (the README's "Package map"): ``kernels`` (installed as ``adatriton.kernels``),
``runtime``, ``core``, ``ops``, ``nn``, ``masks``, ``models``, ``analysis``, ``eval``, ``tools``; above them the
facade: ``adatriton/__init__.py`` and the CLI entry modules ``adatriton.autotune`` / ``adatriton.calibrate`` /
``adatriton.run``. ``adatriton.viz`` (level-map pictures, on ``core`` only) sits at the top of the package for its
public name but belongs to the ``analysis`` layer, so that ``tools`` (the run command) may draw with it. A module
may import from its own layer (without cycles) and from lower layers; nothing inside a layer imports the facade.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kernels", "runtime", "core", "ops", "nn", "masks", "models", "analysis", "eval", "tools")
FACADE = len(LAYERS)
#: Top-level modules that belong to a layer (by what they import and who may import them), not to the facade.
TOP_LEVEL_IN_LAYER = {"adatriton.viz": "analysis"}
HEAVY = ("pandas", "matplotlib", "cv2", "skimage")


def _module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the installed package layout."""
    files = {}
    for path in sorted((ROOT / "adatriton").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        parts = ["adatriton", "kernels", *path.relative_to(ROOT / "kernels").with_suffix("").parts]
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


FILES = _module_files()


def _layer(module: str) -> int:
    if module in TOP_LEVEL_IN_LAYER:
        return LAYERS.index(TOP_LEVEL_IN_LAYER[module])
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return FACADE


def _is_package(module: str) -> bool:
    return FILES[module].name == "__init__.py"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (annotation-only imports, never executed)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(module: str) -> list[tuple[str, list[str], int, bool]]:
    """``(target module, imported names, line, at function level)`` of every import into the package."""
    tree = ast.parse(FILES[module].read_text(), filename=str(FILES[module]))
    skip = _type_checking_lines(tree)
    top_level = {id(node) for node in tree.body}
    package = module if _is_package(module) else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        nested = id(node) not in top_level
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "adatriton":
                    found.append((alias.name, [], node.lineno, nested))
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != "adatriton":
            continue
        names = [alias.name for alias in node.names]
        submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in FILES]
        if submodules and len(submodules) == len(names):  # ``from pkg import submodule, ...``
            found += [(sub, [], node.lineno, nested) for sub in submodules]
        else:
            found.append((target, names, node.lineno, nested))
    return found


GRAPH = {m: _imports(m) for m in FILES}


def test_every_import_goes_to_the_same_or_a_lower_layer():
    bad = []
    for module, imports in GRAPH.items():
        for target, _, line, _ in imports:
            if target not in FILES:
                bad.append(f"{module}:{line} imports {target}, which does not exist")
            elif _layer(target) > _layer(module):
                bad.append(
                    f"{module}:{line} ({LAYERS[_layer(module)] if _layer(module) < FACADE else 'facade'}) "
                    f"imports {target} (a higher layer)"
                )
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = {m: sorted({t for t, _, _, _ in GRAPH[m] if t in FILES and t != m}) for m in FILES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in FILES:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_is_imported_from_another_module():
    bad = [
        f"{module}:{line} imports {name} from {target}"
        for module, imports in GRAPH.items()
        for target, names, line, _ in imports
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not bad, "\n".join(bad)


def test_no_function_level_import_inside_the_package():
    """Imports of the package's own modules sit at the top of the module, where the layer rules can see them."""
    bad = [
        f"{module}:{line} imports {target} inside a function"
        for module, imports in GRAPH.items()
        for target, _, line, nested in imports
        if nested
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.subprocess
def test_import_adatriton_stays_light():
    code = f"import sys, adatriton; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", f"import adatriton loaded {out.stdout.strip()}"
