"""The per-layer backend dispatcher (``backend="auto"``), its calibration and :func:`adatriton.explain` (CPU)."""

import json
import logging

import pytest
import torch
import torchvision

import adatriton
from adatriton import ops as AF
from adatriton.ops import dispatch as D
from adatriton.runtime import calibration as cal
from adatriton.runtime.files import device_name
from adatriton.tools import calibrate as C

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
SIG3 = D.Signature(256, 256, 3, 2, 1, "float32")
SIG1 = D.Signature(1024, 256, 1, 1, 1, "float32")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets an empty cache dir, so a developer's own calibration never changes a choice."""
    monkeypatch.setenv("ADATRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ADATRITON_BACKEND", raising=False)
    cal.clear_calibration_cache()
    yield
    cal.clear_calibration_cache()


def _map(f_blocks, batch=1, size=8):
    """Level map on a ``size x size`` finest grid (K=2, 4x4 blocks) with the first ``f_blocks`` blocks at level 0."""
    nb = (size // 4) ** 2
    keep = torch.zeros(batch, nb, dtype=torch.bool)
    for n in range(batch):
        keep[n, torch.randperm(nb)[: f_blocks[n] if isinstance(f_blocks, list) else f_blocks]] = True
    keep = keep.view(batch, size // 4, size // 4).repeat_interleave(4, 1).repeat_interleave(4, 2)
    return adatriton.LevelMap.from_keep_mask(keep, "8->32")


def _mr(lm, stage, cin, dtype=torch.float64):
    lay = lm.layout(stage)
    return adatriton.MultiResMap(torch.randn(lay.num_elements, cin, dtype=dtype), lay)


# ---------------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    ("sig", "density", "device", "want"),
    [
        (SIG3, 0.3, CPU, "torch"),
        (SIG3, 0.89, CPU, "torch"),
        (SIG3, 0.95, CPU, "dense"),
        (SIG3, 0.3, CUDA, "triton"),
        (SIG3, 0.5, CUDA, "dense"),
        (SIG3, 0.9, CUDA, "dense"),
        (SIG1, 1.0, CUDA, "triton"),  # 1x1 never densifies
        (SIG1, 1.0, CPU, "torch"),
    ],
)
def test_builtin_rule(sig, density, device, want):
    backend, reason = D.choose(sig, density, device)
    assert backend == want
    assert reason


def test_signature_and_density():
    lm = _map(2)  # 2 of 4 blocks at level 0 on 8x8: stage 1 has 32 + 8 elements, stage 2 32 + 2
    x = _mr(lm, 1, 4)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    assert D.Signature.of(w, 2, 2, x.dtype) == D.Signature(4, 6, 3, 2, 2, "float64")
    with D.recording() as recs, adatriton.use_backend("auto"):
        AF.conv2d(x, w, groups=2, tap_spacing=2)
        AF.conv2d(x, w, groups=2, tap_spacing=2, downsample=True)
    assert [r["elements"] for r in recs] == [40, 34]
    assert [r["density"] for r in recs] == [40 / 64, 34 / 64]


def test_requested_backend(monkeypatch):
    from adatriton.runtime.backend import requested_backend

    assert requested_backend() == ("torch", "default")
    assert requested_backend("auto") == ("auto", "argument")
    monkeypatch.setenv("ADATRITON_BACKEND", "auto")
    assert requested_backend() == ("auto", "$ADATRITON_BACKEND")
    with adatriton.use_backend("dense"):
        assert requested_backend() == ("dense", "use_backend")


# ---------------------------------------------------------------------------------------------- fallback and forcing
def test_auto_triton_that_cannot_run_falls_back_with_debug_log(monkeypatch, caplog):
    monkeypatch.setattr(D, "choose", lambda sig, density, device: ("triton", "test says triton"))
    lm = _map(1)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    x = _mr(lm, 1, 4)
    with caplog.at_level(logging.DEBUG, logger="adatriton.dispatch"), D.recording() as recs:
        out = AF.conv2d(x, w, backend="auto")
    assert recs[0]["backend"] == "torch" and "float64" in recs[0]["reason"]
    assert any("triton cannot run" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(out.values, AF.conv2d(x, w, backend="torch").values)
    # float32 but no interpreter and no GPU
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="adatriton.dispatch"), D.recording() as recs:
        AF.conv_bn_act(_mr(lm, 1, 4, torch.float32), w.float(), relu=True, backend="auto")
    assert recs[0]["backend"] == "torch" and "no CUDA device" in recs[0]["reason"]
    assert caplog.records


def test_forced_backends_are_unchanged_and_raise(monkeypatch):
    lm = _map(1)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    x = _mr(lm, 1, 4)
    for name in ("torch", "dense"):
        with D.recording() as recs:
            AF.conv2d(x, w, backend=name)
        assert recs[0]["backend"] == name and recs[0]["reason"] == "forced by argument"
    with adatriton.use_backend("triton"), pytest.raises(TypeError, match="float32"):
        AF.conv2d(x, w)
    monkeypatch.setenv("ADATRITON_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        AF.conv_bn_act(_mr(lm, 1, 4, torch.float32), w.float())


def test_per_module_forcing():
    conv = torch.nn.Conv2d(4, 8, 3, bias=False).double()
    lm = _map(1)
    x = _mr(lm, 1, 4)
    D.force(conv, "dense")
    try:
        with D.recording() as recs, adatriton.use_backend("torch"):
            AF.conv2d(x, conv.weight, backend="torch")
        assert (recs[0]["backend"], recs[0]["reason"]) == ("dense", "forced for this module")
        with D.forced(conv, "triton"), pytest.raises(TypeError, match="float32"):
            AF.conv2d(x, conv.weight)
        with D.recording() as recs:  # the context restored the earlier forcing
            AF.conv2d(x, conv.weight)
        assert recs[0]["backend"] == "dense"
    finally:
        D.force(conv, None)
    with D.recording() as recs:
        AF.conv2d(x, conv.weight)
    assert recs[0]["backend"] == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        D.force(conv, "cudnn")


# ---------------------------------------------------------------------------------------------- calibration files
def _write_calibration(entries, device=CPU, **head):
    path = cal.calibration_path(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": cal.CALIBRATION_SCHEMA, "device": device_name(device), "entries": entries, **head}
    path.write_text(json.dumps(data))
    cal.clear_calibration_cache()
    return path


def test_calibration_table_changes_the_choice(tmp_path):
    path = _write_calibration({SIG3.key: {"crossover": 0.2}, SIG3.__class__(512, 512, 3, 4, 1, "float32").key: {}})
    assert path.parent == tmp_path and path.name.startswith("dispatch-")
    with pytest.warns(UserWarning, match="malformed"):
        assert D.choose(SIG3, 0.5, CPU)[0] == "dense"  # built-in: torch below 0.9
    assert D.choose(SIG3, 0.1, CPU)[0] == "torch"
    assert "calibrated" in D.choose(SIG3, 0.1, CPU)[1]
    _write_calibration({SIG3.key: {"crossover": None}})
    assert D.choose(SIG3, 0.99, CPU) == ("torch", "calibrated: sparse faster at every density")
    other = D.Signature(256, 256, 3, 1, 1, "float32")
    assert D.choose(other, 0.95, CPU)[1].startswith("built-in")


def test_grouped_convs_go_dense_early_on_the_cpu():
    """The built-in CPU crossover of a grouped conv is 0.02 * sqrt(Cin / groups): memory-bound columns."""
    depthwise, grouped = D.Signature(96, 96, 3, 1, 96, "float32"), D.Signature(256, 256, 3, 1, 32, "float32")
    assert D.choose(depthwise, 0.019, CPU)[0] == "torch" and D.choose(depthwise, 0.021, CPU)[0] == "dense"
    assert D.choose(grouped, 0.05, CPU)[0] == "torch" and D.choose(grouped, 0.06, CPU)[0] == "dense"
    assert "0.057" in D.choose(grouped, 0.06, CPU)[1]
    assert D.choose(depthwise, 0.3, CUDA)[0] == "triton"  # CUDA keeps its own crossover
    assert D.choose(SIG3, 0.3, CPU)[0] == "torch"


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"schema": 99, "device": "x", "entries": {}}),
        json.dumps(
            {"schema": cal.CALIBRATION_SCHEMA, "device": "another-gpu", "entries": {SIG3.key: {"crossover": 0}}}
        ),
        json.dumps([1, 2]),
    ],
)
def test_corrupt_or_foreign_calibration_is_ignored_with_a_warning(text):
    path = cal.calibration_path(CPU)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.warns(UserWarning, match="ignoring dispatch calibration"):
        assert D.choose(SIG3, 0.5, CPU)[0] == "torch"


