"""The cache files' writers under concurrency (an inter-process lock around read-merge-replace) and the validation
of autotune entries against the kernel's constraints (issue 15)."""

import json
import multiprocessing
import os
import threading

import pytest
import torch
import triton

from adatriton.kernels import conv as conv_module
from adatriton.runtime import autotune as runtime_autotune
from adatriton.runtime import calibration as D
from adatriton.runtime import files

PROCESSES, SAVES = 4, 40
CPU = torch.device("cpu")
GOOD = [32, 32, 32, 2, 4]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("ADATRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime_autotune, "_caches", {})
    D.clear_calibration_cache()
    yield
    D.clear_calibration_cache()


def _context():
    # fork: the workers only touch JSON files, and it spares each of them a fresh `import torch`.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _autotune_writer(path: str, worker: int, start) -> None:
    start.wait()
    cache = runtime_autotune.AutotuneCache("interpreter-cpu", path)
    for i in range(SAVES):
        cache.put(f"w{worker}-{i}", GOOD, 0.001 * i, 1)
        cache.save()


def _calibration_writer(cache_dir: str, worker: int, start) -> None:
    os.environ["ADATRITON_CACHE_DIR"] = cache_dir
    start.wait()
    for i in range(SAVES):
        D.save_calibration("cpu", {f"w{worker}-{i}": {"crossover": 0.5}})


def _run_writers(target, arg) -> None:
    ctx = _context()
    start = ctx.Event()
    procs = [ctx.Process(target=target, args=(arg, w, start)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    start.set()  # all at once, so their saves interleave
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * PROCESSES


def _expected() -> set[str]:
    return {f"w{w}-{i}" for w in range(PROCESSES) for i in range(SAVES)}


def test_concurrent_autotune_writers_lose_nothing(tmp_path):
    path = tmp_path / "conv.json"
    _run_writers(_autotune_writer, str(path))
    data = json.loads(path.read_text())
    assert set(data["entries"]) == _expected()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.json", "conv.json.lock"]  # no temp file left


def test_concurrent_calibration_writers_lose_nothing(tmp_path):
    _run_writers(_calibration_writer, str(tmp_path))
    data = json.loads(D.calibration_path(CPU).read_text())
    assert set(data["entries"]) == _expected()


def test_save_keeps_newer_entries_of_another_process_over_ones_only_read(tmp_path):
    path = tmp_path / "c.json"
    a, b = runtime_autotune.AutotuneCache("gpu", path), runtime_autotune.AutotuneCache("gpu", path)
    a.put("k", GOOD, 1.0, 1)
    a.save()
    b.load()  # b read k = GOOD
    a.put("k", [64, 64, 32, 3, 4], 0.5, 2)
    a.save()
    b.put("other", GOOD, 1.0, 1)
    b.save()  # b never changed k: a's newer value stays
    fresh = runtime_autotune.AutotuneCache("gpu", path)
    assert fresh.get("k") == (64, 64, 32, 3, 4) and fresh.get("other") == tuple(GOOD)
    assert b.get("k") == (64, 64, 32, 3, 4)  # and b now sees it too


def test_lock_serialises_threads_and_works_without_fcntl(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    inside, overlaps = [], []

    def hold():
        with files.file_lock(target) as lock_path:
            assert lock_path == tmp_path / "f.json.lock"
            if inside:
                overlaps.append(1)
            inside.append(1)
            threading.Event().wait(0.01)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps
    monkeypatch.setattr(files, "fcntl", None)  # e.g. Windows: threads still serialised, files still atomic
    cache = runtime_autotune.AutotuneCache("gpu", tmp_path / "nofcntl" / "c.json")
    cache.put("k", GOOD, 1.0, 1)
    cache.save()
    assert runtime_autotune.AutotuneCache("gpu", tmp_path / "nofcntl" / "c.json").get("k") == tuple(GOOD)


# ---------------------------------------------------------------------------------------------- entry validation
def _write(entries):
    path = runtime_autotune.cache_path(CPU)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema": 1, "gpu": "interpreter-cpu", "triton": triton.__version__, "entries": entries}
    path.write_text(json.dumps(payload))
    return path


@pytest.mark.parametrize(
    "config, problem",
    [
        pytest.param([3, 5, 7, 1, 3], "BLOCK_M=3 is not a power of two", id="issue-reproducer"),
        pytest.param([48, 32, 32, 2, 4], "BLOCK_M=48 is not a power of two", id="block-m-not-pow2"),
        pytest.param([32, 8, 32, 2, 4], "BLOCK_N=8 is not a power of two in 16..", id="block-n-too-small"),
        pytest.param([32, 32, 1024, 2, 4], "BLOCK_K=1024", id="block-k-too-big"),
        pytest.param([32, 32, 32, 0, 4], "num_stages=0", id="zero-stages"),
        pytest.param([32, 32, 32, 99, 4], "num_stages=99", id="many-stages"),
        pytest.param([32, 32, 32, 2, 6], "num_warps=6", id="warps-not-pow2"),
        pytest.param([32, 32, 32, 2, 64], "num_warps=64", id="warps-too-many"),
        pytest.param([32, 32, 32, 2, 4.0], "a conv config holds ints", id="float"),
        pytest.param([32, 32, 32], "a conv config is 5 or 6 ints", id="short"),
        pytest.param("32,32,32,2,4", "a conv config is 5 or 6 ints", id="string"),
        pytest.param([32, 32, 32, 2, 4, 2], "persistent=2", id="persistent-not-a-flag"),
    ],
)
def test_impossible_configs_are_dropped_with_a_warning(config, problem):
    entry = {"time_ms": 1.0, "candidates": 2}
    _write({"bad": {"config": config, **entry}, "k": {"config": GOOD, **entry}})
    with pytest.warns(UserWarning, match="dropping 1 malformed entries") as caught:
        cache = runtime_autotune.get_cache(CPU).load()
    assert problem in str(caught[0].message)
    assert cache.get("bad") is None and cache.get("k") == tuple(GOOD)


def test_a_dropped_entry_never_reaches_a_launch():
    """The issue's reproducer: the bucket gets the default config instead of crashing the launch."""
    shape = {"rows": 1000, "cin_g": 64, "cout_g": 64, "taps": 9, "groups": 1, "dtype": torch.float32, "gather": True}
    key = runtime_autotune.conv_key(**shape)
    _write({key: {"config": [3, 5, 7, 1, 3], "time_ms": 1.0, "candidates": 2}})
    with pytest.warns(UserWarning, match="malformed"):
        got = runtime_autotune.select_config(**shape, device=CPU, launch=lambda c: None)
    assert got == conv_module.default_config(1000, 64, 64)


def test_every_config_the_tuner_can_store_is_valid(tmp_path):
    configs = list(conv_module.conv_configs())
    configs += [conv_module.default_config(rows, 3, 2048) for rows in (1, 7, 100, 10**6)]
    cache = runtime_autotune.AutotuneCache("gpu", tmp_path / "c.json")
    for i, config in enumerate(configs):
        assert conv_module.config_problems(list(config)) == [], config
        cache.put(f"k{i}", config, 1.0, 1)  # what tuning stores ...
    cache.save()
    again = runtime_autotune.AutotuneCache("gpu", tmp_path / "c.json")
    assert [again.get(f"k{i}") for i in range(len(configs))] == configs  # ... reads back, none dropped


def test_cache_entries_and_launches_share_one_validator():
    """The cache file is checked by the kernel module's rule itself, not by a copy of it that could disagree."""
    assert runtime_autotune.config_problems is conv_module.config_problems
    assert not hasattr(runtime_autotune, "MAX_WARPS")


def test_up_to_32_warps_are_valid(tmp_path):
    """CUDA runs up to 1024 threads (32 warps) per block: a stored 32-warp config is kept, 64 is not."""
    assert conv_module.config_problems([64, 64, 32, 3, 32]) == []
    assert "num_warps=64 is not a power of two in 1..32" in conv_module.config_problems([64, 64, 32, 3, 64])[0]
    cache = runtime_autotune.AutotuneCache("gpu", tmp_path / "c.json")
    cache.put("k", (64, 64, 32, 3, 32), 1.0, 1)
    cache.save()
    assert runtime_autotune.AutotuneCache("gpu", tmp_path / "c.json").get("k") == (64, 64, 32, 3, 32)


def test_put_names_the_problem():
    with pytest.raises(ValueError, match="num_warps=3"):
        runtime_autotune.get_cache(CPU).put("k", (32, 32, 32, 2, 3), 1.0, 1)


# ---------------------------------------------------------------------------------------------- hostile files
def _nested(path):
    path.write_text("[" * 100000 + "]" * 100000)  # the reproducer: RecursionError in json.loads before


def _huge(path):
    with open(path, "wb") as f:
        f.truncate(files.MAX_CACHE_FILE_BYTES + 1)  # sparse: costs no disk


def _long_int(path):
    path.write_text('{"schema": ' + "1" * 5000 + ', "entries": {}}')  # over Python's int-parsing digit limit


def _nested_header(path):
    path.write_text('{"schema": ' + "[" * 500 + "]" * 500 + ', "entries": {}}')


def _directory(path):
    path.mkdir()


def _dangling(path):
    path.symlink_to(path.parent / "nowhere.json")


def _link_loop(path):
    path.symlink_to(path)


def _fifo(path):
    os.mkfifo(path)  # reading it would block forever


def _bad_utf8(path):
    path.write_bytes(b'{"entries": {"\xff\xfe": 1}}')


def _entries_not_object(path):
    path.write_text('{"entries": [1, 2, 3]}')


def _truncated(path):
    path.write_text('{"schema": 1, "entries": {"k"')


HOSTILE = {
    "nested": (_nested, "nested too deeply"),
    "huge": (_huge, "over the limit"),
    "long-int": (_long_int, "not valid JSON"),
    "nested-header": (_nested_header, "header field 'schema' is a list"),
    "directory": (_directory, "it is a directory"),
    "dangling-link": (_dangling, "dangling symbolic link"),
    "link-loop": (_link_loop, "cannot read it"),
    "fifo": (_fifo, "it is a FIFO"),
    "invalid-utf8": (_bad_utf8, "utf-8"),
    "entries-not-object": (_entries_not_object, "expected an object with 'entries'"),
    "truncated": (_truncated, "not valid JSON"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_autotune_cache_is_ignored_with_a_warning(kind):
    make, reason = HOSTILE[kind]
    path = runtime_autotune.cache_path(CPU)
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    with pytest.warns(UserWarning, match="ignoring autotune cache") as caught:
        cache = runtime_autotune.get_cache(CPU).load()
    message = str(caught[0].message)
    assert str(path) in message and reason in message
    assert len(cache) == 0
    # The run goes on: a launch gets the default config, and tuning can store (replacing a file; a directory stays).
    shape = {"rows": 100, "cin_g": 8, "cout_g": 8, "taps": 9, "groups": 1, "dtype": torch.float32, "gather": True}
    chosen = runtime_autotune.select_config(**shape, device=CPU, launch=lambda c: None)
    assert chosen == conv_module.default_config(100, 8, 8)
    cache.put("k", GOOD, 1.0, 1)
    if kind == "directory":
        with pytest.raises(OSError):
            cache.save()
    else:
        cache.save()
        assert runtime_autotune.AutotuneCache(cache.name, path).get("k") == tuple(GOOD)


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_calibration_file_is_ignored_with_a_warning(kind):
    make, reason = HOSTILE[kind]
    path = D.calibration_path(CPU)
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    with pytest.warns(UserWarning, match="ignoring dispatch calibration") as caught:
        assert D.load_calibration(CPU) == {}
    message = str(caught[0].message)
    assert str(path) in message and reason in message
    if kind != "directory":
        D.save_calibration(CPU, {"k": {"crossover": 0.5}})
        D.clear_calibration_cache()
        assert D.load_calibration(CPU) == {"k": {"crossover": 0.5}}


def test_unreadable_cache_file_is_ignored_with_a_warning(monkeypatch):
    """Permission denied (simulated: the tests may run as root, who may read anything)."""
    path = runtime_autotune.cache_path(CPU)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    real_open = os.open

    def denied(p, *args, **kwargs):
        if os.fspath(p) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", denied)
    with pytest.warns(UserWarning, match=r"ignoring autotune cache .*Permission denied"):
        assert len(runtime_autotune.get_cache(CPU).load()) == 0


def test_a_file_at_the_size_limit_is_still_read(tmp_path, monkeypatch):
    payload = json.dumps({"schema": 1, "entries": {}})
    monkeypatch.setattr(files, "MAX_CACHE_FILE_BYTES", len(payload))
    (tmp_path / "f.json").write_text(payload)
    assert files.read_entries_file(tmp_path / "f.json", "x") == {"schema": 1, "entries": {}}
    (tmp_path / "f.json").write_text(payload + " ")
    with pytest.raises(files.CacheFileError, match="over the limit"):
        files.read_entries_file(tmp_path / "f.json", "x")
    assert files.read_entries_file(tmp_path / "missing.json", "x") is None
