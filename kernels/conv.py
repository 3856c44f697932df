"""Implicit-GEMM convolution over the elements of a multi-resolution map, with the mask lookup fused in.

One program computes a tile of ``BLOCK_M`` output elements x ``BLOCK_N`` output channels. Its reduction runs
over (tap, input-channel block): for tap ``t`` it loads the ``BLOCK_M`` source rows ``index[m, t]`` (the element
that tap reads, from the layout's tap table; ``>= num_rows`` reads zero) straight from the ``(E, Cin)`` values,
so no im2col buffer and no gathered copy is ever written. ``tl.dot`` accumulates in fp32. The epilogue applies
a per-channel scale and shift (bias and eval-mode BatchNorm folded), a residual add, an activation (ReLU, ReLU6,
hardswish or SiLU) and the cast to the output dtype, so a bottleneck's conv-BN(-add)-ReLU is one launch.

The tile's whole tap table is read once, before the reduction loop, as a ``(BLOCK_M, taps)`` tile of row offsets
(already multiplied by the row stride, 32-bit unless ``E * stride`` reaches 2^31); the loop picks one column per
tap with ``tl.gather``. Its gathered loads then depend on nothing loaded inside the loop, so Triton's pipeliner
multi-buffers the A and B tiles (:func:`pipeline_buffers`) and keeps the copies of the next stages in flight with
``cp.async`` while the current one multiplies (tests/aot/test_kernels_aot.py checks the buffers and the
``cp.async.wait_group`` depth in the compiled TTGIR and PTX for sm_80 and sm_90). Large tiles run the epilogue
in N parts (:func:`epilogue_parts`), and persistent configs walk the tiles with one program per SM
(:class:`ConvConfig`).

The same kernel serves every conv of docs/semantics.md §3: k x k with any tap spacing (the tap table encodes it), the
downsampling conv evaluated only at the surviving elements (the table is centred there), the strided shortcut
(a 1-tap table of top-left sources: subsample + 1x1 in one pass) and plain 1x1 convs (``GATHER=False``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import os
from collections.abc import Callable, Iterator

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton import knobs
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

__all__ = [
    "ACTIVATIONS",
    "CONV_KERNEL",
    "BoundLaunch",
    "FMA_DEFAULT",
    "ConvConfig",
    "LaunchRecord",
    "LaunchRecorder",
    "INT32_OFFSET_LIMIT",
    "SHARED_OPTIN",
    "SHARED_SLACK",
    "config_problems",
    "conv_configs",
    "clear_launch_plans",
    "conv_elements",
    "default_config",
    "device_arch",
    "device_default_config",
    "device_sms",
    "epilogue_parts",
    "dot_precision",
    "launch_plan",
    "needs_int64_offsets",
    "pack_weight",
    "pipeline_buffers",
    "pipeline_shared_bytes",
    "prune_configs",
    "record_launches",
]

#: The epilogue's activations: :func:`conv_elements`'s ``act`` (the kernel's ``ACT``) is the index of the name here.
ACTIVATIONS = (None, "relu", "relu6", "hardswish", "silu")
#: Row offsets ``E_in * row_stride`` from this value on need 64-bit address math in the reduction loop.
INT32_OFFSET_LIMIT = 2**31
#: cudaDevAttrMaxSharedMemoryPerBlockOptin per compute capability (bytes): A100 163 KB, sm_86/89/120 99 KB,
#: H100 and B200 227 KB.
SHARED_OPTIN = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
#: Shared memory the kernel takes besides its pipelined A and B tiles (barriers, layout scratch): 0.5-2 KB measured
#: on sm_80 and sm_90 (tests/aot/test_kernels_aot.py asserts it stays below this bound).
SHARED_SLACK = 4096


class ConvConfig(tuple):
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps[, persistent])`` of one launch; hashable, JSON-friendly.

    ``persistent`` (default 0) launches about one program per SM that walks the output tiles instead of one program
    per tile. The tuple has 5 entries when it is 0 and 6 (the last being 1) when it is set, so a config stored as 5
    ints reads back as the same non-persistent config and ``ConvConfig(*json_list)`` round-trips both forms.
    """

    __slots__ = ()
    fields = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_stages", "num_warps")

    def __new__(
        cls, block_m: int, block_n: int, block_k: int, num_stages: int, num_warps: int, persistent: int = 0
    ) -> ConvConfig:
        base = (int(block_m), int(block_n), int(block_k), int(num_stages), int(num_warps))
        return super().__new__(cls, base + ((int(persistent),) if persistent else ()))

    def __getnewargs__(self) -> tuple[int, ...]:  # pickling (a spawned worker, a recorded launch)
        return tuple(self)

    @property
    def persistent(self) -> bool:
        return len(self) > 5 and bool(self[5])

    def as_dict(self) -> dict[str, int]:
        return {**dict(zip(self.fields, self)), "persistent": int(self.persistent)}

    def meta(self, arch: int | None, element_size: int) -> dict[str, int]:
        """The constexpr keyword arguments the config gives the kernel on ``arch`` for ``element_size``-byte values:
        block sizes, epilogue parts (:func:`epilogue_parts`), persistence."""
        block_m, block_n, block_k = self[:3]
        return dict(
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            SPLIT_N=epilogue_parts(block_n, arch, element_size),
            PERSISTENT=self.persistent,
        )

    def __repr__(self) -> str:
        return "ConvConfig({})".format(", ".join(f"{k}={v}" for k, v in self.as_dict().items()))


