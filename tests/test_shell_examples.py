"""The shell examples of the README and docs/ run as written: no unquoted ``->`` (bash reads ``>`` as a redirect, so
``--output-stride 8->32`` writes a file ``32`` and passes ``8-``), and every ``python -m`` command of the project's
CLIs parses with its own parser."""

import pathlib
import re
import shlex

import pytest

from adatriton.tools import autotune, calibrate, run
from bench.__main__ import build_parser as bench_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PARSERS = {
    "adatriton.autotune": autotune._parser,
    "adatriton.calibrate": calibrate._parser,
    "adatriton.run": run._parser,
    "bench": bench_parser,
}


def _shell_lines() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        block = None
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                block = None if block is not None else line.strip().strip("`").strip()
            elif block in ("bash", "sh", "shell", "console"):
                found.append((page.name, number, line))
    return found


def _unquoted(line: str) -> str:
    """The line without quoted strings and without its trailing comment."""
    line = re.sub(r"'[^']*'|\"[^\"]*\"", "''", line)
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def test_there_are_shell_examples():
    assert any("--output-stride" in line for _, _, line in _shell_lines())


@pytest.mark.parametrize("page, number, line", _shell_lines())
def test_no_unquoted_arrow(page, number, line):
    assert "->" not in _unquoted(line), f"{page}:{number}: unquoted '->' is a shell redirect: {line.strip()}"


def test_the_project_commands_parse():
    checked = []
    for page, number, line in _shell_lines():
        words = shlex.split(line, comments=True)
        if "-m" not in words[:-1] or words[words.index("-m") + 1] not in PARSERS:
            continue
        module, argv = words[words.index("-m") + 1], words[words.index("-m") + 2 :]
        if module == "bench" and argv[:1] == ["gpu-check"] or "--help" in argv:  # gpu-check: bench._gpu_check
            continue
        try:
            args = PARSERS[module]().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}:{number}: {line.strip()} does not parse")
        if getattr(args, "output_stride", None) is not None:
            assert "->" in args.output_stride  # read as the canonical name
        checked.append(module)
    assert "adatriton.autotune" in checked and "adatriton.run" in checked
