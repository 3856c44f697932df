"""Options the bench command lines share, spelt once: ``python -m bench`` and ``python -m bench.keypoints`` take the
same names, the same values and the same aliases (the other spellings found in the project's CLIs).

| option | values | aliases |
|---|---|---|
| ``--dtype`` | ``fp32``, ``fp16``, ``bf16`` | values ``float32``, ``float16``, ``bfloat16`` |
| ``--iters`` | timed calls per measurement | ``--repeats`` |
| ``--model`` | ``resnet50``, ``resnet101``, ``resnet152`` (several) | ``--backbones`` |
| ``--backends`` | ``auto``, ``torch``, ``dense``, ``triton`` (several) | ``--backend`` |
| ``--device`` | ``cpu``, ``cuda`` | |
| ``--conversions`` | ``8to32``, ``8to16`` (several) | ``--output-stride``; values ``8:32``, ``8->32`` (quoted) |
"""

from __future__ import annotations

import argparse

import torch

# The argparse types and closed sets are the tools CLIs' (python -m adatriton.autotune / calibrate): one spelling.
from adatriton.tools.cli import DTYPE_ALIASES, MODELS, fraction, non_negative_int, output_stride, positive_int

__all__ = [
    "BACKENDS",
    "DTYPES",
    "DTYPE_ALIASES",
    "add_backends",
    "add_device",
    "add_dtype",
    "add_iters",
    "add_model",
    "dtype_name",
    "MODELS",
    "fraction",
    "non_negative_int",
    "output_stride",
    "positive_int",
]

#: ``--dtype`` values.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Adaptive conv backends (``auto``: the per-layer dispatcher).
BACKENDS = ("auto", "torch", "dense", "triton")


def dtype_name(text: str) -> str:
    """The canonical ``--dtype`` value of ``text``, in any case (an alias maps to its canonical name; anything else
    is returned unchanged, for argparse's ``choices`` to reject)."""
    text = text.strip().lower()
    return DTYPE_ALIASES.get(text, text)


def add_dtype(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """``--dtype {fp32,fp16,bf16}``, also ``float32``/``float16``/``bfloat16``."""
    p.add_argument(
        "--dtype",
        type=dtype_name,
        choices=tuple(DTYPES),
        default=default,
        help=f"{what} (aliases: float32, float16, bfloat16)",
    )


def add_iters(p: argparse.ArgumentParser, help: str) -> None:
    """``--iters N`` (alias ``--repeats``): timed calls per measurement."""
    p.add_argument("--iters", "--repeats", dest="iters", type=positive_int, metavar="N", help=help)


def add_model(p: argparse.ArgumentParser) -> None:
    """``--model NAME [NAME ...]`` (alias ``--backbones``): the ResNet trunks."""
    p.add_argument(
        "--model",
        "--backbones",
        dest="backbones",
        nargs="+",
        choices=MODELS,
        metavar="MODEL",
        help=f"ResNet trunks, of {', '.join(MODELS)}",
    )


def add_backends(p: argparse.ArgumentParser, help: str) -> None:
    """``--backends NAME [NAME ...]`` (alias ``--backend``): adaptive conv backends."""
    p.add_argument(
        "--backends",
        "--backend",
        dest="backends",
        nargs="+",
        choices=BACKENDS,
        metavar="BACKEND",
        help=f"{help}; of {', '.join(BACKENDS)}",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device {cpu,cuda}``."""
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
