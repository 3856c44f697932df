"""The persistent conv autotuner: keys, the cache file (round trip, atomicity, corrupt and foreign files), the
tuning policy of ``select_config`` in the interpreter, ``tune_model`` and the CLI's failure mode.

Most tests drive ``select_config`` with a fake ``launch`` that records its calls; one tunes a real tiny kernel
launch in the interpreter.
"""

import json
import math

import pytest
import torch
import triton
from torch import nn

from adatriton.kernels.conv import ConvConfig, conv_configs, default_config, prune_configs
from adatriton.runtime import autotune as runtime_autotune
from adatriton.runtime.calibration import calibration_path
from adatriton.runtime.files import cpu_model, device_name, slug
from adatriton.tools import autotune as tools_autotune

SHAPE = {"rows": 1000, "cin_g": 64, "cout_g": 64, "taps": 9, "groups": 1, "dtype": torch.float32, "gather": True}
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Every test gets its own cache directory, no tuning from the environment and fresh module state."""
    monkeypatch.setenv("ADATRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("ADATRITON_AUTOTUNE", raising=False)
    monkeypatch.setattr(runtime_autotune, "_caches", {})
    monkeypatch.setattr(runtime_autotune, "_records", {})
    monkeypatch.setattr(runtime_autotune, "_untunable", set())
    monkeypatch.setattr(runtime_autotune, "_save_failed", set())


class FakeLaunch:
    """Stands in for a kernel launch: records the configs it ran with, optionally failing for some."""

    def __init__(self, fail=()):
        self.calls: list[ConvConfig] = []
        self.fail = set(fail)

    def __call__(self, config):
        self.calls.append(config)
        if config in self.fail:
            raise RuntimeError("out of resources (fake)")
        return torch.zeros(1)


def _select(launch, **overrides):
    return runtime_autotune.select_config(**{**SHAPE, **overrides}, device=CPU, launch=launch)


# ---------------------------------------------------------------------------------------------- keys and paths
def test_key_buckets_rows_and_keeps_the_rest_exact():
    key = lambda **kw: runtime_autotune.conv_key(**{**SHAPE, **kw})  # noqa: E731
    assert key(rows=1000) == key(rows=1024) == key(rows=513)
    assert key(rows=1025) != key(rows=1024)
    assert key(dtype=torch.float16) != key()
    assert key(cin_g=128) != key()
    assert key(cout_g=128) != key()
    assert key(taps=1) != key()
    assert key(groups=2) != key()
    assert key(gather=False) != key()
    assert key(rows=4000, cin_g=256, cout_g=256, dtype=torch.float16) == (
        "cin=256,cout=256,taps=9,groups=1,dtype=float16,gather=1,log2rows=12"
    )
    assert key(rows=0).endswith("log2rows=0") and key(rows=1).endswith("log2rows=0")
    assert key(rows=2).endswith("log2rows=1")


def test_cache_dir_and_path(monkeypatch, tmp_path):
    assert runtime_autotune.cache_dir() == tmp_path
    monkeypatch.delenv("ADATRITON_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime_autotune.cache_dir() == tmp_path / "xdg" / "adatriton"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runtime_autotune.cache_dir() == tmp_path / "home" / ".cache" / "adatriton"

    assert device_name(CPU, triton_timings=True) == "interpreter-cpu"
    # the calibration file's name of the same CPU: its model, as before the naming functions became one
    assert device_name("cpu") == f"cpu-{cpu_model()}"
    assert calibration_path("cpu").name == f"dispatch-{slug('cpu-' + cpu_model())}.json"
    path = runtime_autotune.cache_path("cpu")
    assert path.name == f"conv-interpreter-cpu-triton{triton.__version__}.json"
    assert runtime_autotune.get_cache(CPU) is runtime_autotune.get_cache("cpu")
    assert runtime_autotune.get_cache(CPU).path == path


# ---------------------------------------------------------------------------------------------- the cache file
def test_save_reload_round_trip_is_atomic(tmp_path):
    cache = runtime_autotune.AutotuneCache("interpreter-cpu", tmp_path / "sub" / "c.json")
    assert cache.get("k") is None
    cache.put("k", ConvConfig(64, 32, 32, 3, 4), 0.25, 7)
    cache.put("j", (32, 32, 32, 2, 4), 1.5, 2)
    assert cache.save() == tmp_path / "sub" / "c.json"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["c.json", "c.json.lock"]  # no temp file

    data = json.loads((tmp_path / "sub" / "c.json").read_text())
    assert data["schema"] == runtime_autotune.SCHEMA and data["gpu"] == "interpreter-cpu"
    assert data["triton"] == triton.__version__
    assert data["entries"]["k"] == {"config": [64, 32, 32, 3, 4], "time_ms": 0.25, "candidates": 7}

    again = runtime_autotune.AutotuneCache("interpreter-cpu", tmp_path / "sub" / "c.json")
    got = again.get("k")
    assert got == ConvConfig(64, 32, 32, 3, 4) and isinstance(got, ConvConfig)
    assert again.get("j") == (32, 32, 32, 2, 4)
    assert again.entry("k")["time_ms"] == 0.25 and len(again) == 2


def test_save_keeps_entries_of_another_writer(tmp_path):
    path = tmp_path / "c.json"
    a, b = runtime_autotune.AutotuneCache("gpu", path), runtime_autotune.AutotuneCache("gpu", path)
    a.load(), b.load()  # both loaded the (missing) file before either saved
    a.put("a", (32, 32, 32, 2, 4), 1.0, 1)
    a.save()
    b.put("b", (64, 64, 32, 3, 4), 2.0, 3)
    b.save()
    fresh = runtime_autotune.AutotuneCache("gpu", path)
    assert fresh.get("a") == (32, 32, 32, 2, 4) and fresh.get("b") == (64, 64, 32, 3, 4)


def _payload(**overrides):
    entries = {"k": {"config": [32, 32, 32, 2, 4], "time_ms": 1.0, "candidates": 2}}
    return {"schema": 1, "gpu": "interpreter-cpu", "triton": triton.__version__, "entries": entries, **overrides}


@pytest.mark.parametrize(
    "text, reason",
    [
        pytest.param("{not json", "not valid JSON", id="bad-json"),
        pytest.param("", "not valid JSON", id="empty"),
        pytest.param("[1, 2]", "not an autotune cache", id="list"),
        pytest.param(json.dumps(_payload(entries=[])), "not an autotune cache", id="entries-list"),
        pytest.param(json.dumps(_payload(schema=2)), "schema 2", id="schema"),
        pytest.param(json.dumps(_payload(gpu="NVIDIA H100 80GB HBM3")), "belongs to GPU", id="foreign-gpu"),
        pytest.param(json.dumps(_payload(triton="0.0.1")), "Triton '0.0.1'", id="foreign-triton"),
    ],
)
def test_corrupt_or_foreign_file_is_ignored_with_a_warning(tmp_path, text, reason):
    path = runtime_autotune.cache_path(CPU)
    path.write_text(text)
    cache = runtime_autotune.get_cache(CPU)
    with pytest.warns(UserWarning, match=reason) as caught:
        assert cache.get("k") is None
    assert str(path) in str(caught[0].message)
    # Usable afterwards: tuning overwrites the bad file with a valid one.
    cache.put("k", (64, 64, 32, 3, 4), 0.5, 2)
    cache.save()
    assert runtime_autotune.AutotuneCache("interpreter-cpu", path).get("k") == (64, 64, 32, 3, 4)


def test_malformed_entries_are_dropped_and_the_rest_kept(tmp_path):
    payload = _payload()
    payload["entries"]["bad-len"] = {"config": [32, 32, 32], "time_ms": 1.0, "candidates": 2}
    payload["entries"]["bad-type"] = {"config": [32, 32, 32, 2, "4"], "time_ms": 1.0, "candidates": 2}
    payload["entries"]["bad-time"] = {"config": [32, 32, 32, 2, 4], "time_ms": "fast", "candidates": 2}
    path = runtime_autotune.cache_path(CPU)
    path.write_text(json.dumps(payload))
    with pytest.warns(UserWarning, match="dropping 3 malformed"):
        cache = runtime_autotune.get_cache(CPU).load()
    assert cache.get("k") == (32, 32, 32, 2, 4)
    assert cache.get("bad-len") is None and cache.get("bad-type") is None and cache.get("bad-time") is None


def test_put_rejects_invalid_entries():
    cache = runtime_autotune.get_cache(CPU)
    with pytest.raises(ValueError):
        cache.put("k", (32, 32, 32, 2, 4), math.nan, 1)
    with pytest.raises(ValueError):
        cache.put("k", (32, 32, 32, 2, 4), 1.0, 0)


# ---------------------------------------------------------------------------------------------- select_config
def test_without_tuning_returns_the_default_and_never_launches(tmp_path):
    launch = FakeLaunch()
    assert _select(launch) == default_config(SHAPE["rows"], SHAPE["cin_g"], SHAPE["cout_g"])
    assert launch.calls == []
    assert list(tmp_path.iterdir()) == []  # nothing tuned, nothing written


def test_without_tuning_a_cached_config_wins():
    cache = runtime_autotune.get_cache(CPU)
    cache.put(runtime_autotune.conv_key(**SHAPE), (64, 64, 64, 3, 4), 1.0, 2)
    launch = FakeLaunch()
    assert _select(launch, rows=700) == (64, 64, 64, 3, 4)  # same bucket
    assert launch.calls == []


def test_tuning_in_the_interpreter_times_two_candidates_then_hits_the_cache(tmp_path):
    candidates = prune_configs(conv_configs(), SHAPE["rows"], SHAPE["cin_g"], SHAPE["cout_g"])
    assert len(candidates) > 2  # so the interpreter's limit is what is being tested
    launch = FakeLaunch()
    with runtime_autotune.tuning():
        assert runtime_autotune.is_tuning()
        chosen = _select(launch)
    assert not runtime_autotune.is_tuning()
    assert launch.calls == candidates[:2]
    assert chosen in candidates[:2]

    path = runtime_autotune.cache_path(CPU)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".lock"]  # saved, atomically
    stored = runtime_autotune.AutotuneCache("interpreter-cpu", path)
    entry = stored.entry(runtime_autotune.conv_key(**SHAPE))
    assert ConvConfig(*entry["config"]) == chosen and entry["candidates"] == 2 and entry["time_ms"] >= 0

    again = FakeLaunch()
    with runtime_autotune.tuning():
        assert _select(again, rows=1024) == chosen  # the same bucket
    assert again.calls == []
    assert _select(again) == chosen  # and without tuning
    assert again.calls == []


def test_environment_variable_turns_tuning_on_and_the_context_manager_off(monkeypatch):
    monkeypatch.setenv("ADATRITON_AUTOTUNE", "1")
    assert runtime_autotune.is_tuning()
    with runtime_autotune.tuning(False):
        launch = FakeLaunch()
        _select(launch)
        assert launch.calls == []
    launch = FakeLaunch()
    _select(launch)
    assert 1 <= len(launch.calls) <= 2


def test_failing_candidates_are_skipped_and_all_failing_falls_back_to_the_default():
    candidates = prune_configs(conv_configs(), SHAPE["rows"], SHAPE["cin_g"], SHAPE["cout_g"])
    launch = FakeLaunch(fail={candidates[0]})
    with runtime_autotune.tuning():
        assert _select(launch) == candidates[1]

    launch = FakeLaunch(fail=set(conv_configs()))
    with runtime_autotune.tuning():
        got = _select(launch, cin_g=128)
    assert got == default_config(SHAPE["rows"], 128, SHAPE["cout_g"])
    # not stored
    assert runtime_autotune.get_cache(CPU).get(runtime_autotune.conv_key(**{**SHAPE, "cin_g": 128})) is None
    launch.calls.clear()
    with runtime_autotune.tuning():
        assert _select(launch, cin_g=128) == got
    assert launch.calls == []  # not retried on every launch


def test_unwritable_cache_dir_warns_once_and_keeps_the_result_in_memory(monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ADATRITON_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # mkdir fails under a file
    with runtime_autotune.tuning():
        with pytest.warns(UserWarning) as caught:
            chosen = _select(FakeLaunch())
        messages = [str(w.message) for w in caught]
        assert sum("cannot save autotune cache" in m for m in messages) == 1, messages
        launch = FakeLaunch()
        assert _select(launch) == chosen and launch.calls == []


def test_tunes_a_real_kernel_launch_in_the_interpreter():
    from adatriton.kernels.conv import conv_elements, pack_weight

    gen = torch.Generator().manual_seed(0)
    values = torch.randn(20, 16, generator=gen)
    index = torch.randint(0, 21, (20, 9), generator=gen)  # 20 = outside, reads zero
    weight = torch.randn(8, 16, 3, 3, generator=gen)
    packed = pack_weight(weight, 1)

    def launch(config):
        return conv_elements(values, index, packed, taps=9, config=config)

    with runtime_autotune.tuning():
        config = runtime_autotune.select_config(
            rows=20, cin_g=16, cout_g=8, taps=9, groups=1, dtype=values.dtype, gather=True, device=CPU, launch=launch
        )
    assert config in prune_configs(conv_configs(), 20, 16, 8)
    out = launch(config)
    src = torch.cat([values, values.new_zeros(1, 16)])[index]  # (20, 9, 16)
    expected = torch.einsum("etc,oct->eo", src.double(), weight.reshape(8, 16, 9).double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- tune_model
class TinyModel(nn.Module):
    """Calls select_config like the triton backend does, for two shapes, with the input's dtype."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward_features(self, x, levels):
        from adatriton.runtime.backend import resolve_backend

        assert resolve_backend() == "triton" and torch.is_inference_mode_enabled()
        assert x.dtype == self.weight.dtype == torch.float16 and not self.training
        for rows in (100, 100, 5000):
            runtime_autotune.select_config(
                rows=rows, cin_g=64, cout_g=32, taps=9, groups=1, dtype=x.dtype, gather=True, device=x.device,
                launch=lambda cfg: None,
            )  # fmt: skip
        return x


