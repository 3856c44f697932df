"""docs/benchmarks.md documents the CSV schema of bench/_schema.py: one table row per ``Row`` field, in order."""

import dataclasses
import pathlib
import re

import bench._schema

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _column_table(text: str) -> list[str]:
    """The first-column names of the markdown table headed ``| column | meaning |``."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if re.fullmatch(r"\|\s*column\s*\|\s*meaning\s*\|", line.strip()))
    assert re.fullmatch(r"\|[\s:|-]+\|", lines[header + 1].strip()), "the column table has no separator row"
    names = []
    for line in lines[header + 2 :]:
        if not line.strip().startswith("|"):
            break
        cell = line.strip().strip("|").split("|")[0].strip()
        match = re.fullmatch(r"`([A-Za-z_][A-Za-z0-9_]*)`", cell)
        assert match, f"first cell is not one column name in backticks: {cell!r}"
        names.append(match.group(1))
    return names


def test_benchmarks_column_table_matches_row():
    expected = [f.name for f in dataclasses.fields(bench._schema.Row)]
    assert _column_table(BENCHMARKS.read_text()) == expected


def test_benchmarks_has_one_column_table():
    text = BENCHMARKS.read_text()
    assert len(re.findall(r"^\|\s*column\s*\|\s*meaning\s*\|\s*$", text, flags=re.M)) == 1
