"""Scoped settings and the environment snapshot of a forward (``adatriton.runtime.context``)."""

import collections
import os

import torch
import torchvision

import adatriton
from adatriton.runtime.context import environment_snapshot, getenv

NAME = "ADATRITON_TEST_SNAPSHOT"


def test_getenv_reads_once_per_snapshot(monkeypatch):
    monkeypatch.setenv(NAME, "a")
    assert getenv(NAME) == "a" and getenv(NAME + "_UNSET", "x") == "x"
    with environment_snapshot():
        assert getenv(NAME) == "a"
        monkeypatch.setenv(NAME, "b")
        assert getenv(NAME) == "a"  # the value of the first read in this block
        with environment_snapshot():  # a new block reads again
            assert getenv(NAME) == "b"
        monkeypatch.delenv(NAME)
        assert getenv(NAME, "x") == "a"
    assert getenv(NAME, "x") == "x"  # outside: os.environ as it is


class _CountingEnviron(collections.UserDict):
    """``os.environ`` that counts the reads of each name."""

    def __init__(self, data):
        super().__init__(data)
        self.reads = collections.Counter()

    def get(self, key, default=None):
        self.reads[key] += 1
        return self.data.get(key, default)


def test_a_forward_reads_each_variable_once(monkeypatch):
    """Without the snapshot every adaptive conv would read $ADATRITON_BACKEND (16 convs here)."""
    torch.manual_seed(0)
    net = adatriton.convert(torchvision.models.resnet50(), "8->32").eval()
    keep = torch.zeros(1, 8, 8, dtype=torch.bool)
    keep[0, :4, :4] = True
    levels = adatriton.LevelMap.from_keep_mask(keep, "8->32")
    monkeypatch.setenv("ADATRITON_BACKEND", "torch")
    environ = _CountingEnviron(os.environ)
    monkeypatch.setattr(os, "environ", environ)
    with torch.inference_mode():
        net.forward_features(torch.randn(1, 3, 64, 64), levels)
    assert environ.reads["ADATRITON_BACKEND"] == 1, environ.reads


def test_compiled_code_reads_the_scoped_settings_without_a_graph_break(monkeypatch):
    """Dynamo traces the settings (torch 2.11 cannot trace ``ContextVar.get``), guards on them and so recompiles when
    a block changes them; another thread sees its own (none: the default)."""
    import threading

    from adatriton.runtime.backend import requested_backend, use_backend

    monkeypatch.delenv("ADATRITON_BACKEND", raising=False)

    def shifted(x):
        name, _ = requested_backend()
        return x + len(name)

    torch._dynamo.reset()
    compiled = torch.compile(shifted, backend="eager", fullgraph=True)
    x = torch.zeros(2)
    with use_backend("auto"):
        assert compiled(x).tolist() == [4.0, 4.0]
        with use_backend("triton"):
            assert compiled(x).tolist() == [6.0, 6.0]
        elsewhere = []
        thread = threading.Thread(target=lambda: elsewhere.append(compiled(x).tolist()))
        thread.start()
        thread.join()
        assert elsewhere == [[5.0, 5.0]]  # "torch"
        assert compiled(x).tolist() == [4.0, 4.0]
    assert compiled(x).tolist() == [5.0, 5.0]
    explanation = torch._dynamo.explain(shifted)(x)
    assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
