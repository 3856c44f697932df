"""Fixtures of the ops tests: Triton's launch path run for real up to the driver's launch, which records."""

from __future__ import annotations

import pytest

from adatriton.kernels import conv


class RecordingKernel:
    """A compiled kernel's stand-in that records every launcher call."""

    function = None
    packed_metadata = None

    def __init__(self, log: list):
        self.log = log

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        self.log.append(args)


@pytest.fixture
def launcher():
    """``(launches, full)``: the launcher calls, and how many launches took Triton's full JITFunction.run."""
    from triton.runtime.jit import JITFunction

    from bench.host import stubbed_launches  # pandas: only for the tests that use this fixture

    conv.clear_launch_plans()
    launches: list[tuple] = []
    full = [0]
    with stubbed_launches(launcher=True):  # an sm_90 driver that launches nothing
        jit = JITFunction(conv.CONV_KERNEL.fn)

        def compile_recording(key, signature, device, constexprs, options, attrs, warmup):
            kernel = RecordingKernel(launches)
            jit.device_caches[device][0][key] = kernel
            return kernel

        run = jit.run

        def counted_run(*args, **kwargs):
            full[0] += 1
            return run(*args, **kwargs)

        jit._do_compile = compile_recording
        jit.run = counted_run
        # set and restored inside the stubbed block: stubbed_launches patched this global itself, and restores it
        # on leaving, so a monkeypatch undone after that would put the stub back for every later test
        stubbed, conv._conv_elements_kernel = conv._conv_elements_kernel, jit
        try:
            yield launches, full
        finally:
            conv._conv_elements_kernel = stubbed
    conv.clear_launch_plans()
