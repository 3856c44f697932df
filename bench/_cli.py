"""Options the bench command lines share, spelt once: ``python -m bench`` and ``python -m bench.keypoints`` take the
same names, the same values and the same aliases (the other spellings found in the project's CLIs).

| option | values | aliases |
|---|---|---|
| ``--dtype`` | ``fp32``, ``fp16``, ``bf16`` | values ``float32``, ``float16``, ``bfloat16`` |
| ``--iters`` | timed calls per measurement | ``--repeats`` |
| ``--model`` | ``resnet50``, ``resnet101``, ``resnet152`` (several) | ``--backbones`` |
| ``--backends`` | ``auto``, ``torch``, ``dense``, ``triton`` (several) | ``--backend`` |
| ``--device`` | ``cpu``, ``cuda`` | |
"""

from __future__ import annotations

import argparse

import torch

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
    "non_negative",
    "positive",
]

#: ``--dtype`` values.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Other spellings ``--dtype`` accepts (those of ``adatriton.autotune`` / ``adatriton.calibrate``).
DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
#: Adaptive conv backends (``auto``: the per-layer dispatcher).
BACKENDS = ("auto", "torch", "dense", "triton")
#: ResNet trunks of the network suites.
MODELS = ("resnet50", "resnet101", "resnet152")


def dtype_name(text: str) -> str:
    """The canonical ``--dtype`` value of ``text`` (an alias maps to its canonical name; anything else is returned
    unchanged, for argparse's ``choices`` to reject)."""
    text = text.strip().lower()
    return DTYPE_ALIASES.get(text, text)


def fraction(text: str) -> float:
    """A float in ``[0, 1]`` (argparse ``type``)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"fraction must be in [0, 1], got {text}")
    return value


def positive(text: str) -> int:
    """An int ``>= 1`` (argparse ``type``)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative(text: str) -> int:
    """An int ``>= 0`` (argparse ``type``)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


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
    p.add_argument("--iters", "--repeats", dest="iters", type=positive, metavar="N", help=help)


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
