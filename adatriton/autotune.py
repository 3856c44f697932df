"""``python -m adatriton.autotune`` and the autotuning API in one place: the per-launch choice and cache
(:mod:`adatriton.runtime.autotune`) and the model-level entry points (:mod:`adatriton.tools.autotune`)."""

import sys

from .runtime.autotune import (
    AUTOTUNE_ENV,
    CACHE_DIR_ENV,
    SCHEMA,
    AutotuneCache,
    cache_dir,
    cache_path,
    conv_key,
    get_cache,
    is_tuning,
    select_config,
    tuning,
)
from .tools.autotune import main, random_level_map, tune_model

__all__ = [
    "AUTOTUNE_ENV",
    "AutotuneCache",
    "CACHE_DIR_ENV",
    "SCHEMA",
    "cache_dir",
    "cache_path",
    "conv_key",
    "get_cache",
    "is_tuning",
    "main",
    "random_level_map",
    "select_config",
    "tune_model",
    "tuning",
]

if __name__ == "__main__":
    main(sys.argv[1:])
