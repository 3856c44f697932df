"""Ahead-of-time compile of every Triton kernel, with every config of its config factory, for real GPUs.

Runs on the CPU (no GPU needed, never skipped): each variant is compiled by Triton for ``sm_80`` (A100) and
``sm_90`` (H100) down to a cubin, exactly as the launcher would specialise it at runtime (16-aligned pointers and
sizes, ints equal to 1 as constants), and checked against the hardware:

* it compiles (PTX and cubin produced);
* shared memory (Triton's dynamic request plus any static shared in the cubin) fits the per-block opt-in limit;
* at most 255 registers per thread (``cuobjdump -res-usage`` of the cubin, else ptxas's own ``-v`` log) and the
  block's registers fit the 64K register file, and no register spills (ptxas ``-v``; the epilogue runs in N parts,
  :func:`conv.epilogue_parts`, so that none spills);
* the fp16/bf16 convs (and fp32 with TF32) run their dot on tensor cores (``mma.sync`` / ``wgmma`` with the right
  operand type), and fp32 with ``ieee`` precision does not (TF32 there would silently lose precision);
* the conv's reduction is software-pipelined as its config asks: at 3 or more stages the TTGIR multi-buffers the A
  (gathered rows) and B (weights) tiles :func:`conv.pipeline_buffers` times (``num_stages`` for wgmma on sm_90,
  ``num_stages - 1`` for mma.sync on sm_80), their bytes are :func:`conv.pipeline_shared_bytes` (what
  ``config_problems`` checks against the GPU's shared memory), and every ``cp.async.wait_group N`` in the PTX's
  innermost dot loop leaves ``N >= 1`` groups in flight (``N = 0`` stalls every iteration on its own loads).

The conv configs whose pipelined tiles cannot fit a GPU's shared memory for a dtype (``conv.config_problems``, e.g.
128x256x64 at 3 stages in fp32: 288 KB) are not compiled for it: Triton would refuse them at launch and the autotuner
skips such candidates. fp16 and fp32 compile every config; bf16 (the same tiles and shared memory as fp16, another
mma operand type) compiles the default configs.

The cases of the search-space sweep other than each spec's default config are marked ``slow``: ``-m "aot and not
slow"`` compiles the defaults and the cases recorded from converted torchvision modules (a few minutes on 2 cores).

Every compiled variant prints one line (``pytest -s``) and records it as a junit property ``aot``. The kernels are
listed in :data:`KERNELS`; a new kernel is one more :class:`Kernel` entry. The compiles run in spawned worker
processes (see ``tests/aot/aot.py`` for why they cannot run in the ``TRITON_INTERPRET=1`` test process).
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from adatriton.kernels import conv, densify
from tests.aot import aot

# cudaDevAttrMaxSharedMemoryPerBlockOptin: A100 (sm_80) 163 KB, H100 (sm_90) 227 KB.
SHARED_OPTIN = {80: 166912, 90: 232448}
SMS = {80: 108, 90: 132}  # A100, H100 SXM
MAX_REGS_PER_THREAD = 255
REGS_PER_BLOCK = 65536  # registers are allocated per warp in units of 256
DTYPES = ("fp32", "fp16", "bf16")
RESULT_TIMEOUT_S = 300
pytestmark = pytest.mark.aot


@dataclasses.dataclass(frozen=True)
class Spec:
    """A constexpr specialisation of a kernel: compiled with every config of the factory, or the spot config only."""

    tag: str  # part of the test id ("" for the main specialisation)
    constexprs: dict  # constexpr values, and runtime ints the launcher passes as 1 (specialised to constants)
    every_config: bool = True
    dtypes: tuple[str, ...] = DTYPES
    aligned_ints: bool = True  # ints 16-divisible (Triton specialises them so); False: only the pointers are
    spot_dtypes: tuple[str, ...] = ()  # dtypes compiled with the spot config only (every_config specs)
    pipelined: bool = False  # aligned operands, so the loop's loads must be multi-buffered (conv only)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One ``@triton.jit`` kernel and how its launcher calls it."""

    name: str
    fn: object  # the kernel (an InterpretedFunction in this process; the workers import a real JITFunction)
    args: Callable[[str, dict], dict[str, str]]  # data dtype, spec constexprs -> Triton type of every runtime parameter
    specs: tuple[Spec, ...]
    configs: Callable[[], Sequence[tuple]]  # the config factory
    # config, compute capability, data dtype -> (block constexprs, num_warps, num_stages)
    launch: Callable[[tuple, int, str], tuple[dict, int, int | None]]
    label: Callable[[tuple], str]  # config -> its part of the test id
    spot_config: Callable[[int, Spec], tuple]  # compute capability, spec -> the config its spot checks compile with
    fits: Callable[[tuple, str, int], bool] = lambda config, dtype, cap: True  # config, dtype, cap: worth compiling
    dtype_constexprs: Callable[[str], dict] = lambda dtype: {}  # constexprs the launcher derives from the dtype
    # expected dot instructions: "f16"/"bf16"/"tf32" = tensor cores with that operand type, "fma" = no tensor
    # cores, None = no dot to check
    tensor_cores: Callable[[str, dict], str | None] = lambda dtype, constexprs: None