def epilogue_parts(block_n: int, arch: int | None, element_size: int) -> int:
    """Parts along N that the epilogue of a ``BLOCK_N``-wide tile runs in, one after the other (1, 2 or 4).

    Parts of 64 channels; 128 for 4-byte values on mma.sync GPUs (sm_80 family). While a part's residual rows and
    per-channel vectors are live next to the whole accumulator, wider parts spilled: 16-788 bytes for 128x256 and
    256x128 tiles, and 8-40 bytes for 128x128 on sm_90 in one part; 64-channel parts on sm_80 in fp32 spilled 4 bytes
    at 128x256x32 where 128-channel ones did not (ptxas, tests/aot/test_kernels_aot.py).
    """
    width = 128 if element_size == 4 and _family(arch) != 90 else 64
    return max(1, min(4, block_n // width))


def pipeline_buffers(config: ConvConfig | tuple, arch: int) -> int:
    """Shared-memory copies of each of the A and B tiles that Triton's pipeliner allocates for ``config``.

    ``num_stages`` where the dot is an asynchronous MMA reading its operands from shared memory while the next
    copies land (wgmma on sm_90 for ``BLOCK_M >= 64``: one more buffer); ``num_stages - 1`` for mma.sync (sm_80, and
    sm_90 below 64 rows), which works from registers loaded out of the oldest buffer, so ``num_stages <= 2`` means one
    buffer and no overlap there. Measured from the TTGIR of Triton 3.8.0 on sm_80 and sm_90; sm_100 (asynchronous
    tcgen05 MMAs) is assumed to follow sm_90 and the other mma.sync GPUs sm_80. fp32 without TF32 (FMA dots) takes
    the mma.sync count on every GPU, so this is an upper bound there.
    """
    block_m, stages = config[0], config[3]
    async_mma = arch in (90, 100, 103) and block_m >= 64
    return max(1, stages if async_mma else stages - 1)


def pipeline_shared_bytes(config: ConvConfig | tuple, element_size: int, arch: int) -> int:
    """Shared memory of the pipelined A and B tiles of ``config`` (the kernel adds at most :data:`SHARED_SLACK`)."""
    block_m, block_n, block_k = config[:3]
    return pipeline_buffers(config, arch) * (block_m * block_k + block_k * block_n) * element_size


def config_problems(config: object, *, element_size: int | None = None, arch: int | None = None) -> list[str]:
    """Why ``config`` cannot run :func:`conv_elements`; empty when it can.

    Args:
        config: a :class:`ConvConfig` or a list / tuple of its 5 or 6 ints (e.g. an autotune cache entry).
        element_size: bytes per value (2 for fp16 / bf16, 4 for fp32); with ``arch``, also checks that the
            pipelined tiles fit the GPU's shared memory.
        arch: compute capability as an int (80, 90, ...).

    Returns:
        One sentence per problem: wrong length or types, block sizes that are not powers of two or out of range
        (16..256 for M and N, 16..128 for K: ``tl.dot`` needs 16, larger tiles exceed the register file), warps
        not a power of two in 1..32, stages outside 1..8, ``persistent`` not 0 or 1, shared memory over the limit.
    """
    if not isinstance(config, (tuple, list)) or len(config) not in (5, 6):
        return [f"a conv config is 5 or 6 ints (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps[, persistent]), "
                f"got {config!r}"]  # fmt: skip
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in config):
        return [f"a conv config holds ints, got {config!r}"]
    problems = []
    for name, value, low, high in (
        ("BLOCK_M", config[0], 16, 256),
        ("BLOCK_N", config[1], 16, 256),
        ("BLOCK_K", config[2], 16, 128),
        # CUDA caps a thread block at 1024 threads, 32 warps, and Triton's NVIDIA backend checks only that
        # num_warps is a power of two: 32 warps launch (each thread then gets at most 64 of the SM's 65536
        # registers, so big tiles spill, slowly but correctly). 16 (wave64 AMD's cap) would reject launchable
        # configs; this kernel targets NVIDIA.
        ("num_warps", config[4], 1, 32),
    ):
        if not low <= value <= high or value & (value - 1):
            problems.append(f"{name}={value} is not a power of two in {low}..{high}")
    if not 1 <= config[3] <= 8:
        problems.append(f"num_stages={config[3]} is not in 1..8")
    if len(config) == 6 and config[5] not in (0, 1):
        problems.append(f"persistent={config[5]} is not 0 or 1")
    if not problems and element_size is not None and arch is not None:
        need, limit = pipeline_shared_bytes(config, element_size, arch) + SHARED_SLACK, SHARED_OPTIN.get(arch)
        if limit is not None and need > limit:
            problems.append(
                f"it needs up to {need} B of shared memory for {element_size}-byte values, sm_{arch} has {limit}"
            )
    return problems


def conv_configs() -> list[ConvConfig]:
    """The implicit-GEMM search space (after Inductor's conv templates): elements x channels x reduction tiles.

    BLOCK_M 32-256 elements, BLOCK_N 32-256 channels, BLOCK_K 16-128, 3-5 stages (2 would not overlap on sm_80),
    4-8 warps; every entry compiles to a different kernel on sm_80 and sm_90. 128x256 and 256x128 tiles split their
    epilogue in N parts (:func:`epilogue_parts`): the residual add otherwise spilled 300-800 bytes on sm_90.
    The persistent entries walk the tiles with one program per SM. Registers, spills and pipelining of every entry:
    tests/aot/test_kernels_aot.py.
    """
    space = [
        (32, 32, 32, 3, 4),
        (64, 32, 32, 3, 4),
        (64, 64, 32, 3, 4),
        (64, 64, 64, 3, 4),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (128, 64, 64, 3, 8),
        (128, 128, 32, 4, 8),
        (128, 128, 64, 3, 8),
        (256, 64, 32, 4, 8),
        (64, 256, 32, 4, 8),
        (128, 128, 16, 5, 8),
        (128, 256, 32, 4, 8),
        (128, 256, 64, 3, 8),
        (256, 128, 64, 3, 8),
        (128, 128, 64, 3, 8, 1),
        (128, 256, 64, 3, 8, 1),
    ]
    return [ConvConfig(*c) for c in space]


def prune_configs(
    configs: list[ConvConfig],
    rows: int,
    cin: int,
    cout: int,
    *,
    element_size: int | None = None,
    arch: int | None = None,
) -> list[ConvConfig]:
    """Drop configs whose tiles are much larger than the problem (they only waste work), and with ``element_size``
    and ``arch`` those whose pipelined tiles exceed the GPU's shared memory; never returns none."""
    m_cap = max(32, triton.next_power_of_2(max(rows, 1)))
    n_cap = max(32, triton.next_power_of_2(cout))
    k_cap = max(16, triton.next_power_of_2(cin))
    kept = [c for c in configs if c[0] <= m_cap and c[1] <= n_cap and c[2] <= k_cap]
    if element_size is not None and arch is not None:
        kept = [c for c in kept if not config_problems(c, element_size=element_size, arch=arch)]
    return kept or [min(configs, key=lambda c: c[0] * c[1] * c[2])]


#: The untuned config per GPU family, before shrinking to the problem (register and spill report of
#: tests/aot/test_kernels_aot.py, fp16 3x3 gather with the residual epilogue).
DEFAULT_CONFIGS = {
    # sm_90 / sm_100 (227 KB shared): wgmma 64xN per warpgroup, 128x128 over 2 warpgroups; 174 registers on sm_90,
    # 97 KB shared (192 KB in fp32), 2 groups in flight.
    90: ConvConfig(128, 128, 64, 3, 8),
    # sm_80 / sm_87 (163 KB): mma.sync, 128x128x32 with 3 buffers (4 stages); 210 registers, 49 KB shared, 2 stages'
    # copies in flight.
    80: ConvConfig(128, 128, 32, 4, 8),
    # sm_86 / sm_89 / sm_120 (99 KB): the sm_80 tile with 2 buffers, so that fp32 (64 KB of tiles) fits too.
    86: ConvConfig(128, 128, 32, 3, 8),
}
#: SM-aware tiles (:func:`default_config` with ``sms``): a conv whose tiles of the architecture's default would
#: not give every SM at least :data:`FILL_FACTOR` tiles takes the first tile of its family's ladder that does (else the
#: last, the smallest), so that a small layer does not leave SMs idle: ResNet-101 8->32 at 512x1024 (level-0
#: fraction 0.3) has 62 tiles of 128x128 in its layer3 3x3 convs and 88 in layer4's, for 132 SMs on an H100.
#: The smaller entries are configs of :func:`conv_configs` (AOT-checked: pipelined, no spills).
FILL_FACTOR = 1.5
SM_LADDERS = {
    90: (ConvConfig(128, 128, 64, 3, 8), ConvConfig(128, 64, 64, 3, 8), ConvConfig(64, 64, 64, 3, 4)),
    80: (ConvConfig(128, 128, 32, 4, 8), ConvConfig(128, 64, 32, 4, 4), ConvConfig(64, 64, 32, 3, 4)),
    86: (ConvConfig(128, 128, 32, 3, 8), ConvConfig(64, 64, 32, 3, 4)),
}
#: sm_90 with Cout >= 256 and enough tiles of it: 128x256x64 (wgmma 64x256 per warpgroup), twice the MACs of the
#: 128x128 tile per loop iteration for 213 instead of 168 SASS instructions (3x3), 25% fewer L2 bytes per MAC,
#: 244 registers and 147 KB of shared memory, no spills (adatriton.tools.kernel_report).
WIDE_SM90 = ConvConfig(128, 256, 64, 3, 8)
#: Unknown GPUs (before sm_80): the moderate tile of the first kernel (~120 registers).
GENERIC_DEFAULT = ConvConfig(64, 64, 32, 3, 4)
#: The interpreter (``TRITON_INTERPRET=1``, no architecture): registers, shared memory, warps and stages do not exist
#: there, and a launch costs Python per tile operation (cProfile: most of it in ``triton.language``'s type checks),
#: so a large tile: 128x128x64 issues 8x fewer tile operations than 64x64x32 for a large conv (4x fewer programs,
#: each with half the reduction steps). Every config of :func:`conv_configs` is still computed in the interpreter by
#: the kernel tests.
INTERPRETER_DEFAULT = ConvConfig(128, 128, 64, 3, 4)
#: fp32 without TF32 on a GPU (FMA dots, no tensor cores: the operands of each product sit in registers too): the
#: architecture tiles above spilled 8-16 bytes at 255 registers; 128x64x32 takes 190 on sm_80, 128 on sm_90.
FMA_DEFAULT = ConvConfig(128, 64, 32, 3, 8)


def _family(arch: int | None) -> int | None:
    if arch is None or arch < 80:
        return None
    return 90 if arch in (90, 100, 103) else 80 if arch in (80, 87) else 86


def _fill_sms(family: int, rows: int, cout: int, sms: int) -> ConvConfig:
    """The tile of ``family``'s ladder for a ``rows x cout`` output on ``sms`` SMs (see :data:`SM_LADDERS`)."""
    want = FILL_FACTOR * sms

    def tiles(c: ConvConfig) -> int:
        return triton.cdiv(rows, c[0]) * triton.cdiv(cout, c[1])

    if family == 90 and cout >= 256 and tiles(WIDE_SM90) >= want:
        return WIDE_SM90
    ladder = SM_LADDERS[family]
    return next((c for c in ladder if tiles(c) >= want), ladder[-1])


def default_config(
    rows: int,
    cin: int,
    cout: int,
    *,
    arch: int | None = None,
    dtype: torch.dtype | None = None,
    sms: int | None = None,
) -> ConvConfig:
    """The untuned config for ``arch`` (autotuning replaces it), shrunk to small problems.

    Args:
        rows, cin, cout: output elements, input and output channels per group.
        arch: compute capability as an int (:func:`device_arch`): sm_90 and sm_100 get 128x128x64 with 3 stages
            and 8 warps, sm_80 and sm_87 128x128x32 with 4 stages and 8 warps, the 99 KB-shared-memory GPUs
            (sm_86, sm_89, sm_120) the same with 3 stages; older GPUs and channel counts that are no multiple of
            16 64x64x32, 3 stages, 4 warps; None (the interpreter) :data:`INTERPRETER_DEFAULT`, 128x128x64.
        dtype: the values' dtype; float32 without TF32 (``torch.backends.cudnn.allow_tf32`` off) on a GPU gets
            :data:`FMA_DEFAULT`, 128x64x32 with 3 stages and 8 warps.
        sms: the GPU's SM count (:func:`device_sms`), or None. Given, the tile is SM-aware: on sm_90
            :data:`WIDE_SM90` (128x256x64) when Cout >= 256 and that still makes :data:`FILL_FACTOR` (1.5) tiles
            per SM, else the first tile of :data:`SM_LADDERS` that does (128x128, then 128x64, then 64x64 on sm_90),
            the smallest if none does.

    Returns:
        The architecture's tile with each block capped at the next power of two of the problem (at least 32 rows,
        32 channels, 16 reduction), and 4 warps once the tile has shrunk below 128x128.
    """
    family = _family(arch)
    # Channels that are no multiple of 16 defeat vectorised loads (Triton only knows 16-divisible sizes): 128x128
    # tiles then sat at 255 registers and spilled 52-68 bytes on sm_80 and sm_90; 64x64x32 needs 145-176.
    aligned = cin % 16 == 0 and cout % 16 == 0
    if arch is None:
        base = INTERPRETER_DEFAULT
    else:
        base = DEFAULT_CONFIGS[family] if family is not None and aligned else GENERIC_DEFAULT
    if family is not None and aligned and dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        base = FMA_DEFAULT
    elif family is not None and aligned and sms:
        base = _fill_sms(family, rows, cout, sms)
    bm = min(base[0], max(32, triton.next_power_of_2(rows)))
    bn = min(base[1], max(32, triton.next_power_of_2(cout)))
    bk = min(base[2], max(16, triton.next_power_of_2(cin)))
    warps = base[4] if bm * bn >= base[0] * base[1] else 4
    return ConvConfig(bm, bn, bk, base[3], warps)


# Per CUDA device index: (compute capability as an int, SM count); looked up once, conv_elements runs per launch.
_devices: dict[int, tuple[int, int]] = {}
#: Programs of a persistent launch in the interpreter: 2, so a test walks several tiles per program.
INTERPRETER_PROGRAMS = 2


def _device_facts(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    facts = _devices.get(index)
    if facts is None:
        props = torch.cuda.get_device_properties(index)
        facts = _devices[index] = (props.major * 10 + props.minor, props.multi_processor_count)
    return facts


def device_arch(device: torch.device | str) -> int | None:
    """The compute capability of a CUDA device as an int (``90`` for an H100), None for the CPU (interpreter)."""
    facts = _device_facts(device if isinstance(device, torch.device) else torch.device(device))
    return None if facts is None else facts[0]


def device_sms(device: torch.device | str) -> int | None:
    """The SM count of a CUDA device, None for the CPU (interpreter)."""
    facts = _device_facts(device if isinstance(device, torch.device) else torch.device(device))
    return None if facts is None else facts[1]


def device_default_config(rows: int, cin: int, cout: int, device: torch.device, dtype: torch.dtype) -> ConvConfig:
    """:func:`default_config` for ``device``: its architecture and SM count (None for the CPU)."""
    facts = _device_facts(device if isinstance(device, torch.device) else torch.device(device))
    arch, sms = (None, None) if facts is None else facts
    return default_config(rows, cin, cout, arch=arch, dtype=dtype, sms=sms)


def needs_int64_offsets(num_rows: int, row_stride: int, limit: int | None = None) -> bool:
    """Whether element offsets ``row * row_stride`` of a ``num_rows``-row operand can reach ``limit`` (default
    :data:`INT32_OFFSET_LIMIT`, 2^31, read at call time): the kernel then computes its row offsets in 64 bits.

    A 1024x2048 image's layer4 at OS8 is 32768 elements x 2048 channels = 2^26 offsets: 32 bits are the rule.
    """
    return num_rows * row_stride >= (INT32_OFFSET_LIMIT if limit is None else limit)


def _row_align(row_stride: int, cin_g: int, groups: int) -> int:
    """Largest power of two <= 16 dividing every row start (``row * row_stride + group * cin_g``), in elements."""
    span = row_stride if groups == 1 else row_stride | cin_g
    return min(16, span & -span) if span else 16


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_precision(dtype: torch.dtype, on_gpu: bool | None = None) -> str:
    """fp32 uses TF32 only when cuDNN's convolutions may (``torch.backends.cudnn.allow_tf32``), so comparisons with
    cuDNN are fair; half types multiply exactly in the tensor cores anyway. The interpreter (``on_gpu`` None: unless
    ``TRITON_INTERPRET`` is set; False) does not emulate TF32."""
    if on_gpu is None:
        on_gpu = not interpreting()
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and on_gpu:
        return "tf32"
    return "ieee"


@triton.jit
def _activation(acc, ACT: tl.constexpr):
    """The activation of code ``ACT`` (the index of its name in :data:`ACTIVATIONS`) on a float32 tile, written as
    torch defines it so that the fused epilogue matches ``F.relu6`` / ``F.hardswish`` / ``F.silu`` applied after."""
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACT == 2:
        acc = tl.minimum(tl.maximum(acc, 0.0), 6.0)
    elif ACT == 3:
        acc = acc * tl.minimum(tl.maximum(acc + 3.0, 0.0), 6.0) / 6.0
    elif ACT == 4:
        acc = acc * tl.sigmoid(acc)
    return acc


@triton.jit
def _epilogue(
    acc,
    offs_m,
    m_ok,
    n0,
    group,
    scale_ptr,
    shift_ptr,
    bnw_ptr,
    bnb_ptr,
    mean_ptr,
    var_ptr,
    eps,
    res_ptr,
    out_ptr,
    cout_g,
    stride_res,
    stride_out,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    HAS_BN: tl.constexpr,
    HAS_BN_W: tl.constexpr,
    HAS_BN_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    ACT: tl.constexpr,
    WIDTH: tl.constexpr,
):
    """Scale and shift (or the conv bias and an eval-mode BatchNorm from its own parameters), residual, activation,
    cast and store of ``WIDTH`` output channels from ``n0`` on."""
    offs_n = n0 + tl.arange(0, WIDTH)
    n_ok = offs_n < cout_g
    chan = group * cout_g + offs_n
    if HAS_BN:
        # BatchNorm folded here, from the module's tensors as they are now: no folded copy to go stale, no extra
        # launch. bn(conv + bias) = (conv + bias - mean) * weight / sqrt(var + eps) + bias_bn.
        mean = tl.load(mean_ptr + chan, mask=n_ok, other=0.0).to(tl.float32)
        if HAS_SHIFT:  # the conv's bias
            mean = mean - tl.load(shift_ptr + chan, mask=n_ok, other=0.0).to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.load(var_ptr + chan, mask=n_ok, other=1.0).to(tl.float32) + eps)
        if HAS_BN_W:
            inv = inv * tl.load(bnw_ptr + chan, mask=n_ok, other=0.0).to(tl.float32)
        # Two vectors applied to the tile, not four: each thread holds a quarter of the tile's channels in the
        # wgmma layout, and four live vectors next to a 128-register accumulator spilled on sm_90.
        shift = -mean * inv
        if HAS_BN_B:
            shift = shift + tl.load(bnb_ptr + chan, mask=n_ok, other=0.0).to(tl.float32)
        acc = acc * inv[None, :] + shift[None, :]
    else:
        if HAS_SCALE:
            acc = acc * tl.load(scale_ptr + chan, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_SHIFT:
            acc = acc + tl.load(shift_ptr + chan, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_mask = m_ok[:, None] & n_ok[None, :]
    rows64 = offs_m.to(tl.int64)[:, None]  # once per tile: int64 costs nothing here, and M * stride may pass 2^31
    if HAS_RES:
        acc = acc + tl.load(res_ptr + rows64 * stride_res + chan[None, :], mask=out_mask, other=0.0).to(tl.float32)
    acc = _activation(acc, ACT)
    tl.store(out_ptr + rows64 * stride_out + chan[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _conv_tile(
    tile,
    x_ptr,
    index_ptr,
    w_ptr,
    scale_ptr,
    shift_ptr,
    bnw_ptr,
    bnb_ptr,
    mean_ptr,
    var_ptr,
    eps,
    res_ptr,
    out_ptr,
    rows,
    num_src,
    cin_g,
    cout_g,
    stride_x,
    stride_res,
    stride_out,
    sw_g,
    sw_n,
    sw_c,
    sw_y,
    sw_x,
    TAPS: tl.constexpr,
    KSIZE: tl.constexpr,
    TAPS_P2: tl.constexpr,
    GATHER: tl.constexpr,
    INT64_OFFSETS: tl.constexpr,
    EVEN_K: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    HAS_BN: tl.constexpr,
    HAS_BN_W: tl.constexpr,
    HAS_BN_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    ACT: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_N: tl.constexpr,
):
    """One ``BLOCK_M x BLOCK_N`` output tile; ``tile`` counts output-channel blocks fastest, then rows, then groups."""
    num_pid_n = tl.cdiv(cout_g, BLOCK_N)
    num_pid_m = tl.cdiv(rows, BLOCK_M)
    # Channel blocks fastest: the CTAs that run side by side share their gathered A rows (the irregular operand)
    # in L2; the weights they differ in are at most taps * Cin * Cout = 9 * 512 * 512 * 2 B = 4.7 MB, L2-resident.
    pid_n = tile % num_pid_n
    pid_m = (tile // num_pid_n) % num_pid_m
    group = tile // (num_pid_n * num_pid_m)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_kb = tl.arange(0, BLOCK_K)
    m_ok = offs_m < rows
    n_ok = offs_n < cout_g
    x_group = x_ptr + group * cin_g
    # The weight as it is stored: the conv's own (Cout, Cin/g, k, k) tensor with its strides (channels-last makes the
    # reduction axis contiguous), or a packed (g, k*k*Cin/g, Cout/g) copy; the tap picks the (ky, kx) plane.
    w_group = w_ptr + group * sw_g
    # Row offsets in units of ROW_ALIGN elements (the largest power of two <= 16 dividing every row start): the loop
    # multiplies by the constant ROW_ALIGN, a shift from which Triton's alignment analysis sees 16-byte aligned rows
    # and so issues 16-byte cp.async copies. (A tl.multiple_of hint on the gathered column is lost when Triton
    # re-lays-out the gather, as it does for 16-wide fp16 K blocks: A then was not pipelined at all.)
    stride_units = stride_x // ROW_ALIGN
    # Row offsets per tap, -1 for taps outside the image (masked loads read zero), all loaded before the reduction:
    # the loop's gathered A loads then depend on nothing loaded inside it, so the pipeliner can run them num_stages
    # ahead. Up to 9 taps (3x3, the strided shortcut's 1) as one (BLOCK_M,) column each, which the loop selects
    # with a chain of selects in the A loads' own layout (where that fits: `hoist`); otherwise as one
    # (BLOCK_M, taps) tile that the loop
    # picks a column of with tl.gather, whose result has the tile's layout: converting it through shared memory
    # cost 5 STS + 5 LDS, 2 extra barriers and 8 shuffles per iteration (sm_90 3x3: 224 SASS instructions per
    # iteration and 4 barriers, 168 and 2 with the columns).
    # The columns live in the A loads' layout, one register per row a thread loads per tap: cheap where A moves in
    # 16-byte vectors of a 16-bit dtype and the accumulator leaves room (128x128 and smaller). Element-wise loads
    # (unaligned rows), fp32 and 128x256 / 256x128 tiles spilled 16-32 bytes on sm_80 / sm_90 with nine of them
    # (tests/aot), so those keep the gathered tile; a single column (the strided shortcut) always fits.
    hoist: tl.constexpr = GATHER and (
        TAPS == 1  # one column: the strided shortcut, at every tile
        or (
            TAPS <= 9
            and BLOCK_M * BLOCK_N <= 128 * 128
            and x_ptr.dtype.element_ty.primitive_bitwidth == 16
            and ROW_ALIGN * 16 >= 128
        )
    )
    cols = ()
    if hoist:
        for j in tl.static_range(TAPS):
            src_j = tl.load(index_ptr + offs_m.to(tl.int64) * TAPS + j, mask=m_ok, other=num_src)
            if INT64_OFFSETS:
                units_j = src_j.to(tl.int64) * stride_units
            else:  # E_in * stride_x < 2^31 (checked on the host): 32-bit address math in the loop
                units_j = src_j.to(tl.int32) * stride_units
            cols = cols + (tl.where(src_j < num_src, units_j, -1),)
        units = cols[0][:, None]
    elif GATHER:
        offs_t = tl.arange(0, TAPS_P2)
        src = tl.load(
            index_ptr + offs_m.to(tl.int64)[:, None] * TAPS + offs_t[None, :],
            mask=m_ok[:, None] & (offs_t < TAPS)[None, :],
            other=num_src,
        )
        if INT64_OFFSETS:
            units = src.to(tl.int64) * stride_units
        else:
            units = src.to(tl.int32) * stride_units
        units = tl.where(src < num_src, units, -1)
        pick = tl.zeros((BLOCK_M, 1), dtype=tl.int32)
    else:
        if INT64_OFFSETS:
            units = tl.where(m_ok, offs_m.to(tl.int64) * stride_units, -1)[:, None]
        else:
            units = tl.where(m_ok, offs_m * stride_units, -1)[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_blocks = tl.cdiv(cin_g, BLOCK_K)
    # Tap t and channel block kb stepped as counters (no it // k_blocks division per iteration), the weight's tap
    # plane w_tap updated when t moves on.
    t = 0
    kb = 0
    w_tap = w_group
    # One flat loop over (tap, channel block), so the compiler software-pipelines the loads across taps too.
    for _it in range(0, TAPS * k_blocks):
        offs_k = kb * BLOCK_K + offs_kb
        if GATHER and not hoist:
            row = tl.gather(units, pick + t, axis=1)  # (BLOCK_M, 1): column t
        elif hoist and TAPS > 1:
            picked = cols[0]
            for j in tl.static_range(1, TAPS):
                picked = tl.where(t == j, cols[j], picked)
            row = picked[:, None]
        else:
            row = units
        if EVEN_K:  # cin_g % BLOCK_K == 0: no channel mask
            a_mask = row >= 0
            b_mask = n_ok[None, :]
        else:
            k_ok = offs_k < cin_g
            a_mask = (row >= 0) & k_ok[None, :]
            b_mask = k_ok[:, None] & n_ok[None, :]
        a = tl.load(x_group + row * ROW_ALIGN + offs_k[None, :], mask=a_mask, other=0.0)
        # A 1x1 weight has no tap term (w_tap stays w_group): with one, Triton's sw_y = sw_x = 1 specialisation made
        # w + t lose its 16-byte alignment, so B fell off the cp.async path and large tiles spilled.
        b = tl.load(w_tap + offs_k[:, None] * sw_c + offs_n[None, :] * sw_n, mask=b_mask, other=0.0)
        kb += 1
        if TAPS > 1:
            next_tap = kb == k_blocks
            kb = tl.where(next_tap, 0, kb)
            t += next_tap.to(tl.int32)
            ky = t // KSIZE  # a constant divisor: a multiply-high
            w_tap = w_group + ky * sw_y + (t - ky * KSIZE) * sw_x
        if UPCAST:  # the interpreter computes bf16 products wrongly: multiply in fp32 there
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    n0 = pid_n * BLOCK_N
    if SPLIT_N == 1:
        _epilogue(acc, offs_m, m_ok, n0, group, scale_ptr, shift_ptr, bnw_ptr, bnb_ptr, mean_ptr, var_ptr, eps,
                  res_ptr, out_ptr, cout_g, stride_res, stride_out, HAS_SCALE, HAS_SHIFT, HAS_BN, HAS_BN_W, HAS_BN_B,
                  HAS_RES, ACT, BLOCK_N)  # fmt: skip
    else:
        # The epilogue in N parts (as EPILOGUE_SUBTILE in Triton's persistent matmul): the residual and the
        # per-channel vectors of one part sit next to the accumulator, not those of the whole tile, which spilled.
        lo, hi = _halves(acc, BLOCK_M, BLOCK_N)
        _epilogue_parts(lo, offs_m, m_ok, n0, group, scale_ptr, shift_ptr, bnw_ptr, bnb_ptr, mean_ptr, var_ptr, eps,
                        res_ptr, out_ptr, cout_g, stride_res, stride_out, HAS_SCALE, HAS_SHIFT, HAS_BN, HAS_BN_W,
                        HAS_BN_B, HAS_RES, ACT, BLOCK_M, BLOCK_N // 2, SPLIT_N // 2)  # fmt: skip
        _epilogue_parts(hi, offs_m, m_ok, n0 + BLOCK_N // 2, group, scale_ptr, shift_ptr, bnw_ptr, bnb_ptr, mean_ptr,
                        var_ptr, eps, res_ptr, out_ptr, cout_g, stride_res, stride_out, HAS_SCALE, HAS_SHIFT, HAS_BN,
                        HAS_BN_W, HAS_BN_B, HAS_RES, ACT, BLOCK_M, BLOCK_N // 2, SPLIT_N // 2)  # fmt: skip


@triton.jit
def _halves(x, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr):
    """The ``(BLOCK_M, WIDTH // 2)`` left and right halves of a ``(BLOCK_M, WIDTH)`` tile."""
    return tl.split(tl.permute(tl.reshape(x, (BLOCK_M, 2, WIDTH // 2)), (0, 2, 1)))


@triton.jit
def _epilogue_parts(
    acc, offs_m, m_ok, n0, group, scale_ptr, shift_ptr, bnw_ptr, bnb_ptr, mean_ptr, var_ptr, eps, res_ptr, out_ptr,
    cout_g, stride_res, stride_out, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_BN: tl.constexpr,
    HAS_BN_W: tl.constexpr, HAS_BN_B: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, WIDTH: tl.constexpr, PARTS: tl.constexpr,
):  # fmt: skip
    """:func:`_epilogue` of a ``(BLOCK_M, WIDTH)`` tile in ``PARTS`` (1 or 2) parts along N."""
    if PARTS == 1:
        _epilogue(acc, offs_m, m_ok, n0, group, scale_ptr, shift_ptr, bnw_ptr, bnb_ptr, mean_ptr, var_ptr, eps,
                  res_ptr, out_ptr, cout_g, stride_res, stride_out, HAS_SCALE, HAS_SHIFT, HAS_BN, HAS_BN_W, HAS_BN_B,
                  HAS_RES, ACT, WIDTH)  # fmt: skip
    else:
        lo, hi = _halves(acc, BLOCK_M, WIDTH)
        _epilogue(lo, offs_m, m_ok, n0, group, scale_ptr, shift_ptr, bnw_ptr, bnb_ptr, mean_ptr, var_ptr, eps,
                  res_ptr, out_ptr, cout_g, stride_res, stride_out, HAS_SCALE, HAS_SHIFT, HAS_BN, HAS_BN_W, HAS_BN_B,
                  HAS_RES, ACT, WIDTH // 2)  # fmt: skip
        _epilogue(hi, offs_m, m_ok, n0 + WIDTH // 2, group, scale_ptr, shift_ptr, bnw_ptr, bnb_ptr, mean_ptr, var_ptr,
                  eps, res_ptr, out_ptr, cout_g, stride_res, stride_out, HAS_SCALE, HAS_SHIFT, HAS_BN, HAS_BN_W,
                  HAS_BN_B, HAS_RES, ACT, WIDTH // 2)  # fmt: skip


@triton.jit
def _conv_elements_kernel(
    x_ptr,
    index_ptr,
    w_ptr,
    scale_ptr,
    shift_ptr,
    bnw_ptr,
    bnb_ptr,
    mean_ptr,
    var_ptr,
    eps,
    res_ptr,
    out_ptr,
    rows,
    num_src,
    cin_g,
    cout_g,
    groups,
    stride_x,
    stride_res,
    stride_out,
    sw_g,
    sw_n,
    sw_c,
    sw_y,
    sw_x,
    TAPS: tl.constexpr,
    KSIZE: tl.constexpr,
    TAPS_P2: tl.constexpr,
    GATHER: tl.constexpr,
    INT64_OFFSETS: tl.constexpr,
    EVEN_K: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    HAS_BN: tl.constexpr,
    HAS_BN_W: tl.constexpr,
    HAS_BN_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    ACT: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_N: tl.constexpr,
    PERSISTENT: tl.constexpr,
):
    if PERSISTENT:
        # A grid of about one program per SM walks the tiles: no per-CTA launch and prologue cost, and the tiles
        # of one wave stay adjacent in the channel-fastest order. disable_licm: hoisting the tile-invariant address
        # math out of this loop kept it live through the reduction (235 instead of 225 registers for 128x128x64 on
        # sm_90); flatten=True (one loop over tiles x reduction) lost the B pipelining and hit 255.
        num_tiles = tl.cdiv(rows, BLOCK_M) * tl.cdiv(cout_g, BLOCK_N) * groups
        for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), disable_licm=True):
            _conv_tile(tile, x_ptr, index_ptr, w_ptr, scale_ptr, shift_ptr, bnw_ptr, bnb_ptr, mean_ptr, var_ptr, eps,
                       res_ptr, out_ptr, rows, num_src, cin_g, cout_g, stride_x, stride_res, stride_out, sw_g, sw_n,
                       sw_c, sw_y, sw_x, TAPS, KSIZE, TAPS_P2, GATHER, INT64_OFFSETS, EVEN_K, ROW_ALIGN, HAS_SCALE,
                       HAS_SHIFT, HAS_BN, HAS_BN_W, HAS_BN_B, HAS_RES, ACT, UPCAST, DOT_PRECISION, BLOCK_M, BLOCK_N,
                       BLOCK_K, SPLIT_N)  # fmt: skip
    else:
        _conv_tile(tl.program_id(0), x_ptr, index_ptr, w_ptr, scale_ptr, shift_ptr, bnw_ptr, bnb_ptr, mean_ptr,
                   var_ptr, eps, res_ptr, out_ptr, rows, num_src, cin_g, cout_g, stride_x, stride_res, stride_out,
                   sw_g, sw_n, sw_c, sw_y, sw_x, TAPS, KSIZE, TAPS_P2, GATHER, INT64_OFFSETS, EVEN_K, ROW_ALIGN,
                   HAS_SCALE, HAS_SHIFT, HAS_BN, HAS_BN_W, HAS_BN_B, HAS_RES, ACT, UPCAST, DOT_PRECISION, BLOCK_M,
                   BLOCK_N, BLOCK_K, SPLIT_N)  # fmt: skip


#: The conv kernel :func:`conv_elements` launches (a ``JITFunction``, or Triton's interpreter's stand-in under
#: ``TRITON_INTERPRET=1``): the name by which tools reach it without a private import.
CONV_KERNEL = _conv_elements_kernel


@dataclasses.dataclass(frozen=True)
class LaunchRecord:
    """One :func:`conv_elements` call as Triton's launcher would specialise it for a GPU (no tensor kept).

    Attributes:
        weight_ptr: ``data_ptr()`` of the weight the caller passed (names the conv: the module's own tensor).
        weight_stride: that weight's strides; ``read_stride``: the kernel's ``(sw_g, sw_n, sw_c, sw_y, sw_x)``.
        signature: every runtime parameter of the kernel with its Triton type (``"*fp16"``, ``"i32"``, ...), and
            ``"constexpr"`` for the constexprs and for the ints Triton specialises to constants (those equal to 1).
        constexprs: the constexpr values, the specialised ints included.
        aligned: the parameters Triton specialises as 16-divisible (pointers 16-byte aligned, ints).
        config: the tile config; ``grid``: programs launched; ``tiles``: output tiles.
        num_warps, num_stages: compile options.
        rows, cin_g, cout_g, taps, groups: the conv's problem.
    """

    weight_ptr: int
    weight_stride: tuple[int, ...]
    read_stride: tuple[int, ...]
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    aligned: tuple[str, ...]
    config: ConvConfig
    grid: int
    tiles: int
    num_warps: int
    num_stages: int
    rows: int
    cin_g: int
    cout_g: int
    taps: int
    groups: int


@dataclasses.dataclass
class LaunchRecorder:
    """While :func:`record_launches` holds it, :func:`conv_elements` records its launches here instead of running
    them (the output comes back zeroed), specialised for compute capability ``arch`` with ``sms`` SMs.

    ``choose(rows, cin_g, cout_g, taps, groups, dtype, gather)`` gives the config the launcher would run on that
    GPU (a tuned one); None (or a None answer) means :func:`default_config` for ``arch``. ``dtype``: record
    launches of values in another dtype as if they were in this one (a float32 forward on the CPU standing in for
    float16 on the GPU: pointer types, config, epilogue parts and dot precision follow ``dtype``).
    """

    arch: int
    sms: int
    choose: Callable[..., ConvConfig | None] | None = None
    dtype: torch.dtype | None = None
    launches: list[LaunchRecord] = dataclasses.field(default_factory=list)


_recorders: list[LaunchRecorder] = []


@contextlib.contextmanager
def record_launches(
    arch: int, sms: int, choose: Callable[..., ConvConfig | None] | None = None, dtype: torch.dtype | None = None
) -> Iterator[LaunchRecorder]:
    """Record every :func:`conv_elements` launch of the enclosed code as :class:`LaunchRecord` (kernels not run):
    what ``adatriton.tools.kernel_report`` compiles ahead of time, per layer, for a GPU that need not be here."""
    recorder = LaunchRecorder(arch, sms, choose, dtype)
    _recorders.append(recorder)
    try:
        yield recorder
    finally:
        _recorders.remove(recorder)


def _specialisation(args: dict[str, object]) -> tuple[dict[str, str], dict[str, object], list[str]]:
    """Triton types, ints specialised to constants, 16-divisible parameters of ``args``, as Triton's launcher
    decides them at runtime for a CUDA target (its own specialisation function)."""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    types, consts, aligned = {}, {}, []
    for name, value in args.items():
        kind, attr = native_specialize_impl(CUDABackend, value, False, True, True)
        if kind == "constexpr":
            types[name], consts[name] = "constexpr", attr
            continue
        types[name] = kind
        if attr == "D":
            aligned.append(name)
    return types, consts, aligned


def pack_weight(weight: Tensor, groups: int) -> Tensor:
    """``(Cout, Cin/g, k, k)`` -> ``(g, k*k*Cin/g, Cout/g)`` contiguous, tap-major like the tap tables."""
    cout, cin_g, k, _ = weight.shape
    w = weight.reshape(groups, cout // groups, cin_g, k * k)
    return w.permute(0, 3, 2, 1).reshape(groups, k * k * cin_g, cout // groups).contiguous()


def conv_elements(
    values: Tensor,
    index: Tensor | None,
    weight: Tensor,
    *,
    taps: int,
    groups: int = 1,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    bn: tuple | None = None,
    residual: Tensor | None = None,
    act: int = 0,
    out_dtype: torch.dtype | None = None,
    config: ConvConfig | None = None,
) -> Tensor:
    """Launch the fused conv: ``out[m] = act(scale * sum_t W_t x[index[m, t]] + shift + residual[m])``.

    Args:
        values: ``(E_in, Cin)`` input elements, channels contiguous (fp32, fp16 or bf16).
        index: ``(M, taps)`` tap table, int32 (preferred: half the bytes) or int64, entries ``>= E_in`` read zero;
            or None for ``out[m] <- x[m]`` (a 1x1 conv, ``M = E_in``). Used as is when contiguous.
        weight: the conv's own ``(Cout, Cin/g, k, k)`` weight, read in place with its strides when its input
            channels are contiguous (channels-last, and every 1x1: what the pipelined tensor-core loads want; a k x k
            weight whose input channels are not, e.g. NCHW as torchvision builds it, is read from a channels-last
            copy made at this launch), or a :func:`pack_weight` copy ``(groups, taps * Cin/g, Cout/g)``; same dtype
            as values. Reading the module's tensor at every launch means no derived copy can go stale (``.data``
            writes, ``load_state_dict``, dtype moves).
        taps: number of taps ``k*k``.
        groups: conv groups.
        scale, shift: optional ``(Cout,)`` per-channel epilogue (fp32 recommended); with ``bn``, ``shift`` is the
            conv's bias and ``scale`` must be None.
        bn: ``(weight, bias, running_mean, running_var, eps)`` of an eval-mode BatchNorm applied in the epilogue
            from its own tensors (``weight`` / ``bias`` may be None), or None.
        residual: optional ``(M, Cout)`` tensor added before the activation.
        act: the activation applied last, by its code: the index of its name in :data:`ACTIVATIONS` (0 none, 1 relu,
            2 relu6, 3 hardswish, 4 silu).
        out_dtype: output dtype (default: the input's).
        config: tile config; default :func:`default_config` for the device's architecture.

    Returns:
        ``(M, Cout)`` tensor.
    """
    # Only a JITFunction remembers launches: the interpreter's kernel (and a patched one) never skips a check, so
    # its key is not even computed.
    if not _recorders and isinstance(_conv_elements_kernel, JITFunction):
        key = _plan_key(values, index, weight, taps, groups, scale, shift, bn, residual, act, out_dtype, config)
        plan = _PLANS.get(key)
        if plan is not None:
            out = plan.launch(values, index, weight, scale, shift, bn, residual)
            if out is not None:
                return out
    else:
        key = None
    caller = (index, scale, shift)
    if values.dim() != 2 or (values.stride(1) != 1 and values.shape[1] != 1):
        raise ValueError(f"values must be (E, Cin) with contiguous channels, got shape {tuple(values.shape)}")
    if values.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the triton backend computes in fp32, fp16 or bf16, got {values.dtype}")
    source = weight  # the caller's tensor: what a recorded launch is named by
    e_in, cin = values.shape
    cin_g = cin // groups
    ksize = math.isqrt(taps)
    if weight.dim() == 4:  # the conv's own weight: (Cout, Cin/g, k, k), any strides
        cout_g = weight.shape[0] // groups
        fits = weight.shape[1:] == (cin_g, ksize, ksize) and ksize * ksize == taps
        fits = fits and cout_g * groups == weight.shape[0]
        if fits and ksize > 1 and cin_g > 1 and weight.stride(1) != 1:
            # Input channels not contiguous (NCHW, as torchvision builds weights and convert leaves them): the B
            # tile would load 2 bytes at a time, synchronously, with one buffer (470 instead of 224 SASS
            # instructions per iteration on sm_90). A channels-last copy per launch costs one copy kernel (ResNet-101's
            # adaptive 3x3 weights: 41 MB fp16 per forward); it is never cached, so no .data write, load_state_dict
            # or dtype move can leave a stale one.
            weight = weight.contiguous(memory_format=torch.channels_last)
        s_o, s_c, s_y, s_x = weight.stride() if ksize > 1 else (*weight.stride()[:2], 1, 1)  # 1x1: no tap term
        w_strides = (cout_g * s_o, s_o, s_c, s_y, s_x)
    else:  # packed: (g, taps * Cin/g, Cout/g), contiguous
        g, k_total, cout_g = weight.shape
        fits = g == groups and k_total == taps * cin_g and ksize * ksize == taps and weight.is_contiguous()
        w_strides = (k_total * cout_g, 1, cout_g, ksize * cin_g * cout_g, cin_g * cout_g)
    if not fits or weight.dtype != values.dtype:
        raise ValueError(
            f"weight {tuple(weight.shape)} {weight.dtype} does not fit {taps} taps x {cin} {values.dtype} channels in "
            f"{groups} groups"
        )
    if bn is not None and scale is not None:
        raise ValueError("conv_elements takes a BatchNorm (bn=) or a scale, not both")
    if index is not None:
        if index.dim() != 2 or index.shape[1] != taps or index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"index must be int32 or int64 (M, {taps}), got {index.dtype} {tuple(index.shape)}")
        if not index.is_contiguous():
            index = index.contiguous()
    rows = e_in if index is None else index.shape[0]
    cout = cout_g * groups
    out = torch.empty(rows, cout, dtype=out_dtype or values.dtype, device=values.device)
    if rows == 0:
        return out
    if residual is not None and (residual.shape != (rows, cout) or residual.stride(1) != 1):
        raise ValueError(f"residual must be ({rows}, {cout}) with contiguous channels, got {tuple(residual.shape)}")
    recorder = _recorders[-1] if _recorders else None
    # Recording: specialise for the recorder's GPU (its arch, SM count and the config it would choose).
    facts = (recorder.arch, recorder.sms) if recorder is not None else _device_facts(values.device)
    dtype = values.dtype if recorder is None or recorder.dtype is None else recorder.dtype
    if recorder is not None and recorder.choose is not None:
        config = recorder.choose(rows, cin_g, cout_g, taps, groups, dtype, index is not None) or config
    elif recorder is not None:
        config = None  # the launcher's choice was made for the CPU: take the recorded GPU's default
    if config is None:
        arch, sms = (None, None) if facts is None else facts
        config = default_config(rows, cin_g, cout_g, arch=arch, dtype=dtype, sms=sms)
    block_m, block_n, block_k, num_stages, num_warps = config[:5]
    tiles = triton.cdiv(rows, block_m) * triton.cdiv(cout_g, block_n) * groups
    persistent = len(config) > 5 and config[5]
    grid = (min(tiles, INTERPRETER_PROGRAMS if facts is None else facts[1]) if persistent else tiles,)
    stride_x = values.stride(0)
    dummy = out  # never read: the matching HAS_* flag is off
    bn_w, bn_b, mean, var, eps = (None, None, dummy, dummy, 0.0) if bn is None else bn
    args = (
        values,
        dummy if index is None else index,
        weight,
        dummy if scale is None else scale if scale.is_contiguous() else scale.contiguous(),
        dummy if shift is None else shift if shift.is_contiguous() else shift.contiguous(),
        dummy if bn_w is None else bn_w,
        dummy if bn_b is None else bn_b,
        mean,
        var,
        float(eps),
        dummy if residual is None else residual,
        out,
        rows,
        e_in,
        cin_g,
        cout_g,
        groups,
        stride_x,
        0 if residual is None else residual.stride(0),
        out.stride(0),
        *w_strides,
    )
    on_gpu = facts is not None
    constexprs = dict(
        TAPS=taps,
        KSIZE=ksize,
        TAPS_P2=triton.next_power_of_2(taps),
        GATHER=index is not None,
        INT64_OFFSETS=needs_int64_offsets(e_in, stride_x),
        EVEN_K=cin_g % block_k == 0,
        ROW_ALIGN=_row_align(stride_x, cin_g, groups),
        HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None,
        HAS_BN=bn is not None,
        HAS_BN_W=bn_w is not None,
        HAS_BN_B=bn_b is not None,
        HAS_RES=residual is not None,
        ACT=act,
        UPCAST=not on_gpu and values.dtype == torch.bfloat16 and interpreting(),
        DOT_PRECISION=dot_precision(dtype, on_gpu=recorder is not None or None),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        SPLIT_N=epilogue_parts(block_n, None if facts is None else facts[0], dtype.itemsize),
        PERSISTENT=bool(persistent),
    )
    if recorder is not None:
        names = list(inspect.signature(_conv_elements_kernel.fn).parameters)
        types, consts, aligned = _specialisation(dict(zip(names, args)))
        if dtype != values.dtype:  # the tensors in the values' dtype stand for tensors in the recorded one
            target = "*" + {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
            for name, arg in zip(names, args):
                if isinstance(arg, Tensor) and arg.dtype == values.dtype:
                    types[name] = target
        consts.update(constexprs)
        types.update(dict.fromkeys(constexprs, "constexpr"))
        recorder.launches.append(
            LaunchRecord(
                weight_ptr=source.data_ptr(),
                weight_stride=tuple(source.stride()),
                read_stride=tuple(w_strides),
                signature=tuple((n, types[n]) for n in names),
                constexprs=tuple((n, consts[n]) for n in names if n in consts),
                aligned=tuple(aligned),
                config=ConvConfig(*config),
                grid=grid[0],
                tiles=tiles,
                num_warps=num_warps,
                num_stages=num_stages,
                rows=rows,
                cin_g=cin_g,
                cout_g=cout_g,
                taps=taps,
                groups=groups,
            )
        )
        return out.zero_()
    kernel = _conv_elements_kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
    # Only a launch that passed the caller's tensors as they are (no contiguous copy of index, scale or shift).
    as_passed = all(
        a is b for a, b in ((args[1], caller[0]), (args[3], caller[1]), (args[4], caller[2])) if b is not None
    )
    if key is not None and as_passed and _launchable(kernel):
        _remember(key, kernel, args, constexprs, grid[0], weight is not source)
    return out


# ---------------------------------------------------------------------------------------------------- bound launches
# The launch of a conv whose tensors have the same shapes, strides, dtypes and device as an earlier one (every conv
# of a forward with a reused level map) is that earlier launch with other data pointers: same config, constexprs,
# ints and compiled kernel. Its plan is remembered under those facts and replayed without the checks above and
# without Triton's binder (its 45 arguments and 21 constexprs cost ~20 µs per launch); only the pointers' 16-byte
# alignment, which Triton specialises on, is checked again (a mismatch takes the full path, which compiles or
# finds the right kernel). Nothing derived from a tensor's data is kept: the weight's channels-last copy is made at
# every launch as on the full path, so no .data write, load_state_dict or dtype move can be missed.


def _launchable(kernel) -> bool:
    """Whether ``kernel`` is what Triton's ``JITFunction.run`` returns after a launch: a ``CompiledKernel`` (or a
    stand-in with its attributes, as bench/host.py's no-launch kernel), not the interpreter's None."""
    return all(hasattr(kernel, a) for a in ("run", "function", "packed_metadata"))


def _meta(t: Tensor | None) -> tuple | None:
    return None if t is None else (t.shape, t.stride(), t.dtype)


def _plan_key(values, index, weight, taps, groups, scale, shift, bn, residual, act, out_dtype, config) -> tuple:
    """Everything but the data pointers and eps that :func:`conv_elements`'s launch depends on."""
    bn_meta = None if bn is None else tuple(_meta(t) for t in bn[:4])
    return (
        values.shape, values.stride(), values.dtype, values.device, _meta(index), weight.shape, weight.stride(),
        weight.dtype, taps, groups, _meta(scale), _meta(shift), bn_meta, _meta(residual), act, out_dtype, config,
    )  # fmt: skip


_PLANS: dict[tuple, BoundLaunch] = {}
#: Remembered plans at most (distinct conv shapes): a model has a few hundred; beyond, the oldest is dropped.
MAX_PLANS = 4096


@dataclasses.dataclass(frozen=True)
class BoundLaunch:
    """A remembered launch of :func:`conv_elements` (see the comment above): everything but the data pointers.

    Made by :func:`conv_elements` after a launch through Triton's ``JITFunction.run``; :func:`launch_plan` finds the
    one for given arguments, so that a caller that keeps it (``adatriton.ops.conv``'s eager plans) launches without
    even the key lookup. Call :meth:`launch` only with tensors of the shapes, strides, dtypes and device of the
    arguments the plan was made for (:func:`launch_plan`'s).
    """

    jit: object  # the kernel object the plan was made with: a patched one (tests, tools) never replays this
    kernel: object
    device: int
    grid: int
    rows: int
    cout: int
    out_dtype: torch.dtype
    copy_weight: bool
    tail: tuple  # the launch's last arguments: every int argument (rows ... sw_x, fixed by the key), then the
    # constexprs' values in the kernel's parameter order
    aligned: tuple[bool, ...]  # 16-byte alignment of the 11 tensor arguments at the first launch
    all_aligned: bool  # all of them

    def launch(self, values, index, weight, scale, shift, bn, residual) -> Tensor | None:
        """The launch, or None when Triton would specialise differently (alignment, device, launch hooks), the
        kernel object was replaced, or launches are being recorded (:func:`record_launches`)."""
        if _recorders or self.jit is not _conv_elements_kernel:
            return None
        enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        # a hook (a function, or a non-empty HookChain in Triton >= 3.7) wants JITFunction.run's launch metadata
        if getattr(enter, "calls", enter) or getattr(leave, "calls", leave):
            return None
        active = driver.active
        device = active.get_current_device()
        if device != self.device:
            return None
        if self.copy_weight:
            weight = weight.contiguous(memory_format=torch.channels_last)
        out = torch.empty(self.rows, self.cout, dtype=self.out_dtype, device=values.device)
        bn_w, bn_b, mean, var, eps = (None, None, out, out, 0.0) if bn is None else bn
        tensors = (
            values, out if index is None else index, weight, out if scale is None else scale,
            out if shift is None else shift, out if bn_w is None else bn_w, out if bn_b is None else bn_b, mean, var,
            out if residual is None else residual, out,
        )  # fmt: skip
        if self.all_aligned:
            # The usual case: one OR of the pointers instead of a tuple of 11 flags, each distinct tensor once (the
            # output stands in for every absent one).
            bits = values.data_ptr() | weight.data_ptr() | out.data_ptr()
            for t in (index, scale, shift, bn_w, bn_b, residual):
                if t is not None:
                    bits |= t.data_ptr()
            if bn is not None:
                bits |= mean.data_ptr() | var.data_ptr()
            if bits & 15:
                return None
        elif tuple(t.data_ptr() % 16 == 0 for t in tensors) != self.aligned:
            return None
        kernel = self.kernel
        # JITFunction.run's launch call; no hook reads the launch metadata
        kernel.run(
            self.grid, 1, 1, active.get_current_stream(device), kernel.function, kernel.packed_metadata,
            None, enter, leave, *tensors[:9], float(eps), *tensors[9:], *self.tail,
        )  # fmt: skip
        return out


def _remember(key: tuple, kernel, args: tuple, constexprs: dict, grid: int, copy_weight: bool) -> None:
    tensors = args[:9] + args[10:12]
    aligned = tuple(t.data_ptr() % 16 == 0 for t in tensors)
    out = args[11]
    if len(_PLANS) >= MAX_PLANS:
        del _PLANS[next(iter(_PLANS))]
    _PLANS[key] = BoundLaunch(
        jit=_conv_elements_kernel,
        kernel=kernel,
        device=driver.active.get_current_device(),
        grid=grid,
        rows=out.shape[0],
        cout=out.shape[1],
        out_dtype=out.dtype,
        copy_weight=copy_weight,
        tail=(*args[12:], *(constexprs[name] for name in _CONSTEXPR_ORDER)),
        aligned=aligned,
        all_aligned=all(aligned),
    )


def launch_plan(
    values: Tensor,
    index: Tensor | None,
    weight: Tensor,
    *,
    taps: int,
    groups: int = 1,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    bn: tuple | None = None,
    residual: Tensor | None = None,
    act: int = 0,
    out_dtype: torch.dtype | None = None,
    config: ConvConfig | None = None,
) -> BoundLaunch | None:
    """The remembered launch of :func:`conv_elements` with these arguments (as its own), or None: none remembered
    (no launch of these shapes yet, the interpreter, a patched kernel, a launch that copied an index, scale or
    shift), or launches are being recorded. Its :meth:`BoundLaunch.launch` then stands for ``conv_elements`` with
    tensors of the same shapes, strides, dtypes and device (it returns None where it cannot)."""
    if _recorders or not isinstance(_conv_elements_kernel, JITFunction):
        return None
    key = _plan_key(values, index, weight, taps, groups, scale, shift, bn, residual, act, out_dtype, config)
    plan = _PLANS.get(key)
    return plan if plan is not None and plan.jit is _conv_elements_kernel else None


def clear_launch_plans() -> None:
    """Forget every remembered launch (the next launch of each conv takes the full path)."""
    _PLANS.clear()


_CONSTEXPR_ORDER = tuple(
    name for name, p in inspect.signature(_conv_elements_kernel.fn).parameters.items() if "constexpr" in str(p)
)
