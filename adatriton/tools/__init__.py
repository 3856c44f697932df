"""Entry points: autotuning (:mod:`adatriton.tools.autotune`), dispatcher calibration
(:mod:`adatriton.tools.calibrate`), the shared command-line options (:mod:`adatriton.tools.cli`), training
(:mod:`adatriton.tools.train`) and a converted model over a folder of images (:mod:`adatriton.tools.run`);
``python -m adatriton.autotune``, ``python -m adatriton.calibrate`` and ``python -m adatriton.run`` run the CLIs.

The names below load their module on first use, so that importing this package stays as light as
``import adatriton`` (the training loop and its progress bar load only when used). The functions named like their
module (``calibrate.calibrate``, ``train.train``) and each CLI's ``main`` stay in their modules, where the module's
name does not shadow them.
"""

import importlib

#: ``{public name: the module of this package that defines it}``.
_SOURCES = {
    "ADAPTIVE_OUTPUT_STRIDES": "cli",
    "COLUMNS": "kernel_report",
    "DEFAULT_DENSITIES": "calibrate",
    "DEFAULT_SMS": "kernel_report",
    "DTYPES": "cli",
    "DTYPE_ALIASES": "cli",
    "IMAGE_SUFFIXES": "run",
    "MODELS": "cli",
    "RUN_MASKS": "run",
    "RUN_MODELS": "run",
    "SyncAdaptiveBatchNorm2d": "train",
    "SyncBatchNorm2d": "train",
    "add_dtype_argument": "cli",
    "add_model_arguments": "cli",
    "add_repeats_argument": "cli",
    "bench_dir": "bench_cli",
    "compile_kernel": "kernel_report",
    "convert_sync_batchnorm": "train",
    "crossover": "calibrate",
    "device": "cli",
    "fraction": "cli",
    "kernel_rows": "kernel_report",
    "loop_stats": "kernel_report",
    "non_negative_int": "cli",
    "output_stride": "cli",
    "param_groups": "train",
    "poly_lr": "train",
    "positive_int": "cli",
    "random_level_map": "autotune",
    "record_model": "kernel_report",
    "run_folder": "run",
    "save_checkpoint": "train",
    "table": "calibrate",
    "tune_model": "autotune",
    "write_csv": "kernel_report",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    if name in _SOURCES:
        value = getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))