def _conv_args(dt: str, constexprs: dict) -> dict[str, str]:
    ints = ("rows", "num_src", "cin_g", "cout_g", "groups", "stride_x", "stride_res", "stride_out")
    # The conv's own weight, read with its strides; sw_c is a constexpr 1 in the specs (channels-last weights, as
    # Triton specialises an int argument equal to 1 at launch).
    weight_strides = ("sw_g", "sw_n", "sw_y", "sw_x")
    return {
        **{p: f"*{dt}" for p in ("x_ptr", "w_ptr", "res_ptr", "out_ptr")},
        # the host path's cached tap tables are int32; int64 ones come with 64-bit offsets in the tests
        "index_ptr": "*i64" if constexprs["INT64_OFFSETS"] else "*i32",
        **dict.fromkeys(("scale_ptr", "shift_ptr", "bnw_ptr", "bnb_ptr", "mean_ptr", "var_ptr"), "*fp32"),
        "eps": "fp32",
        **dict.fromkeys(ints + weight_strides, "i32"),
    }


def _conv_tensor_cores(dt: str, constexprs: dict) -> str:
    return {"fp16": "f16", "bf16": "bf16"}.get(dt) or ("tf32" if constexprs["DOT_PRECISION"] == "tf32" else "fma")


def _densify_args(dt: str, constexprs: dict) -> dict[str, str]:
    ints = ("pixels", "width", "hw", "channels", "num_src", "stride_v", "stride_in", "stride_iy")
    strides = ("stride_on", "stride_oc", "stride_oy", "stride_ox")
    return {"values_ptr": f"*{dt}", "ids_ptr": "*i64", "out_ptr": f"*{dt}", **dict.fromkeys(ints + strides, "i32")}


ELEMENT_SIZE = {"fp32": 4, "fp16": 2, "bf16": 2}
# What conv_elements passes for 256-channel values: 16-aligned rows, 32-bit offsets, channels a multiple of BLOCK_K.
_CONV_ALIGNED = dict(INT64_OFFSETS=False, EVEN_K=True, ROW_ALIGN=16, UPCAST=False, groups=1)
# The eager bottleneck conv: conv bias and eval BatchNorm applied in the epilogue from the module's own tensors.
_CONV_FUSED = dict(TAPS=9, KSIZE=3, TAPS_P2=16, GATHER=True, HAS_SCALE=False, HAS_SHIFT=True, HAS_RES=True, ACT=1)
_CONV_FUSED.update(HAS_BN=True, HAS_BN_W=True, HAS_BN_B=True, sw_c=1, **_CONV_ALIGNED)


