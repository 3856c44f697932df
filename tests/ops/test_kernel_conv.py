"""The implicit-GEMM conv kernel itself (``adatriton.kernels.conv``), in the interpreter on the CPU or on a GPU.

Against a plain torch gather-GEMM written here (float64 on the values rounded to the kernel dtype), so they test
the kernel's tap tables, offsets, configs and epilogue, not the host path around it: int32 and int64 tap tables,
the 32/64-bit offset decision, taps outside the image, and every config of the search space (split epilogues,
the persistent grid). Also the pure-Python config helpers: ``config_problems``, the per-architecture defaults,
pruning by shared memory, and a search space without configs that compile to the same kernel.

Shapes are tiny (the interpreter runs every program in numpy); channels are no multiples of 16 on purpose.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from adatriton.kernels import conv
from adatriton.kernels.conv import ConvConfig, conv_elements, pack_weight

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: Relative tolerance per dtype (of the output's magnitude): fp32 accumulation order; one fp16 output ulp; bf16 one
#: ulp and the interpreter's truncating fp32 -> bf16 cast.
RTOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
]


def _close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, reduction: int) -> None:
    scale = expected.abs().max().item() or 1.0
    tol = RTOL[dtype] * scale * (1.0 if dtype != torch.float32 else max(1.0, reduction / 64) ** 0.5)
    err = (got.double().cpu() - expected).abs().max().item()
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g} (scale {scale:.3g})"


def _reference(values, index, weight, groups=1, scale=None, shift=None, residual=None, relu=False):
    """``act(scale * sum_t W_t values[index[:, t]] + shift + residual)`` in float64; taps ``>= E`` read zero."""
    e_in, cin = values.shape
    cout, cin_g, taps = weight.shape[0], weight.shape[1], weight.shape[2] * weight.shape[3]
    src = torch.cat([values.double().cpu(), torch.zeros(1, cin, dtype=torch.float64)])
    cols = src[index.cpu().clamp(max=e_in)]  # (M, taps, Cin)
    cols = cols.view(len(index), taps, groups, cin_g)
    w = weight.double().cpu().reshape(groups, cout // groups, cin_g, taps)
    out = torch.einsum("mtgc,goct->mgo", cols, w).reshape(len(index), cout)
    if scale is not None:
        out = out * scale.double().cpu()
    if shift is not None:
        out = out + shift.double().cpu()
    if residual is not None:
        out = out + residual.double().cpu()
    return out.clamp(min=0) if relu else out


def _problem(rows, e_in, cin, cout, dtype, seed=0, taps=9, outside=0.2):
    """Values, weight, an int64 tap table (about ``outside`` of its taps ``>= E_in``) and an epilogue."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(e_in, cin, generator=gen).to(dtype)
    k = int(taps**0.5)
    weight = (torch.randn(cout, cin, k, k, generator=gen) / (taps * cin) ** 0.5).to(dtype)
    index = torch.randint(0, e_in, (rows, taps), generator=gen)
    out_of_range = torch.rand(rows, taps, generator=gen) < outside
    index[out_of_range] = e_in + torch.randint(0, 3, (int(out_of_range.sum()),), generator=gen)
    scale = torch.rand(cout, generator=gen) + 0.5
    shift = torch.randn(cout, generator=gen)
    residual = torch.randn(rows, cout, generator=gen).to(dtype)
    return values, weight, index, scale, shift, residual


def _run(values, weight, index, *, groups=1, **kw):
    """conv_elements on DEVICE with the weight packed; ``index`` None runs the 1x1 path."""
    taps = weight.shape[2] * weight.shape[3]
    on = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    return conv_elements(
        values.to(DEVICE),
        None if index is None else index.to(DEVICE),
        pack_weight(weight.to(DEVICE), groups),
        taps=taps,
        groups=groups,
        **on,
    )


