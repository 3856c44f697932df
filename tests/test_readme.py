"""The Python examples of the README and of every docs/*.md page run as written.

A block fenced as ```python is executed (skipped when it imports a missing optional extra, e.g. `deploy`);
examples that are not meant to run (GPU-only, placeholders) use a
```text or plain ``` fence instead.
"""

import pathlib
import re

import pytest

from adatriton.runtime.extras import EXTRAS

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def _blocks(path: pathlib.Path) -> list[str]:
    return _PYTHON_BLOCK.findall(path.read_text())


BLOCKS = _blocks(README)
#: (page, 1-based number of the block on its page, source) for every python block of docs/*.md.
DOC_BLOCKS = [(page, number, block) for page in DOCS for number, block in enumerate(_blocks(page), start=1)]


def _run(block: str, path: pathlib.Path = README) -> dict:
    scope: dict = {"__name__": "__main__"}
    exec(compile(block, str(path), "exec"), scope)
    return scope


def test_readme_quick_start_runs():
    assert len(BLOCKS) == 1, "the README's one python example is the quick start; longer ones live in docs/"
    scope = _run(BLOCKS[0])
    assert scope["features"].shape == (2, 2048, 16, 20)
    assert scope["logits"].shape == (2, 1000)


def test_docs_pages_exist():
    names = {page.name for page in DOCS}
    assert {"semantics.md", "api.md", "benchmarks.md"} <= names, names


@pytest.mark.parametrize(
    ("page", "number", "block"),
    DOC_BLOCKS,
    ids=[f"{page.name}-block{number}" for page, number, _ in DOC_BLOCKS],
)
def test_docs_examples_run(page, number, block):
    try:
        _run(block, page)
    except ModuleNotFoundError as err:
        if err.name in EXTRAS:  # an optional extra's module, e.g. the ONNX Runtime example in .venv-min
            pytest.skip(f"needs {err.name} (the {EXTRAS[err.name]} extra)")
        raise
