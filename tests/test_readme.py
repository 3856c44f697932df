"""The README's Python examples run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _run(block: str) -> dict:
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    return scope


def test_readme_quick_start_runs():
    assert BLOCKS, "README has no python example"
    scope = _run(BLOCKS[0])
    assert scope["features"].shape == (2, 2048, 16, 20)
    assert scope["logits"].shape == (2, 1000)


@pytest.mark.parametrize("index", range(1, len(BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_other_examples_run(index):
    _run(BLOCKS[index])