def _conv_label(c: conv.ConvConfig) -> str:
    return "x".join(map(str, c[:3])) + f"-s{c[3]}-w{c[4]}" + ("-p" if c.persistent else "")


def _conv_spot_config(cap: int, spec: Spec) -> conv.ConvConfig:
    """The default for large problems, with 256 channels (or 250: no multiple of 16, as the unaligned spec); fp32
    without TF32 for the ieee spec (FMA dots get their own default)."""
    channels = 256 if spec.aligned_ints else 250
    fma = spec.constexprs.get("DOT_PRECISION") == "ieee"
    with torch.backends.cudnn.flags(allow_tf32=not fma):
        return conv.default_config(1 << 16, channels, channels, arch=cap, dtype=torch.float32 if fma else None)


def _conv_fits(c: conv.ConvConfig, dt: str, cap: int) -> bool:
    return not conv.config_problems(c, element_size=ELEMENT_SIZE[dt], arch=cap)


KERNELS = (
    Kernel(
        name="conv",
        fn=conv._conv_elements_kernel,
        args=_conv_args,
        specs=(
            # 3x3 gather through an int32 tap table with the whole epilogue (bottleneck conv-BN-add-ReLU): the
            # heaviest variant, every config.
            Spec("", _CONV_FUSED, dtypes=("fp16", "fp32"), spot_dtypes=("bf16",), pipelined=True),
            # an int64 tap table and 64-bit row offsets (E_in * stride >= 2^31).
            Spec("int64", {**_CONV_FUSED, "INT64_OFFSETS": True}, False, ("fp16",), pipelined=True),
            # fp32 without TF32 (cudnn.allow_tf32 off): FMA dots, the most registers.
            Spec("ieee", {**_CONV_FUSED, "DOT_PRECISION": "ieee"}, every_config=False, dtypes=("fp32",)),
            # channel counts that are no multiple of 8 (e.g. 3): element-wise loads (cp.async only for 4-byte fp32).
            Spec("unaligned", {**_CONV_FUSED, "EVEN_K": False, "ROW_ALIGN": 1}, every_config=False, aligned_ints=False),
            # the SiLU epilogue (EfficientNet's conv-BN-SiLU; the other activations are cheaper element-wise ops).
            Spec("silu", {**_CONV_FUSED, "ACT": 4}, every_config=False, dtypes=("fp16",)),
        ),
        configs=conv.conv_configs,
        launch=lambda c, cap, dt: (c.meta(cap, ELEMENT_SIZE[dt]), c[4], c[3]),
        label=_conv_label,
        spot_config=_conv_spot_config,
        fits=_conv_fits,
        # on a GPU fp32 uses TF32 by default (torch.backends.cudnn.allow_tf32 is True), see conv.dot_precision
        dtype_constexprs=lambda dt: {"DOT_PRECISION": "tf32" if dt == "fp32" else "ieee"},
        tensor_cores=_conv_tensor_cores,
    ),
    Kernel(
        name="densify",
        fn=densify._densify_kernel,
        args=_densify_args,
        specs=(
            Spec("nhwc", {"stride_oc": 1}),  # channels-last output: the launcher passes stride_oc == 1
            Spec("nchw", {"stride_ox": 1}, every_config=False),
        ),
        configs=densify.densify_configs,
        launch=lambda c, cap, dt: ({"BLOCK_P": c[0], "BLOCK_C": c[1]}, c[2], None),
        label=lambda c: f"{c[0]}x{c[1]}-w{c[2]}",
        spot_config=lambda cap, spec: densify.densify_configs()[0],
    ),
)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    variant: aot.Variant
    tensor_cores: str | None
    # the A and B tiles' (rows, cols), the buffers each must get and their bytes together; None: no check
    pipeline: tuple[tuple[tuple[int, int], ...], int, int] | None = None
    wait_depth: int = 1  # the smallest cp.async.wait_group the pipelined loop may have
    sweep: bool = False  # a config of the search-space sweep other than the default: marked slow