class KernelSpy:
    """Stands in for the Triton kernel object: records each launch's grid and constexprs, then launches."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, kwargs))
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.fixture
def spy(monkeypatch):
    spy = KernelSpy(conv._conv_elements_kernel)
    monkeypatch.setattr(conv, "_conv_elements_kernel", spy)
    return spy


# ---------------------------------------------------------------------------------------------- tap tables
def test_int32_and_int64_tap_tables_give_the_same_result(spy):
    """Also the unmasked-channel path: 32 input channels are 2 whole 16-wide K blocks (EVEN_K)."""
    values, weight, index, scale, shift, residual = _problem(40, 30, 32, 20, torch.float32)
    index[3, 4] = 2**40  # an int64 "outside" entry far beyond int32: still reads zero
    config = ConvConfig(32, 32, 16, 3, 4)
    epilogue = dict(scale=scale, shift=shift, residual=residual, act=1, config=config)
    wide = _run(values, weight, index, **epilogue)
    small = index.clone()
    small[3, 4] = 31  # outside too, in int32 range
    narrow = _run(values, weight, small.int(), **epilogue)
    assert [(kw["INT64_OFFSETS"], kw["EVEN_K"]) for _, kw in spy.launches] == [(False, True)] * 2
    assert torch.equal(wide, narrow)
    _close(wide, _reference(values, index, weight, 1, scale, shift, residual, True), torch.float32, 9 * 32)


def test_offset_width_decision_at_the_threshold():
    assert not conv.needs_int64_offsets(2**31 // 256 - 1, 256)
    assert conv.needs_int64_offsets(2**31 // 256, 256)
    assert not conv.needs_int64_offsets(32768, 2048)  # layer4 of a 1024x2048 image at OS8
    assert conv.needs_int64_offsets(10, 7, limit=70) and not conv.needs_int64_offsets(10, 7, limit=71)


@pytest.mark.parametrize("gather", [True, False], ids=["gather", "1x1"])
def test_forced_int64_offsets_compute_the_same(spy, monkeypatch, gather):
    """The 64-bit offset path (E_in * stride >= 2^31 on real data), forced on a tiny problem by lowering the limit
    to exactly E_in * stride; one element less keeps 32 bits."""
    values, weight, index, *_ = _problem(24, 24 if not gather else 30, 10, 12, torch.float16)
    if not gather:
        weight, index = weight[:, :, :1, :1].contiguous(), None
    e_in, stride = values.shape[0], values.stride(0)
    config = ConvConfig(16, 16, 16, 3, 4)
    monkeypatch.setattr(conv, "INT32_OFFSET_LIMIT", e_in * stride + 1)
    narrow = _run(values, weight, index, config=config)
    monkeypatch.setattr(conv, "INT32_OFFSET_LIMIT", e_in * stride)
    wide = _run(values, weight, index, config=config)
    assert [kw["INT64_OFFSETS"] for _, kw in spy.launches] == [False, True]
    assert torch.equal(wide, narrow)
    ref_index = index if gather else torch.arange(e_in)[:, None]
    _close(wide, _reference(values, ref_index, weight), torch.float16, weight[0].numel())


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_taps_outside_the_image_read_zero(index_dtype):
    """A single-level 5x7 grid with a 3x3 tap table whose border taps point past the last element equals
    ``F.conv2d`` with zero padding."""
    h, w, cin, cout = 5, 7, 6, 5
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(1, cin, h, w, generator=gen)
    weight = torch.randn(cout, cin, 3, 3, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    taps = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            y, x = ys + dy, xs + dx
            inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            taps.append(torch.where(inside, y * w + x, h * w + (dy + 1) * 3 + dx + 1).flatten())  # >= E: zero
    index = torch.stack(taps, 1).to(index_dtype)
    assert (index >= h * w).any(1).sum() == 2 * (h + w) - 4  # every border pixel has taps outside
    values = image[0].permute(1, 2, 0).reshape(h * w, cin).contiguous()
    got = _run(values, weight, index, config=ConvConfig(16, 16, 16, 3, 4))
    expected = F.conv2d(image.double(), weight.double(), padding=1)[0].permute(1, 2, 0).reshape(h * w, cout)
    _close(got, expected, torch.float32, 9 * cin)


# ---------------------------------------------------------------------------------------------- every config
def _config_id(c: ConvConfig) -> str:
    return "x".join(map(str, c[:3])) + f"-s{c[3]}-w{c[4]}" + ("-p" if c.persistent else "")


SPACE = conv.conv_configs()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", SPACE, ids=[_config_id(c) for c in SPACE])
def test_every_config_computes_the_fused_conv(spy, config, dtype):
    """3x3 gather, 20 input and BLOCK_N / 2 + 8 output channels (the second epilogue half has channels too),
    scale, shift, residual and ReLU; the persistent configs walk several tiles per program."""
    block_m, block_n = config[:2]
    rows = 2 * block_m + 5 if config.persistent else block_m + 5
    values, weight, index, scale, shift, residual = _problem(rows, 70, 20, block_n // 2 + 8, dtype, seed=block_n)
    epilogue = dict(scale=scale, shift=shift, residual=residual, act=1)
    got = _run(values, weight, index.int(), **epilogue, config=config)
    (grid, kw), tiles = spy.launches[-1], -(-rows // block_m)
    parts = conv.epilogue_parts(block_n, conv.device_arch(values.device), values.element_size())
    assert kw["SPLIT_N"] == parts and kw["PERSISTENT"] == config.persistent and not kw["EVEN_K"]
    if not config.persistent:
        assert grid == (tiles,)
    elif DEVICE == "cpu":
        assert grid == (conv.INTERPRETER_PROGRAMS,) and tiles > conv.INTERPRETER_PROGRAMS
    assert got.dtype == dtype
    _close(got, _reference(values, index, weight, 1, scale, shift, residual, True), dtype, 9 * 20)


def test_the_space_has_split_epilogues_and_persistent_grids():
    """The epilogue runs in 64-channel parts (128 for fp32 on sm_80, where 64 spilled), so 128x128, 128x256 and
    256x128 tiles split in 2 or 4; the test above runs each config, the interpreter taking the sm_80 rule."""
    parts = {(c[1], arch, size): conv.epilogue_parts(c[1], arch, size) for c in SPACE for arch in (80, 90, None)
             for size in (2, 4)}  # fmt: skip
    assert {(n, arch, size) for (n, arch, size), p in parts.items() if p > 1} == {
        (n, arch, size) for n in (128, 256) for arch in (80, 90, None) for size in (2, 4)
        if n // (128 if size == 4 and arch != 90 else 64) > 1
    }  # fmt: skip
    assert parts[256, 90, 2] == parts[256, 90, 4] == parts[256, 80, 2] == 4 and parts[256, 80, 4] == 2
    assert parts[128, 90, 4] == 2 and parts[128, 80, 4] == 1 and parts[64, 90, 2] == 1
    assert {c[:2] for c in SPACE if c[1] == 256} == {(128, 256), (64, 256)}
    assert {c[:2] for c in SPACE if c.persistent} == {(128, 128), (128, 256)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_1x1_and_default_config(dtype):
    """Groups (each group's channels start at group * Cin/g = 10: row starts only 2-aligned) on the 1x1 and the
    gather path, with the default config of this device."""
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(33, 20, generator=gen).to(dtype)
    weight = (torch.randn(12, 10, 1, 1, generator=gen) / 3).to(dtype)
    got = _run(values, weight, None, groups=2)
    assert conv._row_align(values.stride(0), 10, 2) == 2
    expected = _reference(values, torch.arange(33)[:, None], weight, groups=2)
    _close(got, expected, dtype, 10)
    weight3 = (torch.randn(12, 10, 3, 3, generator=gen) / 9).to(dtype)
    index = torch.randint(0, 34, (21, 9), generator=gen)
    _close(_run(values, weight3, index, groups=2), _reference(values, index, weight3, groups=2), dtype, 90)


# ---------------------------------------------------------------------------------------------- config helpers
def test_config_round_trips_as_five_or_six_ints():
    plain, persistent = ConvConfig(128, 128, 64, 3, 8), ConvConfig(128, 256, 64, 3, 8, 1)
    assert list(plain) == [128, 128, 64, 3, 8] and ConvConfig(*plain, 0) == plain and not plain.persistent
    assert list(persistent) == [128, 256, 64, 3, 8, 1] and persistent.persistent
    for c in (plain, persistent):
        assert ConvConfig(*json.loads(json.dumps(list(c)))) == c
    assert persistent.as_dict()["persistent"] == 1 and plain.as_dict()["persistent"] == 0
    assert plain.meta(90, 2) == dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, SPLIT_N=2, PERSISTENT=False)
    assert persistent.meta(90, 2)["SPLIT_N"] == 4 and persistent.meta(80, 4)["SPLIT_N"] == 2
    assert persistent.meta(90, 2)["PERSISTENT"] is True


def test_config_problems_says_why():
    for c in [*SPACE, conv.default_config(10, 3, 5), conv.default_config(1 << 16, 512, 512, arch=90)]:
        assert conv.config_problems(c) == [] and conv.config_problems(list(c)) == []
    assert conv.config_problems([64, 64, 32, 3]) and conv.config_problems("64,64,32,3,4")
    assert conv.config_problems([64, 64, 32.0, 3, 4]) and conv.config_problems([64, 64, True, 3, 4])
    (problem,) = conv.config_problems([96, 64, 32, 3, 4])
    assert "BLOCK_M=96" in problem
    assert len(conv.config_problems([64, 512, 8, 0, 3])) == 4  # BLOCK_N, BLOCK_K, num_warps, num_stages
    assert "persistent=2" in conv.config_problems([64, 64, 32, 3, 4, 2])[0]
    big = ConvConfig(128, 256, 64, 3, 8)  # 3 x 48 KB of fp16 tiles on sm_90, 2 x 96 KB of fp32 on sm_80
    assert conv.config_problems(big, element_size=2, arch=90) == []
    assert conv.config_problems(big, element_size=2, arch=80) == []
    assert "shared memory" in conv.config_problems(big, element_size=4, arch=80)[0]
    assert conv.config_problems(big, element_size=2, arch=89)  # 99 KB opt-in on sm_86/89


def test_prune_configs_drops_what_does_not_fit_the_gpu():
    everything = conv.prune_configs(SPACE, 1 << 16, 512, 512)
    assert everything == SPACE
    fp32_sm80 = conv.prune_configs(SPACE, 1 << 16, 512, 512, element_size=4, arch=80)
    assert ConvConfig(128, 256, 64, 3, 8) not in fp32_sm80 and ConvConfig(128, 128, 32, 4, 8) in fp32_sm80
    assert all(not conv.config_problems(c, element_size=4, arch=80) for c in fp32_sm80)


@pytest.mark.parametrize("arch", [75, 80, 86, 89, 90, 100, 120, None])
def test_default_config_per_architecture(arch):
    big = conv.default_config(1 << 16, 256, 256, arch=arch)
    sm80, small_smem, sm90, generic = (
        (128, 128, 32, 4, 8),
        (128, 128, 32, 3, 8),
        (128, 128, 64, 3, 8),
        (64, 64, 32, 3, 4),
    )
    expected = {75: generic, 80: sm80, 86: small_smem, 89: small_smem, 90: sm90, 100: sm90, 120: small_smem}
    expected[None] = interpreter = tuple(conv.INTERPRETER_DEFAULT)
    assert big == expected[arch] and isinstance(big, ConvConfig)
    assert conv.default_config(20, 16, 32, arch=arch) == (32, 32, 16, big[3], 4)  # shrunk, 4 warps
    assert conv.default_config(300, 64, 64, arch=arch)[:3] == (big[0], 64, min(big[2], 64))
    # channels that are no multiple of 16: the moderate tile everywhere (128x128 spilled there)
    assert conv.default_config(1 << 16, 250, 256, arch=arch) == (interpreter if arch is None else generic)
    assert conv.default_config(20, 3, 24, arch=arch) == (32, 32, 16, 3, 4)
    if arch in conv.SHARED_OPTIN:  # the default fits the GPU for every dtype (fp32 is the largest)
        assert conv.config_problems(big, element_size=4, arch=arch) == []
    # fp32 without TF32 (FMA dots) on a GPU: its own tile, which does not spill; with TF32 the architecture's
    with torch.backends.cudnn.flags(allow_tf32=False):
        fma = conv.default_config(1 << 16, 256, 256, arch=arch, dtype=torch.float32)
        assert fma == (interpreter if arch is None else generic if arch < 80 else conv.FMA_DEFAULT)
        assert conv.default_config(1 << 16, 256, 256, arch=arch, dtype=torch.float16) == big
    with torch.backends.cudnn.flags(allow_tf32=True):
        assert conv.default_config(1 << 16, 256, 256, arch=arch, dtype=torch.float32) == big


def test_no_two_configs_compile_to_the_same_kernel():
    """Stages only matter through the buffers the pipeliner allocates (``pipeline_buffers``); two configs that get
    the same buffers with the same tiles and warps on an architecture are one kernel tuned twice."""
    assert len(set(SPACE)) == len(SPACE)
    for arch in (80, 90):
        kernels = {(c[:3], c[4], c.persistent, conv.pipeline_buffers(c, arch)) for c in SPACE}
        assert len(kernels) == len(SPACE), f"sm_{arch}"
    assert [conv.pipeline_buffers((64, 64, 32, s), 80) for s in (1, 2, 3, 4)] == [1, 1, 2, 3]
    assert [conv.pipeline_buffers((64, 64, 32, s), 90) for s in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert conv.pipeline_buffers((32, 64, 32, 3), 90) == 2  # below 64 rows sm_90 runs mma.sync


# ---------------------------------------------------------------------------------------------- weight layouts
def _own_weight_run(values, weight, index, **kw):
    """conv_elements with the conv's own 4-d weight (any strides), as the launcher passes it."""
    taps = weight.shape[2] * weight.shape[3]
    return conv_elements(values.to(DEVICE), None if index is None else index.to(DEVICE), weight, taps=taps, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_layouts_compute_the_same(dtype):
    """NCHW (torchvision's), channels-last and packed weights give bit-identical outputs, 3x3 and 1x1; on a GPU
    target the kernel reads an NCHW 3x3 weight with contiguous input channels (a channels-last copy)."""
    values, weight, index, scale, shift, residual = _problem(37, 29, 24, 20, dtype)
    epilogue = dict(scale=scale.to(DEVICE), shift=shift.to(DEVICE), residual=residual.to(DEVICE), act=1)
    nchw = weight.to(DEVICE)
    cl = nchw.contiguous(memory_format=torch.channels_last)
    got = _own_weight_run(values, nchw, index, **epilogue)
    assert torch.equal(got, _own_weight_run(values, cl, index, **epilogue))
    assert torch.equal(got, _run(values, weight, index, **{k: v.cpu() for k, v in epilogue.items() if k != "act"},
                                 act=1))  # fmt: skip
    _close(got, _reference(values, index, weight, 1, scale, shift, residual, True), dtype, 9 * 24)
    w1 = weight[:, :, :1, :1].contiguous().to(DEVICE)
    one = _own_weight_run(values, w1, None)
    assert torch.equal(one, _own_weight_run(values, w1.contiguous(memory_format=torch.channels_last), None))
    with conv.record_launches(90, 132) as rec:
        _own_weight_run(values, nchw, index)
        _own_weight_run(values, cl, index)
    assert [r.weight_stride[1] for r in rec.launches] == [9, 1]  # the module's tensors, as they are
    assert [r.read_stride[2] for r in rec.launches] == [1, 1]  # what the kernel reads: input channels contiguous


def test_no_stale_weight_after_data_writes_and_moves():
    """The launch reads the weight as it is now: an in-place write through ``.data`` (which bumps no version
    counter), a ``.data`` swap and a dtype move all show in the next output (no cached copy of the NCHW weight)."""
    values, weight, index, *_ = _problem(21, 17, 16, 12, torch.float32)
    conv2d = torch.nn.Conv2d(16, 12, 3, bias=False).to(DEVICE)
    with torch.no_grad():
        conv2d.weight.copy_(weight)
    assert conv2d.weight.stride(1) == 9  # NCHW, as torchvision builds it
    first = _own_weight_run(values, conv2d.weight.detach(), index)
    version = conv2d.weight._version
    conv2d.weight.data.mul_(2)
    assert conv2d.weight._version == version  # .data writes are invisible to version counters
    assert torch.equal(_own_weight_run(values, conv2d.weight.detach(), index), first * 2)
    conv2d.weight.data = -weight.to(DEVICE)
    assert torch.equal(_own_weight_run(values, conv2d.weight.detach(), index), -first)
    conv2d.half()
    half = _own_weight_run(values.half(), conv2d.weight.detach(), index)
    _close(half, -_reference(values.half(), index, weight.half()), torch.float16, 9 * 16)


def test_record_launches_records_instead_of_running():
    """Under record_launches the kernel does not run (zeros come back) and the record carries Triton's
    specialisation for the recorded GPU: the default config of its arch, constants for ints equal to 1."""
    values, weight, index, *_ = _problem(300, 40, 32, 32, torch.float16)
    w = weight.contiguous(memory_format=torch.channels_last)
    with conv.record_launches(90, 132) as rec:
        out = _own_weight_run(values, w, index.int(), act=1)
    assert not out.any()
    (r,) = rec.launches
    assert r.config == conv.default_config(300, 32, 32, arch=90, dtype=torch.float16, sms=132)
    assert r.tiles == r.grid == -(-300 // r.config[0])
    sig, consts = dict(r.signature), dict(r.constexprs)
    assert sig["x_ptr"] == "*fp16" and sig["index_ptr"] == "*i32" and sig["sw_c"] == "constexpr"
    assert consts["sw_c"] == 1 and consts["ACT"] == 1 and consts["DOT_PRECISION"] == "ieee" and not consts["UPCAST"]
    assert "cin_g" in r.aligned and "rows" not in r.aligned  # 32 is 16-divisible, 300 is not


@pytest.mark.parametrize("taps", [1, 4, 25], ids=["shortcut-1tap", "2x2-4taps", "5x5-25taps"])
def test_tap_counts_of_both_row_paths(taps):
    """The tap columns selected in the loop (up to 9 taps; 1 is the strided shortcut) and the tap tile picked with
    tl.gather (more taps), with a channel count that is no multiple of the K block (two K blocks per tap)."""
    values, weight, index, scale, shift, residual = _problem(23, 19, 20, 12, torch.float16, seed=5, taps=taps)
    got = _run(values, weight, index.int(), shift=shift, residual=residual, act=1, config=ConvConfig(32, 32, 16, 3, 4))
    _close(got, _reference(values, index, weight, 1, None, shift, residual, True), torch.float16, taps * 20)


@pytest.mark.parametrize("act", [2, 3, 4], ids=["relu6", "hardswish", "silu"])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[2]])
def test_epilogue_activations_match_torch(act, dtype):
    """ACT 2-4: the epilogue's ReLU6, hardswish and SiLU equal torch's functions applied to the float64 reference
    (outputs from about -10 to 10, so both clamps of ReLU6 and hardswish are reached)."""
    values, weight, index, scale, shift, residual = _problem(29, 23, 12, 10, dtype, seed=act)
    epilogue = dict(scale=scale * 8, shift=shift * 2, residual=residual, config=ConvConfig(32, 32, 16, 3, 4))
    got = _run(values, weight, index.int(), act=act, **epilogue)
    before = _reference(values, index, weight, 1, scale * 8, shift * 2, residual)
    assert before.max() > 6 and before.min() < -3
    expected = {2: F.relu6, 3: F.hardswish, 4: F.silu}[act](before)
    assert conv.ACTIVATIONS[act] == {2: "relu6", 3: "hardswish", 4: "silu"}[act]
    _close(got, expected, dtype, 9 * 12)


def test_default_config_is_sm_aware():
    """With the SM count, a conv takes the first tile of its family's ladder that gives every SM 1.5 tiles (the
    smallest if none does), and sm_90 the 128x256x64 tile for Cout >= 256 when that still fills the GPU."""
    sm90 = dict(arch=90, dtype=torch.float16, sms=132)
    assert conv.default_config(1 << 16, 256, 256, **sm90) == conv.WIDE_SM90 == (128, 256, 64, 3, 8)
    assert conv.default_config(1 << 16, 256, 128, **sm90) == (128, 128, 64, 3, 8)  # Cout < 256
    # ResNet-101 8->32 at 512x1024: the layer3 3x3 had 62 tiles of 128x128, layer4's 88, for 132 SMs
    layer3 = conv.default_config(31 * 128, 256, 256, **sm90)
    assert layer3 == (64, 64, 64, 3, 4) and -(-31 * 128 // 64) * 4 >= 1.5 * 132
    assert conv.default_config(22 * 128, 512, 512, **sm90) == (64, 64, 64, 3, 4)  # 128x64: 176 tiles, 64x64: 352
    assert conv.default_config(50 * 128, 256, 256, **sm90) == (128, 64, 64, 3, 8)  # 128x64: 200 tiles
    assert conv.default_config(100, 256, 256, **sm90) == (64, 64, 64, 3, 4)  # too small for any: the smallest
    sm80 = dict(arch=80, dtype=torch.float16, sms=108)
    assert conv.default_config(1 << 16, 256, 256, **sm80) == (128, 128, 32, 4, 8)
    assert conv.default_config(42 * 128, 256, 256, **sm80) == (128, 64, 32, 4, 4)  # 84 tiles -> 168
    for family, ladder in conv.SM_LADDERS.items():
        assert ladder[0] == conv.DEFAULT_CONFIGS[family] and set(ladder[1:]) <= set(conv.conv_configs())
    assert conv.WIDE_SM90 in conv.conv_configs()
    # without the SM count: the architecture's default, as before
    assert conv.default_config(31 * 128, 256, 256, arch=90) == (128, 128, 64, 3, 8)
