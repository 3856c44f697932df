"""The option spellings every command-line tool shares, written once: ``python -m adatriton.autotune``,
``python -m adatriton.calibrate`` and the benchmark CLI (``python -m bench``) use the same names, values and aliases.

- ``--model`` (alias ``--backbones``): ``resnet50``, ``resnet101``, ``resnet152``.
- ``--output-stride``: ``8to16``, ``8to32``, ``16to32``; ``8:32``, ``8->32`` (quoted: unquoted ``>`` is a shell
  redirect), ``8→32`` and ``8 -> 32`` read the same (:func:`~adatriton.core.strides.canonical_stride`).
- ``--dtype``: ``fp16``, ``bf16``, ``fp32`` (``fp64`` where float64 runs); torch's names ``float16``,
  ``bfloat16``, ``float32``, ``float64`` are aliases.
- ``--repeats`` (alias ``--iters``): timed calls, a positive int.
- ``--size H W``, ``--batch``: positive ints.

Closed sets are argparse ``choices`` and numbers are checked by their ``type``, so a bad value is an argparse usage
error (exit status 2, the option and the accepted values named), never a traceback.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import torch

from ..core.strides import OUTPUT_STRIDES, canonical_stride

__all__ = [
    "ADAPTIVE_OUTPUT_STRIDES",
    "DTYPES",
    "DTYPE_ALIASES",
    "MODELS",
    "add_dtype_argument",
    "add_model_arguments",
    "add_repeats_argument",
    "device",
    "fraction",
    "non_negative_int",
    "output_stride",
    "positive_int",
]

#: ``--dtype`` names -> dtypes.
DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "fp64": torch.float64,
}
#: Accepted other spellings of ``--dtype`` values (torch's names).
DTYPE_ALIASES: dict[str, str] = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}
#: ``--model`` values: the torchvision backbones the tools build.
MODELS = ("resnet50", "resnet101", "resnet152")
#: ``--output-stride`` values of the tools that need an adaptive part.
ADAPTIVE_OUTPUT_STRIDES = tuple(name for name, (_, k) in OUTPUT_STRIDES.items() if k > 0)


def positive_int(text: str) -> int:
    """argparse ``type``: an int >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse ``type``: an int >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None


def fraction(text: str) -> float:
    """argparse ``type``: a number in ``[0, 1]``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def device(text: str) -> str:
    """argparse ``type``: a device torch understands (``cpu``, ``cuda``, ``cuda:1``)."""
    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:1, got {text!r}") from None
    return text


def output_stride(text: str) -> str:
    """argparse ``type``: the canonical name of an output stride spelling (``8to32``, ``8:32``, ``8->32``, ...),
    for argparse's ``choices`` (canonical names) to check."""
    return canonical_stride(text)


def _dtype_name(text: str) -> str:
    return DTYPE_ALIASES.get(text, text)  # then argparse checks the choices


def add_dtype_argument(
    p: argparse.ArgumentParser,
    names: Sequence[str] = ("fp16", "bf16", "fp32"),
    default: str | None = None,
    help: str | None = None,
) -> None:
    """``--dtype`` with ``choices`` ``names`` (keys of :data:`DTYPES`); torch's names are aliases. The parsed
    value is the short name; ``DTYPES[args.dtype]`` is the dtype."""
    aliases = ", ".join(a for a, n in DTYPE_ALIASES.items() if n in names)
    text = help or (f"inference dtype (default: {default})" if default else "inference dtype")
    p.add_argument(
        "--dtype", type=_dtype_name, choices=tuple(names), default=default, help=f"{text}; aliases: {aliases}"
    )


def add_repeats_argument(p: argparse.ArgumentParser, default: int, help: str = "timed calls per measurement") -> None:
    """``--repeats`` (alias ``--iters``): timed calls per measurement."""
    p.add_argument(
        "--repeats", "--iters", dest="repeats", type=positive_int, default=default, help=f"{help} (default: {default})"
    )


def add_model_arguments(p: argparse.ArgumentParser, output_strides: Sequence[str] = ADAPTIVE_OUTPUT_STRIDES) -> None:
    """``--model`` (alias ``--backbones``), ``--output-stride``, ``--size``, ``--batch``: the network and input the
    tuning and calibration CLIs (``python -m adatriton.autotune`` / ``adatriton.calibrate``) build."""
    p.add_argument(
        "--model",
        "--backbones",
        dest="model",
        choices=MODELS,
        default="resnet101",
        help="torchvision backbone (default: %(default)s)",
    )
    p.add_argument(
        "--output-stride",
        type=output_stride,
        choices=tuple(output_strides),
        default="8->32",
        help="adaptive output stride (default: %(default)s)",
    )
    p.add_argument(
        "--size",
        nargs=2,
        type=positive_int,
        default=(1024, 2048),
        metavar=("H", "W"),
        help="input size (default: 1024 2048)",
    )
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default: %(default)s)")