def _params(fn) -> list[str]:
    return list(getattr(fn, "arg_names", None) or fn.fn.__code__.co_varnames[: fn.fn.__code__.co_argcount])


def _cases() -> list[Case]:
    cases = []
    for k in KERNELS:
        params = _params(k.fn)
        module, name = k.fn.fn.__module__, k.fn.fn.__name__
        for spec in k.specs:
            for cap in SHARED_OPTIN:
                spot = k.spot_config(cap, spec)
                runs = [(cfg, dt) for cfg in k.configs() for dt in spec.dtypes] if spec.every_config else []
                runs += [(spot, dt) for dt in (spec.spot_dtypes if spec.every_config else spec.dtypes)]
                for cfg, dt in runs:
                    if not k.fits(cfg, dt, cap):
                        continue
                    blocks, warps, stages = k.launch(cfg, cap, dt)
                    constexprs = {**k.dtype_constexprs(dt), **spec.constexprs, **blocks}
                    types = {p: "constexpr" for p in constexprs} | {
                        p: t for p, t in k.args(dt, spec.constexprs).items() if p not in constexprs
                    }
                    if sorted(types) != sorted(params):
                        raise ValueError(f"{k.name}: the table types {sorted(types)}, the kernel has {params}")
                    aligned = [
                        p for p in params if types[p].startswith("*") or (spec.aligned_ints and types[p] != "constexpr")
                    ]
                    variant = aot.Variant(
                        kernel=f"{module}:{name}",
                        signature=tuple((p, types[p]) for p in params),
                        constexprs=tuple((p, constexprs[p]) for p in params if p in constexprs),
                        aligned=tuple(aligned),
                        cap=cap,
                        num_warps=warps,
                        num_stages=stages,
                    )
                    pipeline = None
                    if spec.pipelined and stages is not None and stages >= 3:
                        bm, bn, bk = (blocks[b] for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                        nbytes = conv.pipeline_shared_bytes(cfg, ELEMENT_SIZE[dt], cap)
                        pipeline = (((bm, bk), (bk, bn)), conv.pipeline_buffers(cfg, cap), nbytes)
                    case_id = "-".join(filter(None, (k.name, f"sm{cap}", dt, spec.tag, k.label(cfg))))
                    sweep = cfg != spot
                    cases.append(Case(case_id, variant, k.tensor_cores(dt, constexprs), pipeline, sweep=sweep))
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    return cases


def pipelined_wait_depth(config: tuple) -> int:
    """The ``cp.async.wait_group`` depth of a loop that pipelines both operands: A and B are committed as one
    group each per stage, and the loop waits for the oldest stage only, so ``2 * (num_stages - 2)`` groups stay in
    flight (sm_90 128x128x64 s3: 2; sm_80 128x128x32 s4: 4). A B tile loaded synchronously (the NCHW weight of
    issue 19) left 1 on both."""
    return 2 * (config[3] - 2)


def _module_cases() -> list[Case]:
    """Cases recorded from a converted torchvision ResNet-50 (8->32, fp16, eval, 32x64 input), as its launcher
    would specialise them for each GPU: the 3x3 (BatchNorm, ReLU), the 1x1s (BatchNorm, ReLU; the residual add of
    conv3), the strided shortcut (a 1-tap gather, BatchNorm), with the weights as torchvision builds them (NCHW)
    and after ``model.to(memory_format=torch.channels_last)``. Configs: each GPU's default for a large image (as
    the launcher picks for 1024x2048), without and with the SM count (sm_90: 128x256x64 for Cout >= 256). Launches
    that specialise identically (the same kernel; an NCHW 3x3 weight is read from a channels-last copy, so its
    kernel is the channels-last one) are compiled once."""
    import torchvision

    from adatriton import masks
    from adatriton.models.convert import convert

    torch.manual_seed(0)
    net = convert(torchvision.models.resnet50(), "8->32", backend="triton").eval().half()
    levels = masks.synthetic(1, 32, 64, "8->32", 0.3, kind="blobs", seed=0)
    x = torch.zeros(1, 3, 32, 64, dtype=torch.float16)
    cases: dict[tuple, Case] = {}
    for layout in ("nchw", "cl"):
        if layout == "cl":
            net = net.to(memory_format=torch.channels_last)
        for cap in SHARED_OPTIN:

            def large(rows, cin_g, cout_g, taps, groups, dtype, gather, cap=cap, sms=None):
                return conv.default_config(1 << 16, cin_g, cout_g, arch=cap, dtype=dtype, sms=sms)

            launches = []
            for sms in (None, SMS[cap]):  # the architecture's default tile, and the SM-aware one (sm_90: 128x256)
                with torch.no_grad(), conv.record_launches(cap, SMS[cap], functools.partial(large, sms=sms)) as rec:
                    net(x, levels)
                launches += rec.launches
            for r in launches:
                c = dict(r.constexprs)
                variant = aot.Variant(
                    kernel="adatriton.kernels.conv:_conv_elements_kernel",
                    signature=r.signature,
                    constexprs=r.constexprs,
                    aligned=r.aligned,
                    cap=cap,
                    num_warps=r.num_warps,
                    num_stages=r.num_stages,
                )
                # Which ints happen to be 16-divisible (rows, sources) is the image's accident: one case per kernel
                key = (cap, r.signature, r.constexprs, "w_ptr" in r.aligned)
                if key in cases:  # the same kernel for both weight layouts: say so in its id
                    if not cases[key].id.endswith(f"-{layout}-{_conv_label(r.config)}"):
                        case = cases[key]
                        cases[key] = dataclasses.replace(case, id=case.id.replace("-nchw-", "-nchw+cl-"))
                    continue
                kind = "3x3" if r.taps == 9 else "shortcut" if c["GATHER"] else "1x1"
                act = (conv.ACTIVATIONS[c["ACT"]], c["ACT"])
                flags = "".join(f for f, on in (("bn", c["HAS_BN"]), ("res", c["HAS_RES"]), act) if on)
                bm, bn, bk = r.config[:3]
                nbytes = conv.pipeline_shared_bytes(r.config, 2, cap)
                pipeline = (((bm, bk), (bk, bn)), conv.pipeline_buffers(r.config, cap), nbytes)
                case_id = f"conv-sm{cap}-fp16-module-{kind}-{flags}-{layout}-{_conv_label(r.config)}"
                cases[key] = Case(case_id, variant, "f16", pipeline, pipelined_wait_depth(r.config))
    return list(cases.values())


CASES = _cases() + _module_cases()


@pytest.fixture(scope="module")
def aot_compile(request, tmp_path_factory):
    """Compile in spawned workers (one per core, at most 4); every selected case is queued up front, in test order,
    so both cores stay busy while the tests consume the results one by one."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if getattr(item, "module", None) is request.module
        and "case" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    workers = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))
    pool = ProcessPoolExecutor(
        max_workers=min(workers, max(1, len(selected))),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=aot.init_worker,
        initargs=(str(tmp_path_factory.mktemp("triton-cache")),),
    )
    futures = {case.id: pool.submit(aot.compile_variant, case.variant) for case in selected}

    def compile_case(case: Case) -> dict:
        if case.id not in futures:
            futures[case.id] = pool.submit(aot.compile_variant, case.variant)
        return futures[case.id].result(timeout=RESULT_TIMEOUT_S)

    yield compile_case
    pool.shutdown(wait=True, cancel_futures=True)


def _report(case: Case, r: dict) -> str:
    spills = "?" if r["spill_stores"] is None else f"{r['spill_stores']}/{r['spill_loads']}"
    mma = ",".join(sorted({m.split(".")[0] for m in r["mma"]})) or "-"
    buffers = ",".join(str(shape[0]) for _, shape in r["smem_allocs"] if len(shape) == 3) or "-"
    waits = ",".join(map(str, sorted(set(r["loop_wait_groups"])))) or "-"
    return (
        f"{case.id:<48} regs {r['regs'] if r['regs'] is not None else '?':>3}  "
        f"shared {r['shared']:>6}+{r['static_shared']:<4}  buffers {buffers:<5} wait_group {waits:<3} "
        f"mma {mma:<10} cp.async {'y' if r['cp_async'] else 'n'}  spills {spills}  stack {r['stack']}  "
        f"{r['compile_s']:.1f}s"
    )


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c.sweep else c for c in CASES], ids=[c.id for c in CASES]
)
def test_kernel_compiles_within_limits(case: Case, aot_compile, record_property):
    r = aot_compile(case)
    assert "error" not in r, f"{case.id} does not compile for sm_{case.variant.cap}:\n{r['error']}"
    record_property("aot", r)
    print(_report(case, r))
    v = case.variant
    assert r["ptx_bytes"] > 0 and r["cubin_bytes"] > 0, "no PTX or no cubin"

    shared = r["shared"] + r["static_shared"]
    assert shared <= SHARED_OPTIN[v.cap], (
        f"{case.id}: {shared} bytes of shared memory > {SHARED_OPTIN[v.cap]} (sm_{v.cap} per-block opt-in limit)"
    )

    if r["regs"] is None:
        warnings.warn(f"{case.id}: register check skipped, no register count: {r['regs_source']}", stacklevel=1)
    else:
        assert r["regs"] <= MAX_REGS_PER_THREAD, f"{case.id}: {r['regs']} registers per thread"
        per_warp = -(-r["regs"] * 32 // 256) * 256
        assert per_warp * v.num_warps <= REGS_PER_BLOCK, (
            f"{case.id}: {r['regs']} registers x {v.num_warps} warps exceed the {REGS_PER_BLOCK}-register file"
        )
    # Spills are not wrong, but a spilling config is a slow one the autotuner would waste time on: none may spill.
    assert not (r["spill_stores"] or r["spill_loads"]), (
        f"{case.id}: ptxas spills {r['spill_stores']} bytes stores / {r['spill_loads']} bytes loads"
    )

    if case.pipeline is not None:
        tiles, buffers, nbytes = case.pipeline
        allocs = [shape for _, shape in r["smem_allocs"] if len(shape) == 3 and shape[1:] in tiles]
        assert len(allocs) == 2 and all(shape[0] == buffers for shape in allocs), (
            f"{case.id}: A {tiles[0]} and B {tiles[1]} should be {buffers}-buffered for {v.num_stages} stages on "
            f"sm_{v.cap}, the TTGIR allocates {r['smem_allocs']}"
        )
        # what config_problems checks against the GPU's limit: the buffers' bytes, and the rest of the kernel's
        assert nbytes <= r["shared"] <= nbytes + conv.SHARED_SLACK, (
            f"{case.id}: {r['shared']} B shared, {nbytes} B tiles"
        )
        waits = r["loop_wait_groups"]
        assert waits and min(waits) >= case.wait_depth, (
            f"{case.id}: the dot loop's cp.async.wait_group should leave >= {case.wait_depth} groups in flight, "
            f"found {waits}"
        )

    if case.tensor_cores == "fma":
        assert not r["mma"], f"{case.id}: ieee fp32 dot must not use tensor cores (TF32), found {r['mma']}"
    elif case.tensor_cores is not None:
        want = case.tensor_cores
        hits = [m for m in r["mma"] if f".{want}." in m + "."]
        assert hits, f"{case.id}: no {want} tensor-core instruction (mma.sync/wgmma) in the PTX, found {r['mma']}"
