"""One public namespace: each layer package lists the public names of its modules, and no top-level module only
re-exports (``adatriton/autotune.py``, ``adatriton/calibrate.py`` and ``adatriton/run.py`` are the ``python -m``
entry points; ``adatriton/viz.py`` holds :func:`adatriton.viz.overlay` itself)."""

import importlib
import pkgutil
from pathlib import Path

import pytest

import adatriton

PACKAGES = ("core", "ops", "nn", "masks", "models", "analysis", "eval", "tools", "runtime")
# Names each CLI module defines for itself; the package cannot list two ``main``s.
OWN_MODULE_ONLY = {"main"}


def _modules(package):
    names = [info.name for info in pkgutil.iter_modules(package.__path__)]
    return [importlib.import_module(f"{package.__name__}.{name}") for name in names]


def _lists(package: str, public: str, obj) -> bool:
    other = importlib.import_module(f"adatriton.{package}")
    return public in other.__all__ and getattr(other, public) is obj


@pytest.mark.parametrize("name", PACKAGES)
def test_layer_package_lists_the_public_names_of_its_modules(name):
    package = importlib.import_module(f"adatriton.{name}")
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    missing = []
    for module in _modules(package):
        for public in getattr(module, "__all__", []):
            obj = getattr(module, public)
            home = getattr(obj, "__module__", None) or module.__name__
            if public in submodules or public in OWN_MODULE_ONLY:
                continue  # would shadow the module of that name, or is one CLI's own entry point
            if home.startswith("adatriton.") and not home.startswith(package.__name__ + "."):
                continue  # a re-export from a lower layer, listed by that layer
            if any(_lists(other, public, obj) for other in PACKAGES if other != name):
                continue  # a constant re-exported from another layer, listed there
            if public not in package.__all__ or getattr(package, public) is not obj:
                missing.append(f"{module.__name__}.{public}")
    assert not missing, f"adatriton.{name} does not list: {missing}"


@pytest.mark.parametrize("name", PACKAGES)
def test_listed_names_exist(name):
    package = importlib.import_module(f"adatriton.{name}")
    assert [n for n in package.__all__ if not hasattr(package, n)] == []


def test_top_level_modules_are_the_package_init_the_three_clis_and_viz():
    top = sorted(p.name for p in Path(adatriton.__file__).parent.glob("*.py"))
    assert top == ["__init__.py", "autotune.py", "calibrate.py", "run.py", "viz.py"]
    assert [n for n in adatriton.__all__ if not hasattr(adatriton, n)] == []
