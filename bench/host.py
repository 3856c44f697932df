"""``host``: the host (Python and dispatcher) cost of the adaptive ResNet-101 backbone, measured on the CPU with the
Triton launches replaced by no-ops, so that what is left is what a GPU would wait on while the CPU issues work.

The adaptive ResNet-101 8->32 and 8->16 backbones (``net.backbone_network()``: stem .. ``layer4``, densified, the
graph path's conversion) run on the CPU with ``backend="triton"``
under ``TRITON_INTERPRET=1`` (so the triton path is allowed on the CPU). ``adatriton.kernels.conv.conv_elements``
runs in full and launches through Triton's own ``JITFunction.run`` (binder, cache key, launch metadata) with only
the driver's launch replaced by a no-op (:func:`stubbed_launches` with ``launcher=True``, :func:`no_launch_jit`);
``adatriton.kernels.densify.densify_elements`` is patched, in every module that holds a reference to it, by a
no-op that returns ``torch.empty`` of the right shape and dtype. The dense part (stem, layer1, layer2) computes once
per input (:func:`graph_adaptive_part`); everything below is measured over the **adaptive part** only: from the
moment the dense finest-grid features exist (the level map is handed to the network as a callable ``levels``) to the
densified ``layer4`` output: level map and its checks, ``from_dense``, the adaptive bottlenecks, densify.

Per conversion, two scenarios (column ``scenario``):

- ``reused_map``: one :class:`~adatriton.LevelMap` whose index tables are built before (the steady state of a
  fixed map);
- ``new_map``: a fresh level-map tensor per forward (a copy made outside the measured part), so the map, its
  layouts and tap tables are built inside every forward: the per-image / learned-mask case.

Per row (one per conversion and scenario):

- ``launches_per_forward``: device ops of the adaptive part, i.e. the ATen ops that would launch a kernel on a GPU
  (every op except views, metadata and allocations: :func:`is_device_op`) plus the Triton launches (stub calls);
  the ops inside adatriton's custom ops are counted too (their implementation is entered);
- ``syncs_per_forward``: host-device synchronisations (:func:`sync_reason`): ``_local_scalar_dense`` (``item``,
  ``int``/``bool``/``float`` of a tensor), ``nonzero``, ``masked_select``, ``unique``, boolean-mask
  ``index``/``index_put_``, ``repeat_interleave`` with tensor repeats, ..., and ``tolist``/``numpy``/``cpu`` on a
  tensor (a device-to-host copy on a GPU);
- ``convs_per_forward``: adaptive convs of one forward (``adatriton.ops.dispatch.recording()``), all on triton;
- ``time_median_ms`` (mean, min, max): host time of the adaptive part, stubs included: the CPU time of the thread
  that issues the work (``time.thread_time``), over ``--iters`` forwards (no counting then; the scenarios' forwards
  interleaved). CPU time, not wall time, because on a shared machine the wall time mostly measures the waits for
  a core (it is in the notes). ``host_us_per_conv`` = median / convs. It includes the launch path of every conv:
  with a reused map its eager plan (``adatriton.ops.conv``) hands the launch straight to Triton's launcher, and a
  note gives the figure with :func:`adatriton.ops.eager_plans` off (every conv through the checks, the dispatcher,
  ``conv_elements`` and its remembered launch), timed in the same run; and the CPU execution of the ops that are
  not stubbed: negligible with a reused map (the BatchNorm folding works
  on per-channel vectors), but with a new map it includes computing the map's
  index tables on the CPU (``bookkeeping_ms`` times that work alone, in wall time), device work on a GPU;
- ``bookkeeping_ms``: building the level map and every index table once, timed apart (as in ``table2``).

The counts come from one extra forward under a :class:`OpCounter` (a ``TorchDispatchMode`` plus a
``TorchFunctionMode``), which is not timed. Sizes: ``--full`` 1x3x512x1024, ``--quick`` 1x3x256x512; level-0
fraction 0.3 (``--fractions``, first value), clustered synthetic map (``masks.synthetic(..., kind="blobs")``).
``--device`` and ``--backends`` do not apply: the suite runs on the CPU with the triton backend.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.fx as fx
import torchvision
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import adatriton
from adatriton import masks
from adatriton.core.strides import num_levels_of
from adatriton.ops.conv import eager_plans
from adatriton.runtime.context import environment_snapshot

from ._measure import measure, median_interval, peak_memory_mb, reset_peak_memory
from ._networks import level_fractions, prepare_levelmap
from ._schema import Row
from ._suite import Context, Suite

__all__ = [
    "SCENARIOS",
    "SUITE",
    "TARGETS",
    "OpCounter",
    "OpCounts",
    "graph_adaptive_part",
    "host_time_verdict",
    "is_device_op",
    "patch_references",
    "run",
    "stubbed_launches",
    "summarize",
    "sync_reason",
]

#: ``reused_map``: a prepared level map passed to every forward; ``new_map``: a fresh map tensor per forward.
SCENARIOS = ("reused_map", "new_map")
MODEL = "resnet101"
#: The issues' targets for the host path (reused map): device ops <= ``ops_per_conv`` x convs + ``ops_constant``,
#: ``syncs`` syncs per forward, at most ``host_us_per_conv`` (issue 20: Triton's launcher included); a new map:
#: ``syncs_per_map``.
TARGETS = {"ops_per_conv": 1.2, "ops_constant": 16, "syncs": 0, "host_us_per_conv": 25.0, "syncs_per_map": 1}

#: ATen ops that never launch a kernel: views and metadata (their outputs alias an input, or they change a view).
VIEW_OPS = frozenset(
    {
        "view",
        "_unsafe_view",
        "_reshape_alias",
        "permute",
        "slice",
        "select",
        "as_strided",
        "t",
        "transpose",
        "expand",
        "expand_as",
        "detach",
        "alias",
        "unsqueeze",
        "squeeze",
        "narrow",
        "split",
        "split_with_sizes",
        "unbind",
        "chunk",
        "view_as",
        "diagonal",
        "movedim",
        "lift_fresh",
        "_nested_tensor_size",
        "sym_size",
        "sym_stride",
        "sym_numel",
        "sym_storage_offset",
        "is_contiguous",
        "dim",
        "size",
        "stride",
        # in-place metadata: they change the tensor's view, not its data
        "detach_",
        "squeeze_",
        "unsqueeze_",
        "t_",
        "transpose_",
        "as_strided_",
        "swapdims_",
        "set_",
    }
)
#: ATen ops that only allocate.
ALLOC_OPS = frozenset(
    {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "empty_permuted", "resize_"}
)
#: ATen ops whose result the host must wait for (a data-dependent size or a value read on the host).
SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",
        "item",
        "nonzero",
        "nonzero_numpy",
        "argwhere",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "unique_dim_consecutive",
        "is_nonzero",
        "equal",
        "bincount",
        "histogram",
    }
)
#: Indexing ops that synchronise when an index is a boolean (or uint8) mask: it becomes ``nonzero``.
MASK_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index_put"})
#: Tensor methods (seen by the ``TorchFunctionMode``) that copy a device tensor to the host.
HOST_READS = frozenset({"tolist", "numpy", "cpu"})


def _op_name(func) -> str:
    return func.overloadpacket.__name__


def sync_reason(func, args: tuple, kwargs: Mapping[str, Any]) -> str | None:
    """Why the ATen op ``func`` on ``args`` synchronises the host with the device, or None when it does not.

    Returns:
        The op's name, ``"<op>(bool mask)"`` for boolean-mask indexing, ``"repeat_interleave(tensor repeats)"``.
    """
    name = _op_name(func)
    if name in SYNC_OPS:
        return name
    if name in MASK_INDEX_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
            return f"{name}(bool mask)"
    if name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor"):
        if kwargs.get("output_size") is None:
            return "repeat_interleave(tensor repeats)"
    return None


def _storages(values) -> set[int]:
    flat, _ = tree_flatten(values)
    return {t.untyped_storage().data_ptr() for t in flat if isinstance(t, torch.Tensor)}


def is_device_op(func, args: tuple, kwargs: Mapping[str, Any], out: Any) -> bool:
    """Whether the ATen op ``func`` would launch a kernel on a GPU: an in-place op, or an op with a tensor output
    that is not an allocation (:data:`ALLOC_OPS`), a view or metadata op (:data:`VIEW_OPS`), nor a non-mutating op
    whose every tensor output shares storage with an input (``contiguous`` of a contiguous tensor, a ``reshape``
    that views). Ops without a tensor output (``item``, ``is_nonzero``) are syncs, counted apart."""
    name = _op_name(func)
    if name in ALLOC_OPS or name in VIEW_OPS or name == "_local_scalar_dense":
        return False
    if func._schema.is_mutable:
        return True
    outputs = _storages(out)
    return bool(outputs) and not outputs <= _storages((args, kwargs))


@dataclass
class OpCounts:
    """What one measured stretch issued.

    Attributes:
        device_ops: ATen ops that would launch a kernel, by name (Triton launches not included).
        syncs: host-device synchronisations, by reason.
        launches: Triton launches (stub calls), by launcher (``conv``, ``densify``).
    """

    device_ops: collections.Counter = field(default_factory=collections.Counter)
    syncs: collections.Counter = field(default_factory=collections.Counter)
    launches: collections.Counter = field(default_factory=collections.Counter)

    @property
    def total_ops(self) -> int:
        """ATen device ops plus Triton launches."""
        return sum(self.device_ops.values()) + sum(self.launches.values())

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())


class _HostReads(TorchFunctionMode):
    def __init__(self, counter: OpCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS and args and isinstance(args[0], torch.Tensor):
            self.counter.current.syncs[name] += 1
        return func(*args, **(kwargs or {}))


class OpCounter(TorchDispatchMode):
    """Counts device ops and syncs (:class:`OpCounts`): into :attr:`counts` while :attr:`active`, else into
    :attr:`outside`. Use as ``with counter.watch(): ...``.

    Custom ops (``adatriton::triton_conv``, ...) are not counted themselves: their implementation is entered with
    the mode still on, so the ops (and stubbed launches) inside count as they would in eager code.
    """

    def __init__(self):
        super().__init__()
        self.active = False
        self.counts = OpCounts()
        self.outside = OpCounts()

    @property
    def current(self) -> OpCounts:
        """Where counts go now: :attr:`counts` while active, else :attr:`outside`."""
        return self.counts if self.active else self.outside

    @contextlib.contextmanager
    def watch(self) -> Iterator[OpCounter]:
        """Install the dispatch mode and the function mode (``tolist``/``numpy``/``cpu``)."""
        with _HostReads(self), self:
            yield self

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace not in ("aten", "prims"):
            key = torch._C.DispatchKey.CompositeExplicitAutograd
            if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), key):
                with self:
                    return func._op_dk(key, *args, **kwargs)
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        reason = sync_reason(func, args, kwargs)
        if reason is not None:
            self.current.syncs[reason] += 1
        if is_device_op(func, args, kwargs, out):
            self.current.device_ops[_op_name(func)] += 1
        return out


# ---------------------------------------------------------------------------------------------------- the stubs
def patch_references(replacements: Mapping[Callable, Callable]) -> list[tuple[object, str, Callable]]:
    """Replace every module attribute (over ``sys.modules``) that *is* one of the ``replacements``' keys by its
    value: the defining module and every module that imported the function by name.

    Returns:
        ``(module, attribute, original)`` per patched reference, for :func:`restore_references`.
    """
    by_id = {id(original): (original, new) for original, new in replacements.items()}
    patched = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            hit = by_id.get(id(value))
            if hit is not None and value is hit[0]:
                setattr(module, attr, hit[1])
                patched.append((module, attr, value))
    return patched


def restore_references(patched: list[tuple[object, str, Callable]]) -> None:
    """Undo :func:`patch_references`."""
    for module, attr, original in reversed(patched):
        setattr(module, attr, original)


class NoLaunchKernel:
    """Stands in for Triton's ``CompiledKernel`` on a machine without a GPU: ``launch_metadata`` does what the real
    one does before it needs the loaded binary, and ``run`` (the driver's launcher) only calls ``on_launch``.
    Everything before it in ``JITFunction.run`` (driver queries, the binder, the cache key, the global checks) is
    Triton's own code."""

    function = None
    packed_metadata = None

    def __init__(self, on_launch: Callable[[], None]):
        self.on_launch = on_launch

    def launch_metadata(self, grid, stream, *args) -> dict | None:
        from triton import knobs

        # as CompiledKernel.launch_metadata: None without a launch hook, else a dict (a LazyDict there)
        if knobs.runtime.launch_enter_hook is None:
            return None
        return {"name": "_conv_elements_kernel", "function": self.function, "stream": stream}

    def run(self, *args) -> None:
        self.on_launch()


class _CpuDriver:
    """The three queries ``JITFunction.run`` makes of the active driver, answered for an sm_90 device 0."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


def no_launch_jit(fn: Callable, on_launch: Callable[[], None]):
    """A ``triton.runtime.jit.JITFunction`` of the Python kernel ``fn`` whose compile step returns a
    :class:`NoLaunchKernel` (kept in Triton's kernel cache like a compiled one): calling it runs Triton's launch
    path up to the driver's launch, which is a no-op. Needs :class:`_CpuDriver` active (:func:`stubbed_launches`)."""
    from triton.runtime.jit import JITFunction

    jit = JITFunction(fn)

    def compile_nothing(key, signature, device, constexprs, options, attrs, warmup):
        kernel = NoLaunchKernel(on_launch)
        jit.device_caches[device][0][key] = kernel
        return kernel

    jit._do_compile = compile_nothing  # the instance attribute shadows the method
    return jit


@contextlib.contextmanager
def _cpu_driver() -> Iterator[None]:
    from triton.runtime.driver import driver

    before = driver._active  # noqa: SLF001 -- None until first used; reset_active() would create a CUDA driver
    driver.set_active(_CpuDriver())
    try:
        yield
    finally:
        driver.set_active(before)


@contextlib.contextmanager
def stubbed_launches(counter: OpCounter | None = None, launcher: bool = False) -> Iterator[collections.Counter]:
    """Replace the Triton launches by no-ops of the right output shape while inside.

    With ``launcher=False``, ``conv_elements(values, index, weight, ...)`` itself is replaced: it returns
    ``torch.empty(M, Cout)`` (``M`` = rows of the tap table, else of ``values``; ``Cout`` from the weight, raw or
    packed; dtype ``out_dtype`` or the values'). With ``launcher=True``, ``conv_elements`` runs in full and calls
    Triton's own ``JITFunction.run`` of the conv kernel (the binder, the cache key, ...) with only the driver's
    launch replaced (:func:`no_launch_jit`, the driver answering for an sm_90 GPU): the real host cost of a launch.
    ``densify_elements(values, id_map, channels_last=True)`` returns ``torch.empty(N, C, H, W)``, channels-last by
    default, either way.

    Args:
        counter: also count each call as a Triton launch in its :class:`OpCounts` (:attr:`OpCounter.current`).
        launcher: run ``conv_elements`` and Triton's launcher (see above).

    Yields:
        ``Counter`` of every stub call (``conv``, ``densify``), counted or not.
    """
    from adatriton.kernels import conv as kconv
    from adatriton.kernels import densify as kdensify

    calls: collections.Counter = collections.Counter()

    def launched(kind: str) -> None:
        calls[kind] += 1
        if counter is not None:
            counter.current.launches[kind] += 1

    def conv_stub(values, index, weight, *args, out_dtype=None, **kwargs):
        launched("conv")
        rows = values.shape[0] if index is None else index.shape[0]
        # the conv's own (Cout, Cin/g, k, k) weight, or a packed (g, k*k*Cin/g, Cout/g) copy
        cout = weight.shape[0] if weight.dim() == 4 else weight.shape[0] * weight.shape[-1]
        return torch.empty(rows, cout, dtype=out_dtype or values.dtype, device=values.device)

    def densify_stub(values, id_map, channels_last=True, *args, **kwargs):
        launched("densify")
        n, h, w = id_map.shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty(n, values.shape[1], h, w, dtype=values.dtype, device=values.device, memory_format=fmt)

    if launcher:
        kernel = kconv.CONV_KERNEL
        jit, listener = _shared_no_launch_jit(getattr(kernel, "fn", kernel))
        replacements = {kernel: jit, kdensify.densify_elements: densify_stub}
    else:
        replacements = {kconv.conv_elements: conv_stub, kdensify.densify_elements: densify_stub}
    with _cpu_driver() if launcher else contextlib.nullcontext():
        patched = patch_references(replacements)
        if launcher:
            before, listener[0] = listener[0], lambda: launched("conv")
        try:
            yield calls
        finally:
            if launcher:
                listener[0] = before
            restore_references(patched)


@functools.cache
def _shared_no_launch_jit(fn: Callable) -> tuple[Any, list]:
    """One :func:`no_launch_jit` per kernel for every :func:`stubbed_launches`: like the real kernel object, it keeps
    its binder and kernel cache (and ``conv_elements`` its remembered launches) from one use to the next, so a timed
    forward pays what a steady-state forward pays. The second value holds the current launch listener."""
    listener: list = [None]

    def on_launch() -> None:
        if listener[0] is not None:
            listener[0]()

    return no_launch_jit(fn, on_launch), listener


@contextlib.contextmanager
def _triton_interpreter() -> Iterator[None]:
    """``TRITON_INTERPRET=1`` while inside: the triton backend accepts CPU tensors (the launches are stubs)."""
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


# ---------------------------------------------------------------------------------------------------- the suite
class _Window:
    """The adaptive part of one forward: opened by the level-map callable, closed after the forward."""

    def __init__(self, counter: OpCounter | None = None):
        self.counter = counter
        self.start = self.start_cpu = math.nan

    def levels(self, levels):
        def provide(features):  # forward_features calls this once the dense finest-grid features exist
            self.start, self.start_cpu = time.perf_counter(), time.thread_time()
            if self.counter is not None:
                self.counter.active = True
            return levels

        return provide

    def close(self) -> tuple[float, float]:
        """Milliseconds since the window opened: ``(CPU time of this thread, wall time)``."""
        cpu, wall = time.thread_time() - self.start_cpu, time.perf_counter() - self.start
        if self.counter is not None:
            self.counter.active = False
        return cpu * 1e3, wall * 1e3


def graph_adaptive_part(net) -> Callable:
    """``run(x, levels)`` for a graph-converted network whose dense part (every node before its level map) computes
    once per input and is then reused: it is not what the suite measures, and on a shared CPU it would cost far more
    than the adaptive part. The rest of the generated forward, from the level map on, runs in full on the same values.

    Without it the graph path's window would open right after the dense convs of the same forward, with the CPU's
    caches full of their features: the same adaptive part then takes about 1.5x the host time (measured on this
    machine by touching 128 MB before a forward). The split is the converted graph itself: the nodes before the
    ``level_map`` node, and those from it on, each with the values the other holds as placeholders.
    """
    from adatriton.models.graph.mapops import level_map
    from adatriton.models.graph.module import generated_forward

    nodes = list(net.graph.nodes)
    cut = next(i for i, n in enumerate(nodes) if n.op == "call_function" and n.target is level_map)
    levels = next(n for n in nodes if n.op == "placeholder" and n.target == "levels")
    before = set(nodes[:cut]) - {levels}
    live = [n for n in nodes[:cut] if n in before and n.op != "get_attr" and any(u not in before for u in n.users)]

    def part(selected: list, placeholders: list, output) -> Callable:
        """The generated function of ``selected`` reading ``placeholders``, returning ``output``; a module or
        attribute the other part fetched is fetched again here."""
        graph, env = fx.Graph(), {}
        for n in placeholders:
            env[n] = graph.placeholder(n.name)

        def value(a: fx.Node) -> fx.Node:
            if a not in env:
                if a.op != "get_attr":
                    raise RuntimeError(f"node {a.name} is not a live value of the split")
                env[a] = graph.node_copy(a)
            return env[a]

        for n in selected:
            if n not in env:
                env[n] = graph.node_copy(n, value)
        graph.output(fx.node.map_arg(output, value))
        return generated_forward(graph)[1]

    inputs = [n for n in nodes[:cut] if n.op == "placeholder" and n is not levels]
    dense = part([n for n in nodes[:cut] if n.op != "placeholder"], inputs, tuple(live))
    adaptive = part(nodes[cut:-1], [*live, levels], nodes[-1].args[0])
    memo: list = [None, None]

    def run(x: torch.Tensor, levels_arg):
        if memo[0] is not x:
            memo[:] = [x, dense(net, x)]
        with environment_snapshot():  # as the module's forward: the environment read once per forward
            return adaptive(net, *memo[1], levels_arg)

    return run


@dataclass
class _Measured:
    times_ms: list[float]  # CPU time of the issuing thread per forward
    wall_ms: list[float]
    counts: OpCounts
    convs: int
    dispatch: str
    peak_mb: float


def _forward(run, x: torch.Tensor, make_levels: Callable[[], object], window: _Window) -> tuple[float, float]:
    """One forward, ``run(x, levels)`` (the backbone to its densified ``layer4``); returns the adaptive part's
    ``(CPU, wall)`` milliseconds."""
    levels = make_levels()  # outside the window: a new map's tensor is the caller's
    run(x, window.levels(levels))
    return window.close()


def _count_dense_part(run, x: torch.Tensor, make_levels: Callable[[], object]) -> int:
    """Device ops of one forward outside the adaptive part (stem, dense layers), counted while computing it (``run``
    a fresh :func:`graph_adaptive_part`, so that its dense part computes)."""
    counter = OpCounter()
    with stubbed_launches(counter), counter.watch():
        _forward(run, x, make_levels, _Window(counter))
    return counter.outside.total_ops


def _prepare_scenario(run, x: torch.Tensor, make_levels: Callable[[], object], warmup: int) -> _Measured:
    """Warm-up forwards of ``run(x, levels)`` (the first one recorded: which backend ran each conv) and one counted
    forward; the times come later (:func:`_time_scenarios`)."""
    forward = functools.partial(_forward, run, x, make_levels)
    with stubbed_launches(launcher=True) as calls, adatriton.ops.dispatch.recording() as records:
        forward(_Window())
    convs = len(records)
    dispatch = " ".join(f"{b}:{n}" for b, n in sorted(collections.Counter(r["backend"] for r in records).items()))
    if convs and calls["conv"] == 0:
        raise RuntimeError(
            "no Triton conv launch went through the stub: the host path no longer calls "
            "adatriton.kernels.conv.conv_elements (update bench.host.stubbed_launches)"
        )
    with stubbed_launches(launcher=True):
        for _ in range(max(0, warmup - 1)):
            forward(_Window())
    counter = OpCounter()  # counts the adaptive part only (the window), not timed
    with stubbed_launches(counter, launcher=True), counter.watch():
        forward(_Window(counter))
    return _Measured([], [], counter.counts, convs, dispatch, math.nan)


def _time_scenarios(
    x: torch.Tensor, scenarios: Mapping[str, tuple[Callable, Callable[[], object], _Measured, bool]], iters: int
):
    """``iters`` timed forwards per scenario, interleaved (one of each in turn), so that the load of a shared
    machine weighs on every scenario alike, and in an order that rotates by one each round, so that each scenario
    follows each other one equally often (a forward right after ``new_map``'s table building finds the CPU's
    caches full of its data: in a fixed order the scenario after it took ~1.3x the host time); fills each
    :class:`_Measured`'s times and peak memory. A scenario is
    ``(run, make_levels, measured, eager)``: ``run(x, levels)`` the forward, and whether
    ``adatriton.ops.conv``'s eager plans are on (:func:`adatriton.ops.conv.eager_plans`, switched outside the
    measured part)."""
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    with stubbed_launches(launcher=True):
        order = list(scenarios.values())
        for i in range(iters):
            for run, make_levels, measured, eager in order[i % len(order) :] + order[: i % len(order)]:
                with eager_plans(eager):
                    cpu_ms, wall_ms = _forward(run, x, make_levels, _Window())
                measured.times_ms.append(cpu_ms)
                measured.wall_ms.append(wall_ms)
    peak = peak_memory_mb(cpu)
    for _, _, measured, _ in scenarios.values():
        measured.peak_mb = peak


#: Internal scenario: the reused map with the eager plans off, every conv through the checks, the dispatcher and
#: ``conv_elements``' remembered launch (the launch path before the eager plans), timed in the same run.
EAGER_OFF = "reused_map/eager plans off"


def _us_per_conv(m: _Measured) -> float:
    return statistics.median(m.times_ms) * 1e3 / max(1, m.convs)


def _top(counter: collections.Counter, n: int = 8) -> str:
    return ", ".join(f"{name} x{count}" for name, count in counter.most_common(n)) or "none"


def run(ctx: Context) -> list[Row]:
    """The rows of every conversion and scenario (see the module docstring)."""
    o = ctx.opts
    h, w = o.size
    device = torch.device("cpu")
    if o.device.type != "cpu":
        ctx.note(f"--device {o.device.type} ignored: the host suite runs on the CPU with stubbed launches")
    fraction = o.fractions[0]
    memory = torch.channels_last if o.channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(o.seed)
    x = torch.randn(o.batch, 3, h, w, generator=gen).to(device, o.dtype).contiguous(memory_format=memory)
    x_meta = torch.empty(tuple(x.shape), device="meta")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(o.seed)
        model = torchvision.models.resnet101().eval()
    model = model.to(device, o.dtype).to(memory_format=memory)
    rows = []
    with (
        ctx.progress(len(o.conversions) * len(SCENARIOS)) as bar,
        _triton_interpreter(),
        torch.inference_mode(),
    ):
        for conversion in o.conversions:
            k = num_levels_of(conversion)
            net = adatriton.convert(model, conversion, backend="triton", example_input=x_meta).eval()
            backbone = net.backbone_network()  # stem .. layer4, densified: forward_features' network

            def adaptive_part(backbone=backbone) -> Callable:
                part = graph_adaptive_part(backbone)
                return lambda images, lv: part(images, lv)["layer4"]

            run_backbone = adaptive_part()
            lm_cpu = masks.synthetic(o.batch, h, w, conversion, fraction, kind="blobs", seed=o.seed)
            levels = lm_cpu.levels.to(device)
            build = functools.partial(prepare_levelmap, levels, k, net)
            bookkeeping = measure(build, device, min(o.warmup, 1), max(3, min(o.iters, 5))).median
            count = adatriton.count_macs(net, x_meta, lm_cpu)
            fr = lm_cpu.fractions().tolist()
            prepared = backbone.build_tables(build())
            dense_ops = _count_dense_part(adaptive_part(), x, lambda lm=prepared: lm)
            ctx.note(f"{MODEL} {conversion}: the dense part (stem, dense layers) issues {dense_ops} device ops")
            prepared_scenarios = {}
            for scenario in SCENARIOS:
                make_levels = levels.clone if scenario == "new_map" else (lambda lm=prepared: lm)
                try:
                    measured = _prepare_scenario(run_backbone, x, make_levels, o.warmup)
                except Exception as err:  # noqa: BLE001 -- one failed measurement must not lose the others
                    first = str(err).splitlines()[0] if str(err) else ""
                    ctx.note(f"{MODEL} {conversion} {scenario}: failed: {type(err).__name__}: {first}")
                    bar.update()
                    continue
                prepared_scenarios[scenario] = (run_backbone, make_levels, measured, True)
            if "reused_map" in prepared_scenarios:  # the figure without the eager plans, timed alongside
                run, make_levels, measured, _ = prepared_scenarios["reused_map"]
                without = _Measured([], [], measured.counts, measured.convs, measured.dispatch, math.nan)
                prepared_scenarios[EAGER_OFF] = (run, make_levels, without, False)
            _time_scenarios(x, prepared_scenarios, o.iters)
            without = prepared_scenarios.pop(EAGER_OFF, None)
            for scenario, (_, _, m, _) in prepared_scenarios.items():
                rows.append(_row(ctx, m, conversion, scenario, fraction, fr, count, bookkeeping))
                bar.update()
            if without is not None:
                m, off = prepared_scenarios["reused_map"][2], without[2]
                ctx.note(
                    f"{MODEL} {conversion} reused_map: {_us_per_conv(m):.1f} µs/conv with the eager plans "
                    f"(remembered conv_bn_act calls), {_us_per_conv(off):.1f} µs/conv without them (every conv "
                    "through the checks, the dispatcher and conv_elements' remembered launch: the path before "
                    "them), same run; both with conv_elements and Triton's launcher (driver launch a no-op)"
                )
    return rows


def _row(ctx: Context, m: _Measured, conversion: str, scenario: str, fraction: float, fr, count, bookkeeping) -> Row:
    c = m.counts
    ctx.note(
        f"{MODEL} {conversion} {scenario}: {c.total_ops} device ops ({sum(c.launches.values())} Triton launches; "
        f"ATen: {_top(c.device_ops)}); {c.total_syncs} syncs ({_top(c.syncs)}); wall time "
        f"{statistics.median(m.wall_ms):.1f} ms (min {min(m.wall_ms):.1f}) for {statistics.median(m.times_ms):.1f} ms "
        "of CPU time"
    )
    h, w = ctx.opts.size
    median = statistics.median(m.times_ms)
    per_conv = 1e3 / max(1, m.convs)
    low, high = median_interval(m.times_ms)
    return ctx.row(
        model=MODEL,
        backbone=MODEL,
        head="none",
        scope="adaptive",
        output_stride=conversion,
        mask_source="synthetic",
        mask_param="blobs",
        fraction_target=float(fraction),
        fraction_level0=fr[0],
        level_fractions=level_fractions(fr),
        backend="triton",
        dispatch=m.dispatch,
        height=h,
        width=w,
        elements=count.elements[-1],
        macs_total=count.total,
        macs_backbone=count.backbone,
        time_mean_ms=statistics.fmean(m.times_ms),
        time_median_ms=median,
        time_min_ms=min(m.times_ms),
        time_max_ms=max(m.times_ms),
        bookkeeping_ms=bookkeeping,
        peak_memory_mb=m.peak_mb,
        speedup_vs_os8=math.nan,
        scenario=scenario,
        convs_per_forward=m.convs,
        launches_per_forward=float(c.total_ops),
        syncs_per_forward=float(c.total_syncs),
        host_us_per_conv=median * per_conv,
        host_us_per_conv_low=low * per_conv,
        host_us_per_conv_high=high * per_conv,
    )


# ---------------------------------------------------------------------------------------------------- the summary
def _spread(row) -> str:
    return f"{row['time_min_ms']:.2f}–{row['time_max_ms']:.2f}"


def _verdict(ok: bool, noisy: str = "") -> str:
    from ._report import NOISY_VERDICT  # as summarize's import: the report module loads pandas

    # A noisy timing gives no verdict (bench._report.verdict's rule); noisy is noise()'s "noisy: reasons".
    return f"{NOISY_VERDICT} ({noisy.removeprefix('noisy: ')})" if noisy else ("met" if ok else "not met")


def host_time_verdict(row) -> str:
    """The host-time target's verdict from the 95% confidence interval of the median (``host_us_per_conv_low`` ..
    ``_high``): met when all of it is at most the target, not met when all of it is above, else no verdict. A
    shared machine makes single forwards up to twice as slow, so max/min (:func:`bench._report.noise`) would refuse
    every run; the interval says whether the median itself is settled. Rows without one (fewer than 6 forwards):
    ``noise``'s rule."""
    from ._report import noise

    target = TARGETS["host_us_per_conv"]
    low, high = row["host_us_per_conv_low"], row["host_us_per_conv_high"]
    if math.isnan(low) or math.isnan(high):
        noisy = noise(row["time_min_ms"], row["time_max_ms"], int(row["iters"]))
        return _verdict(row["host_us_per_conv"] <= target, noisy)
    interval = f"95% interval of the median {low:.1f}–{high:.1f} µs"
    if high <= target or low > target:
        return f"{_verdict(high <= target)} ({interval})"
    return _verdict(False, f"noisy: {interval} holds {target:.0f}")


def summarize(table: pd.DataFrame, suite: str, csv_path: Path, notes=(), references=()) -> str:
    """The ``host`` suite's markdown summary: per conversion and configuration one table (scenario, device ops and
    syncs per forward, host time per forward and per conv with min–max), then the issue's targets
    (:data:`TARGETS`; the host time's verdict from the median's confidence interval, :func:`host_time_verdict`)
    and the notes of the last run."""
    from ._report import closing_sections

    out = [
        f"# `{suite}` benchmark summary",
        "",
        f"From `{csv_path.name}` ({len(table)} rows). The adaptive part of the backbone (level map, `from_dense`, "
        "adaptive layers, densify) on the CPU with the Triton launches stubbed: `device ops` = ATen ops that would "
        "launch a kernel on a GPU + Triton launches; `syncs` = host-device synchronisations; `host ms` = CPU time of "
        "the issuing thread in the adaptive part per forward, median (min–max; wall times in the notes); "
        "`host µs/conv` = median / adaptive convs.",
        "",
    ]
    config = ["output_stride", "height", "width", "dtype", "batch", "device", "timestamp"]
    targets = []
    for key, group in table.groupby(config, sort=False):
        info = dict(zip(config, key))
        first = group.iloc[0]
        out += [
            f"## {first['model']} {info['output_stride']} (adaptive part), {info['batch']}x3x{info['height']}x"
            f"{info['width']} {info['dtype']}",
            "",
            f"{info['device']}; torch {first['torch_version']}, triton {first['triton_version'] or '-'}, adatriton "
            f"{first['adatriton_version']}; {int(first['warmup'])} warm-up + {int(first['iters'])} timed forwards; "
            f"level-0 fraction {first['fraction_level0']:.3f} ({first['mask_source']} {first['mask_param']}); run "
            f"{info['timestamp']}.",
            "",
            "| scenario | convs | device ops / forward | ops / conv | syncs / forward | host ms (min–max) | "
            "host µs / conv | bookkeeping ms | dispatch |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in group.iterrows():
            convs = max(1, int(r["convs_per_forward"]))
            out.append(
                f"| {r['scenario']} | {int(r['convs_per_forward'])} | {r['launches_per_forward']:.0f} | "
                f"{r['launches_per_forward'] / convs:.2f} | {r['syncs_per_forward']:.0f} | "
                f"{r['time_median_ms']:.2f} ({_spread(r)}) | {r['host_us_per_conv']:.0f} | "
                f"{r['bookkeeping_ms']:.2f} | {r['dispatch']} |"
            )
            label = f"- {info['output_stride']} {r['scenario']}, {info['height']}x{info['width']}"
            if r["scenario"] == "reused_map":
                limit = TARGETS["ops_per_conv"] * convs + TARGETS["ops_constant"]
                targets += [
                    f"{label}: device ops {r['launches_per_forward']:.0f} <= {TARGETS['ops_per_conv']} x {convs} + "
                    f"{TARGETS['ops_constant']} = {limit:.0f}: {_verdict(r['launches_per_forward'] <= limit)}",
                    f"{label}: syncs {r['syncs_per_forward']:.0f} <= {TARGETS['syncs']}: "
                    f"{_verdict(r['syncs_per_forward'] <= TARGETS['syncs'])}",
                    f"{label}: host {r['host_us_per_conv']:.0f} µs/conv <= {TARGETS['host_us_per_conv']:.0f}: "
                    f"{host_time_verdict(r)}",
                ]
            elif r["scenario"] == "new_map":
                targets.append(
                    f"{label}: syncs {r['syncs_per_forward']:.0f} <= {TARGETS['syncs_per_map']} per map: "
                    f"{_verdict(r['syncs_per_forward'] <= TARGETS['syncs_per_map'])}"
                )
        out.append("")
    out += closing_sections(targets, notes)
    return "\n".join(out)


SUITE = Suite(
    name="host",
    description="host cost of the adaptive ResNet-101 8->32 / 8->16 backbone on the CPU, Triton launches stubbed: "
    "device ops, syncs and host µs per adaptive conv, reused vs new level map",
    run=run,
    # 40 forwards: the median's 95% interval runs from the 14th to the 27th (host_time_verdict); a few ms each
    full={"size": (512, 1024), "warmup": 3, "iters": 40, "fractions": (0.3,), "conversions": ("8->32", "8->16")},
    quick={"size": (256, 512), "warmup": 2, "iters": 40, "fractions": (0.3,), "conversions": ("8->32", "8->16")},
    summary=summarize,
    plot=None,
)