def test_crossover_interpolation():
    assert C.crossover([0.1, 0.5, 1.0], [1, 2, 3], [2, 2.5, 2.5]) == pytest.approx(0.5 + 0.5 * 0.5 / 1.0)
    assert C.crossover([0.1, 1.0], [1, 1], [2, 2]) is None
    assert C.crossover([0.1, 1.0], [3, 3], [2, 2]) == 0.0
    # a noisy point below the real crossover does not count: dense must keep winning from the crossover on
    assert C.crossover([0.1, 0.3, 0.5, 0.8], [1, 3, 1, 4], [2, 2, 2, 2]) == pytest.approx(0.5 + 0.3 / 3)


# ---------------------------------------------------------------------------------------------- whole models
@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    net = adatriton.convert(torchvision.models.resnet50(), "8->32").double().eval()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def test_auto_matches_torch_backend(resnet50, monkeypatch):
    # Stage-1 3x3 convs see density 0.625, stage-2 ones 0.531: a crossover between them exercises both paths.
    monkeypatch.setattr(D, "CPU_CROSSOVER", 0.6)
    lm = _map([2, 2], batch=2)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.inference_mode():
        with adatriton.use_backend("torch"):
            want = resnet50.forward_features(x, lm)
        with adatriton.use_backend("auto"), D.recording() as recs:
            got = resnet50.forward_features(x, lm)
    assert {r["backend"] for r in recs} == {"torch", "dense"}
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_explain(resnet50):
    lm = _map([1, 3], batch=2)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with adatriton.use_backend("auto"):
        table = adatriton.explain(resnet50, x, lm)
    ada = table[table["adaptive"]]
    assert len(ada) == 9 * 3 + 2  # layer3 + layer4 of ResNet-50: 9 bottlenecks, 2 strided shortcuts
    assert ada["layer"].iloc[0] == "layer3.0.conv1" and ada["layer"].iloc[-1] == "layer4.2.conv3"
    assert ada["density"].between(0, 1).all()
    assert set(ada["backend"]) <= {"torch", "dense"} and ada["reason"].str.len().gt(0).all()
    e = [lm.layout(j).num_elements for j in range(3)]
    # analytic multiply-adds: (elements, cin, cout, k) of every adaptive conv
    convs = [(e[0], 512, 256, 1), (e[1], 256, 256, 3), (e[1], 512, 1024, 1), (e[1], 256, 1024, 1)]
    convs += [(e[1], 1024, 256, 1), (e[1], 256, 256, 3), (e[1], 256, 1024, 1)] * 5
    convs += [(e[1], 1024, 512, 1), (e[2], 512, 512, 3), (e[2], 1024, 2048, 1), (e[2], 512, 2048, 1)]
    convs += [(e[2], 2048, 512, 1), (e[2], 512, 512, 3), (e[2], 512, 2048, 1)] * 2
    assert ada["MAs"].sum() == sum(n * cin * cout * k * k for n, cin, cout, k in convs)
    assert sorted(ada["elements"]) == sorted(n for n, *_ in convs)
    assert (ada["MAs"] == ada["k"] ** 2 * ada["cin"] // ada["groups"] * ada["cout"] * ada["elements"]).all()
    assert ada["density"].tolist() == [n / (2 * 8 * 8) for n in ada["elements"]]
    fr = lm.fractions().tolist()
    row = ada[ada["layer"] == "layer4.1.conv2"].iloc[0]
    assert row["stage"] == 2 and row["fractions"] == pytest.approx(fr)
    assert ada[ada["layer"] == "layer3.0.conv1"].iloc[0]["fractions"] == [1.0]
    dense = table[~table["adaptive"]]
    # the stem, layer1 and layer2 (module calls and dense_bottleneck's functional conv2 / shortcut) appear too
    assert {"conv1", "layer1.0.conv2", "layer2.0.conv2", "layer2.0.downsample.0"} <= set(dense["layer"])
    assert len(dense) == 1 + 3 * 3 + 1 + 4 * 3 + 1
    stem = dense[dense["layer"] == "conv1"].iloc[0]
    assert stem["MAs"] == 2 * 32 * 32 * 64 * 3 * 7 * 7
    # the dense backend's own conv2d on an adaptive weight is not listed a second time as a dense-network conv
    with adatriton.use_backend("dense"):
        on_dense = adatriton.explain(resnet50, x, lm)
    assert len(on_dense) == len(table) and set(on_dense[on_dense["adaptive"]]["backend"]) == {"dense"}
    assert on_dense["MAs"].sum() == table["MAs"].sum()


def test_calibrate_on_cpu_writes_the_file(tmp_path):
    torch.manual_seed(0)
    net = adatriton.convert(torchvision.models.resnet50(), "8->32").eval()
    x = torch.randn(1, 3, 64, 64)
    entries = C.calibrate(net, x, densities=(0.2, 1.0), repeats=1)
    keys = {D.Signature(256, 256, 3, s, 1, "float32").key for s in (1, 2)} | {
        D.Signature(512, 512, 3, s, 1, "float32").key for s in (2, 4)
    }
    assert set(entries) == keys
    for entry in entries.values():
        assert entry["sparse"] == "torch" and len(entry["densities"]) == 2
        assert entry["crossover"] is None or 0 <= entry["crossover"] <= 1
    path = cal.calibration_path(CPU)
    assert path.parent == tmp_path and path.exists()
    saved = json.loads(path.read_text())
    assert saved["device"] == device_name(CPU) and set(saved["entries"]) == keys
    cal.clear_calibration_cache()
    assert set(cal.load_calibration(CPU)) == keys
    assert D.choose(D.Signature(512, 512, 3, 4, 1, "float32"), 0.5, CPU)[1].startswith("calibrated")
    assert len(C.table(entries)) == 8


def test_calibrate_cli(capsys):
    entries = C.main(["--model", "resnet50", "--size", "32", "32", "--device", "cpu", "--repeats", "1"])
    assert entries
    out = capsys.readouterr().out
    assert "calibration file:" in out and "dense_ms" in out
