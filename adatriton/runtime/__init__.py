"""Execution settings: backend selection, calibration files, the autotune cache, the cache
directory and hardware names, and the timer. Imports nothing from the other layers of :mod:`adatriton`."""

from .autotune import (
    AUTOTUNE_ENV,
    SCHEMA,
    AutotuneCache,
    cache_path,
    conv_key,
    get_cache,
    is_tuning,
    recording_choices,
    select_config,
    tuning,
)
from .backend import BACKENDS, ENV_VAR, TRITON_DTYPES, requested_backend, resolve_backend, triton_runs_on, use_backend
from .calibration import (
    CALIBRATION_SCHEMA,
    calibration_path,
    clear_calibration_cache,
    load_calibration,
    save_calibration,
)
from .context import ScopedStack, environment_snapshot, getenv, same_settings, settings_token
from .extras import EXTRAS, require
from .files import (
    CACHE_DIR_ENV,
    MAX_CACHE_FILE_BYTES,
    CacheFileError,
    cache_dir,
    cpu_model,
    device_name,
    dumps_entries,
    file_lock,
    read_entries_file,
    slug,
    update_entries_file,
    write_atomic,
)
from .host import host_reads, module_attrs, to_host
from .timing import time_calls

__all__ = [
    "AUTOTUNE_ENV",
    "AutotuneCache",
    "BACKENDS",
    "CACHE_DIR_ENV",
    "MAX_CACHE_FILE_BYTES",
    "CALIBRATION_SCHEMA",
    "CacheFileError",
    "ENV_VAR",
    "EXTRAS",
    "SCHEMA",
    "ScopedStack",
    "TRITON_DTYPES",
    "cache_dir",
    "cache_path",
    "calibration_path",
    "clear_calibration_cache",
    "conv_key",
    "cpu_model",
    "device_name",
    "dumps_entries",
    "environment_snapshot",
    "file_lock",
    "get_cache",
    "getenv",
    "same_settings",
    "settings_token",
    "host_reads",
    "is_tuning",
    "load_calibration",
    "module_attrs",
    "read_entries_file",
    "recording_choices",
    "requested_backend",
    "require",
    "resolve_backend",
    "save_calibration",
    "select_config",
    "slug",
    "time_calls",
    "to_host",
    "triton_runs_on",
    "tuning",
    "update_entries_file",
    "use_backend",
    "write_atomic",
]
