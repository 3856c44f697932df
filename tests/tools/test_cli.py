"""The tools' command lines (``python -m adatriton.autotune`` / ``adatriton.calibrate``): one spelling per option
shared with the bench CLI, aliases for the others, argparse ``choices`` and checked numbers so a bad value is a
usage error (exit status 2, the option named), never a traceback (issue 15)."""

import subprocess
import sys

import pytest
import torch

from adatriton.tools import autotune as tool_autotune
from adatriton.tools import calibrate as tool_calibrate
from adatriton.tools import cli

PARSERS = {"autotune": tool_autotune._parser, "calibrate": tool_calibrate._parser}
MAINS = {"autotune": tool_autotune.main, "calibrate": tool_calibrate.main}


@pytest.mark.parametrize("tool", sorted(PARSERS))
@pytest.mark.parametrize(
    "argv, canonical",
    [
        pytest.param(["--dtype", "fp16"], {"dtype": "fp16"}, id="dtype-fp16"),
        pytest.param(["--dtype", "float16"], {"dtype": "fp16"}, id="dtype-alias-float16"),
        pytest.param(["--dtype", "bfloat16"], {"dtype": "bf16"}, id="dtype-alias-bfloat16"),
        pytest.param(["--dtype", "float32"], {"dtype": "fp32"}, id="dtype-alias-float32"),
        pytest.param(["--model", "resnet50"], {"model": "resnet50"}, id="model"),
        pytest.param(["--backbones", "resnet152"], {"model": "resnet152"}, id="model-alias-backbones"),
        pytest.param(["--output-stride", "16->32"], {"output_stride": "16->32"}, id="output-stride"),
        pytest.param(["--output-stride", "8 → 16"], {"output_stride": "8->16"}, id="output-stride-arrow"),
        pytest.param(["--output-stride", "8to32"], {"output_stride": "8->32"}, id="output-stride-to"),
        pytest.param(["--output-stride", "16TO32"], {"output_stride": "16->32"}, id="output-stride-TO"),
        pytest.param(["--output-stride", "8:16"], {"output_stride": "8->16"}, id="output-stride-colon"),
        pytest.param(["--size", "64", "96", "--batch", "2"], {"size": [64, 96], "batch": 2}, id="size-batch"),
        pytest.param(["--device", "cuda:1"], {"device": "cuda:1"}, id="device-index"),
    ],
)
def test_shared_spellings_and_aliases(tool, argv, canonical):
    args = PARSERS[tool]().parse_args(argv)
    assert {k: getattr(args, k) for k in canonical} == canonical
    if "dtype" in canonical:
        assert cli.DTYPES[args.dtype] == getattr(
            torch, {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[args.dtype]
        )


def test_calibrate_specific_options():
    args = tool_calibrate._parser().parse_args(["--iters", "3", "--dtype", "float64", "--densities", "0.5", "1"])
    assert args.repeats == 3 and args.dtype == "fp64" and args.densities == [0.5, 1.0]
    assert tool_calibrate._parser().parse_args(["--repeats", "4"]).repeats == 4
    assert tool_calibrate._parser().parse_args([]).dtype is None  # per-device default, chosen in main
    args = tool_autotune._parser().parse_args(["--fraction", "0.25", "--seed", "3"])
    assert args.fraction == 0.25 and args.seed == 3 and args.dtype == "fp16"


@pytest.mark.parametrize(
    "tool, argv, message",
    [
        pytest.param(
            "calibrate",
            ["--output-stride", "8-32"],
            "argument --output-stride: invalid choice: '8-32'",
            id="calibrate-output-stride-8-32",
        ),
        pytest.param(
            "autotune",
            ["--output-stride", "8"],
            "argument --output-stride: invalid choice: '8'",
            id="autotune-dense-output-stride",
        ),
        pytest.param("autotune", ["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'", id="dtype-unknown"),
        pytest.param(
            "autotune", ["--dtype", "float64"], "argument --dtype: invalid choice: 'fp64'", id="autotune-has-no-fp64"
        ),
        pytest.param(
            "calibrate", ["--model", "resnet18"], "argument --model/--backbones: invalid choice", id="model-unknown"
        ),
        pytest.param(
            "calibrate", ["--size", "0", "64"], "argument --size: expected a positive int, got '0'", id="size-zero"
        ),
        pytest.param("autotune", ["--batch", "two"], "argument --batch: expected an int, got 'two'", id="batch-text"),
        pytest.param(
            "autotune", ["--fraction", "1.5"], "argument --fraction: expected a number in [0, 1]", id="fraction-above-1"
        ),
        pytest.param(
            "calibrate", ["--densities", "0"], "argument --densities: expected a density in (0, 1]", id="density-zero"
        ),
        pytest.param(
            "calibrate", ["--iters", "0"], "argument --repeats/--iters: expected a positive int", id="iters-zero"
        ),
        pytest.param(
            "calibrate", ["--device", "gpu"], "argument --device: expected a device such as cpu", id="device-unknown"
        ),
    ],
)
def test_bad_values_are_usage_errors(tool, argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        MAINS[tool](argv)
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and "Traceback" not in stderr
    if "invalid choice" in message and "output-stride" in message:
        assert "'8->16', '8->32', '16->32'" in stderr  # the accepted values are listed


def test_help_lists_the_aliases():
    for tool in sorted(PARSERS):
        text = " ".join(PARSERS[tool]().format_help().split())  # unwrapped
        assert "--model {resnet50,resnet101,resnet152}, --backbones {resnet50,resnet101,resnet152}" in text
        assert "--output-stride {8->16,8->32,16->32}" in text
        assert "aliases: float16, bfloat16, float32" in text
    assert "--repeats REPEATS, --iters REPEATS" in tool_calibrate._parser().format_help()


def test_python_dash_m_entry_points_still_work():
    bad = subprocess.run(
        [sys.executable, "-m", "adatriton.calibrate", "--output-stride", "8-32"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice: '8-32'" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "adatriton.autotune", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--backbones" in ok.stdout and "--dtype" in ok.stdout


def test_the_shell_safe_spelling_survives_an_unquoted_shell_command(tmp_path):
    # What a user types: "8to32" unquoted reaches the CLI whole, where "8->32" unquoted would be a redirect.
    command = f"{sys.executable} -c 'import sys; from adatriton.tools.autotune import _parser; "
    command += "print(_parser().parse_args(sys.argv[1:]).output_stride)' --output-stride 8to32"
    out = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "8->32" and list(tmp_path.iterdir()) == []
