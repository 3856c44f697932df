"""The triton backend against the torch backend (the reference), in the interpreter on the CPU or on a GPU.

Inputs are rounded to the kernel dtype first and the reference runs in float64 on the rounded values, so the
tolerances only cover fp32 accumulation order and the final cast: fp16 and bf16 allow about one output ulp
(bf16 casts truncate in the interpreter), fp32 a few ulps of the reduction length.
"""

import pytest
import torch

import adatriton.ops as AF
from adatriton import LevelMap, MultiResMap, densify, use_backend
from adatriton.kernels.densify import densify_elements

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
]
#: Relative tolerance per dtype (of the output's magnitude), see the module docstring.
RTOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, reduction: int) -> None:
    scale = expected.abs().max().item() or 1.0
    tol = RTOL[dtype] * scale * (1.0 if dtype != torch.float32 else max(1.0, reduction / 64) ** 0.5)
    err = (got.double().cpu() - expected).abs().max().item()
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g} (scale {scale:.3g})"


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensor in the kernel dtype on the device, and the same values in float64 on the CPU."""
    low = t.to(dtype)
    return low.to(DEVICE), low.double()


def _maps(lm: LevelMap, stage: int, channels: int, dtype: torch.dtype, seed: int):
    lay = lm.layout(stage)
    values = torch.randn(lay.num_elements, channels, generator=torch.Generator().manual_seed(seed))
    low, ref = _rounded(values, dtype)
    lm_dev = lm.to(DEVICE)
    return MultiResMap(low, lm_dev.layout(stage)), MultiResMap(ref, lay)


CASES = [
    # (id, K, H, W, Cin, Cout, k, tap spacing, groups)
    ("K1-8x8-c3-o1", 1, 8, 8, 3, 16, 3, 1, 1),
    ("K2-11x13-c16-o2", 2, 11, 13, 16, 24, 3, 2, 1),
    ("K3-16x9-c24-o4", 3, 16, 9, 24, 16, 3, 4, 1),
    ("K2-7x10-c64-o2", 2, 7, 10, 64, 32, 3, 2, 1),
    ("K2-9x9-c16-g2", 2, 9, 9, 16, 8, 3, 1, 2),
    ("K2-10x6-1x1-c24", 2, 10, 6, 24, 16, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conv_matches_torch_backend(case, dtype):
    _, k_levels, h, w, cin, cout, k, spacing, groups = case
    lm = LevelMap.random(2, h, w, k_levels, generator=torch.Generator().manual_seed(h * w))
    weight = torch.randn(cout, cin // groups, k, k, generator=torch.Generator().manual_seed(cin))
    bias = torch.randn(cout, generator=torch.Generator().manual_seed(cout))
    w_low, w_ref = _rounded(weight, dtype)
    b_low, b_ref = _rounded(bias, dtype)
    for stage in range(k_levels + 1):
        x, x_ref = _maps(lm, stage, cin, dtype, stage)
        for step in (False, True) if stage < k_levels else (False,):
            got = AF.conv2d(x, w_low, b_low, spacing, groups, step, backend="triton")
            expected = AF.conv2d(x_ref, w_ref, b_ref, spacing, groups, step, backend="torch")
            assert got.values.dtype == dtype and got.stage == expected.stage
            _close(got.values, expected.values, dtype, k * k * cin // groups)


@pytest.mark.parametrize("level", [0, 2], ids=["full-level0", "empty-level0"])
def test_conv_with_empty_and_full_levels(level):
    lm = LevelMap.uniform(2, 9, 10, level, 2)
    weight = torch.randn(16, 16, 3, 3)
    w_low, w_ref = _rounded(weight, torch.float16)
    for stage in range(3):
        x, x_ref = _maps(lm, stage, 16, torch.float16, stage)
        for step in (False, True) if stage < 2 else (False,):
            got = AF.conv2d(x, w_low, None, 4, downsample=step, backend="triton")
            expected = AF.conv2d(x_ref, w_ref, None, 4, downsample=step, backend="torch")
            _close(got.values, expected.values, torch.float16, 144)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", [False, True], ids=["same-stage", "downsampling"])
def test_fused_conv_bn_add_relu_is_one_exact_launch(dtype, step):
    lm = LevelMap.random(2, 12, 10, 2, generator=torch.Generator().manual_seed(3))
    x, x_ref = _maps(lm, 0, 16, dtype, 1)
    weight, bias = torch.randn(24, 16, 3, 3), torch.randn(24)
    bn = torch.nn.BatchNorm2d(24).eval()
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    res, res_ref = _maps(lm, int(step), 24, dtype, 2)
    w_low, w_ref = _rounded(weight, dtype)
    b_low, b_ref = _rounded(bias, dtype)
    with torch.no_grad():
        got = AF.conv_bn_act(x, w_low, b_low, bn.to(DEVICE), True, res, 2, downsample=step, backend="triton")
        expected = AF.conv_bn_act(
            x_ref, w_ref, b_ref, bn.cpu().double(), True, res_ref, 2, downsample=step, backend="torch"
        )
    _close(got.values, expected.values, dtype, 9 * 16)
    assert (got.values >= 0).all()


def test_strided_shortcut_is_subsample_then_1x1():
    lm = LevelMap.random(2, 9, 14, 2, generator=torch.Generator().manual_seed(5))
    x, x_ref = _maps(lm, 1, 8, torch.float32, 0)
    weight = torch.randn(12, 8, 1, 1)
    got = AF.conv2d(x, weight.to(DEVICE), None, downsample=True, backend="triton")
    expected = AF.conv2d(AF.downsample(x_ref), weight.double(), None, backend="torch")
    _close(got.values, expected.values, torch.float32, 8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_densify_kernel(dtype, channels_last):
    lm = LevelMap.random(2, 13, 11, 3, generator=torch.Generator().manual_seed(7))
    for stage in range(4):
        x, x_ref = _maps(lm, stage, 40, dtype, stage)
        ids = x.layout.id_map[:, :13, :11]
        got = densify_elements(x.values, ids, channels_last)
        assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert torch.equal(got.double().cpu(), densify(x_ref))
        assert torch.equal(x.densify(backend="triton"), got)


def test_backward_matches_torch_backend():
    lm = LevelMap.random(1, 6, 7, 1, generator=torch.Generator().manual_seed(2))
    x, _ = _maps(lm, 0, 4, torch.float32, 0)
    values = x.values.clone().requires_grad_()
    weight = torch.randn(5, 4, 3, 3, device=DEVICE, requires_grad=True)
    bias = torch.randn(5, device=DEVICE, requires_grad=True)
    grads = {}
    for backend in ("triton", "torch"):
        out = AF.conv2d(MultiResMap(values, x.layout), weight, bias, 2, downsample=True, backend=backend)
        grads[backend] = torch.autograd.grad((out.values**2).sum(), (values, weight, bias))
    for a, b in zip(grads["triton"], grads["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_triton_backend_rejects_what_it_cannot_run(monkeypatch):
    lm = LevelMap.uniform(1, 4, 4, 0, 1)
    x = MultiResMap(torch.randn(16, 4, dtype=torch.float64), lm.layout(0))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        AF.conv2d(x, torch.randn(2, 4, 3, 3, dtype=torch.float64), backend="triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            AF.conv2d(x.with_values(x.values.float()), torch.randn(2, 4, 3, 3), backend="triton")


@pytest.mark.slow
def test_resnet50_adaptive_forward_on_triton_equals_torch(monkeypatch):
    """A whole converted ResNet-50 8->32 run through $ADATRITON_BACKEND=triton (every conv a fused launch)
    against the torch backend, fp32."""
    import torchvision

    import adatriton
    from adatriton.kernels import conv as conv_kernels

    launches = []
    launch = conv_kernels.conv_elements
    monkeypatch.setattr(conv_kernels, "conv_elements", lambda *a, **kw: launches.append(kw) or launch(*a, **kw))
    model = torchvision.models.resnet50().eval()
    net = adatriton.convert(model, "8->32").eval().to(DEVICE)
    x = torch.randn(2, 3, 64, 80, device=DEVICE)
    lm = LevelMap.random(2, 8, 10, 2, generator=torch.Generator().manual_seed(11)).to(DEVICE)
    with torch.inference_mode():
        with use_backend("torch"):
            expected = net(x, lm).double().cpu()
        monkeypatch.setenv("ADATRITON_BACKEND", "triton")
        got = net(x, lm)
    # layer3 (6 blocks) and layer4 (3 blocks): 3 fused conv-BN(-add)-ReLU each, plus 2 shortcuts
    assert len(launches) == 9 * 3 + 2
    _close(got, expected, torch.float32, 4608)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_resnet101_adaptive_fp16_on_gpu(dtype):
    """ResNet-101 8->32 on the GPU in half precision against the torch backend in fp32."""
    import torchvision

    import adatriton

    model = torchvision.models.resnet101()
    for m in model.modules():  # features ~1 (max ~6) instead of ~1e4 with the default init, inside fp16 range
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.6, 0.9)
    net = adatriton.convert(model, "8->32").eval().cuda()
    x = torch.randn(1, 3, 256, 512, device="cuda")
    keep = torch.rand(1, 32, 64, generator=torch.Generator().manual_seed(0)) < 0.1
    lm = LevelMap.from_keep_mask(keep, "8->32").to("cuda")
    with torch.inference_mode():
        with use_backend("torch"):
            expected = net.forward_features(x, lm).double().cpu()
        with use_backend("triton"):
            got = net.to(dtype).forward_features(x.to(dtype), lm)
    err = ((got.double().cpu() - expected).norm() / expected.norm()).item()
    assert err < (2e-2 if dtype == torch.bfloat16 else 5e-3), f"relative L2 error {err:.3g}"
