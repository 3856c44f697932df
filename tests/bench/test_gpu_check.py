"""The GPU check's CPU dry run: the step list and its budget, nothing run without CUDA, and with fake steps that a
failing, timed-out or unstartable step does not stop the later ones and that the log says what happened."""

import itertools
import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from bench.__main__ import main as bench_main
from bench._gpu_check import ARCHIVE, BUDGET_S, STEPS_BUDGET_S, SUMMARY, Step, default_steps, main, run_steps

STEP_NAMES = [
    "environment",
    "backends",
    "l2_bandwidth",
    "convs",
    "memcheck",
    "racecheck",
    "cuda_graphs",
    "table2",
    "gpu_tests",
    "autotune",
]


def test_steps_cover_the_check_within_the_budget(tmp_path):
    steps = default_steps(tmp_path)
    assert [s.name for s in steps] == STEP_NAMES  # the order of issue 20's list
    assert sum(s.timeout_s for s in steps) == STEPS_BUDGET_S <= BUDGET_S == 9 * 60
    argv = {s.name: " ".join(s.argv) for s in steps}
    for name in ("environment", "backends", "l2_bandwidth", "convs", "cuda_graphs"):
        assert f"-m bench._gpu_steps {name} --out {tmp_path}" in argv[name]
    assert "small_forward" in argv["memcheck"] or "not on this machine" in argv["memcheck"]
    assert "-m pytest" in argv["gpu_tests"] and "-m gpu" in argv["gpu_tests"]
    assert "adatriton.autotune --model resnet101 --size 1024 2048 --dtype float16" in argv["autotune"]
    assert "-m bench table2 --full --size 1024 2048" in argv["table2"] and "--dtype fp16" in argv["table2"]
    assert "--fractions 0.1 0.3 0.5" in argv["table2"]


def test_every_measuring_step_exists():
    from bench._gpu_steps import STEPS

    steps = default_steps(Path("r"))
    named = {s.argv[s.argv.index("bench._gpu_steps") + 1] for s in steps if "bench._gpu_steps" in s.argv}
    assert named <= set(STEPS) and {"environment", "backends", "l2_bandwidth", "convs", "cuda_graphs"} <= named


def test_without_cuda_nothing_runs(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["--out", str(out)], cuda_available=lambda: False) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not out.exists()


def test_dry_run_lists_the_steps(tmp_path, capsys):
    assert bench_main(["gpu-check", "--dry-run", "--out", str(tmp_path / "r")]) == {"gpu-check": {"returncode": 0}}
    text = capsys.readouterr().out
    assert all(name in text for name in STEP_NAMES) and "calibrate" in text  # what is left out is said
    assert not (tmp_path / "r").exists()


def test_the_environment_step_runs_without_cuda(tmp_path):
    from bench._gpu_steps import main as step_main

    assert step_main(["environment", "--out", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "environment.json").read_text())
    assert info["torch"] == torch.__version__ and "triton" in info


def _python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def test_a_failing_step_does_not_stop_the_later_ones(tmp_path):
    done = tmp_path / "done.txt"
    steps = [
        Step("fails", _python("print('bad'); raise SystemExit(3)"), 60, "exits 3"),
        Step("hangs", _python("import time; print('waiting', flush=True); time.sleep(600)"), 1, "times out"),
        Step("missing", ("/nonexistent/command",), 60, "cannot start"),
        Step("passes", _python(f"open({str(done)!r}, 'w').write('ok'); print('fine')"), 60, "exits 0"),
    ]
    lines = []
    results = run_steps(steps, tmp_path, budget_s=300, log=lines.append)
    assert [r.status for r in results] == ["failed", "timeout", "error", "passed"]
    assert [r.returncode for r in results] == [3, None, None, 0]
    assert done.read_text() == "ok"  # the last step ran after the three bad ones
    log = (tmp_path / "gpu_check.log").read_text()
    assert log.splitlines() == lines
    assert "| fails | failed |" in log and "| hangs | timeout |" in log and "| passes | passed |" in log
    assert "   | bad" in log and "   | waiting" in log and "   | fine" in log  # each step's output tail
    assert (tmp_path / "gpu_check" / "hangs.txt").read_text().startswith("waiting")


def test_steps_past_the_budget_are_skipped(tmp_path):
    clock = itertools.count(0, 50).__next__  # every reading of the clock: 50 s later
    steps = [Step(f"s{i}", _python("pass"), 100, "") for i in range(3)]
    results = run_steps(steps, tmp_path, budget_s=160, log=lambda line: None, clock=clock)
    assert [r.status for r in results] == ["passed", "skipped", "skipped"]
    assert "skipped" in (tmp_path / "gpu_check.log").read_text()


@pytest.mark.parametrize("cuda", [True, False])
def test_exit_status_and_results(tmp_path, monkeypatch, cuda):
    import bench._gpu_check as gpu_check

    monkeypatch.setattr(
        gpu_check,
        "default_steps",
        lambda out: [Step("ok", _python("print('| a | b |')"), 30), Step("bad", _python("1/0"), 30)],
    )
    assert main(["--out", str(tmp_path)], cuda_available=lambda: cuda) == (1 if cuda else 0)
    if not cuda:
        assert list(tmp_path.iterdir()) == []
        return
    # one archive and one short summary, nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ARCHIVE, SUMMARY])
    text = (tmp_path / SUMMARY).read_text()
    assert "1/2 steps passed" in text and "bad" in text and "failed" in text and "calibrate" in text
    with tarfile.open(tmp_path / ARCHIVE) as tar:
        names = tar.getnames()
    logs = {"gpu_check/gpu_check.log", "gpu_check/gpu_check/ok.txt", "gpu_check/gpu_check/bad.txt"}
    assert logs | {f"gpu_check/{SUMMARY}"} <= set(names), names