def test_tune_model_reports_every_key_and_leaves_the_model_alone():
    model = TinyModel()
    table = tools_autotune.tune_model(model, torch.randn(1, 3, 8, 8), None, dtype=torch.float16)
    assert model.weight.dtype == torch.float32  # a cast copy ran, the caller's weights keep their precision
    assert list(table.columns[:6]) == ["key", *ConvConfig.fields]
    assert len(table) == 2 and table["tuned"].all() and list(table["calls"]) == [2, 1]
    assert all("dtype=float16" in k for k in table["key"])
    assert (table["candidates"] >= 1).all() and (table["time_ms"] >= 0).all()

    again = tools_autotune.tune_model(model, torch.randn(1, 3, 8, 8), None, dtype=torch.float16)
    assert not again["tuned"].any() and set(again["source"]) == {"cache"}
    assert list(again["BLOCK_M"]) == list(table["BLOCK_M"])


def test_tune_model_warns_when_no_triton_conv_ran():
    class Dense(nn.Module):
        def forward_features(self, x, levels):
            return x

    with pytest.warns(UserWarning, match="no Triton conv ran"):
        table = tools_autotune.tune_model(Dense(), torch.randn(1, 3, 8, 8), None, dtype=torch.float32)
    assert len(table) == 0


# ---------------------------------------------------------------------------------------------- CLI helpers
def test_random_level_map_keeps_the_requested_fraction():
    lm = tools_autotune.random_level_map(256, 512, 0.3, "8->32", seed=1)
    assert lm.shape == (1, 32, 64) and lm.num_levels == 2
    blocks = lm.levels[:, ::4, ::4]
    assert (blocks == 0).sum().item() == round(0.3 * blocks.numel())
    assert torch.equal(lm.levels, tools_autotune.random_level_map(256, 512, 0.3, "8->32", seed=1).levels)
    odd = tools_autotune.random_level_map(100, 70, 0.5, "16->32")  # the OS16 grid, not a multiple of 4
    assert odd.shape == (1, 7, 5) and odd.num_levels == 1
    assert tools_autotune.random_level_map(64, 64, 0.5, "16") is None


def test_cli_without_cuda_or_interpreter_exits_with_a_message(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        tools_autotune.main(["--model", "resnet50", "--size", "64", "64"])
    with pytest.raises(SystemExit, match="TRITON_INTERPRET"):
        tools_autotune.main(["--device", "cpu"])


def test_gpu_timing_uses_do_bench_and_skips_configs_that_fail(monkeypatch):
    import triton.testing

    candidates = conv_configs()[:4]
    fake_ms = {candidates[0]: 3.0, candidates[1]: 1.0, candidates[2]: 0.5, candidates[3]: 2.0}

    def fake_do_bench(fn, warmup, rep):
        return fake_ms[fn()]

    def launch(config):
        if config == candidates[2]:  # the fastest tile does not fit: skipped, not chosen
            raise RuntimeError("out of resources (fake)")
        return config

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    timed = runtime_autotune._time_candidates(candidates, launch, on_gpu=True)
    assert [cfg for _, cfg in timed] == [candidates[0], candidates[1], candidates[3]]
    assert min(timed)[1] == candidates[1]
