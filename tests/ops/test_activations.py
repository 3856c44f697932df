"""The conv epilogue's activations (``conv_bn_act(..., activation=)``): ReLU, ReLU6, hardswish and SiLU fused into
the conv on every backend equal torch's functions applied after the unfused op.

float64 on the torch and dense backends (to 1e-12); the triton backend (interpreter on the CPU, or a GPU) against
the float64 reference with the kernel tests' tolerances. Training-mode BatchNorm and gradients take the unfused
path: exactly the op-by-op result.
"""

import pytest
import torch
import torch.nn.functional as F

import adatriton.ops as AF
from adatriton import LevelMap, MultiResMap

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TORCH_FNS = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu}
#: Relative tolerance per dtype (of the output's magnitude), as tests/ops/test_triton.py.
RTOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2}


def _bn(channels: int, seed: int) -> torch.nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(channels, generator=gen) * 2 - 1)
        bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
        bn.weight.copy_(torch.rand(channels, generator=gen) * 4 + 1)  # outputs reach both clamps (-3 and 6)
        bn.bias.copy_(torch.randn(channels, generator=gen))
    return bn


def _problem(k: int, groups: int, step: bool, dtype=torch.float64):
    lm = LevelMap.random(2, 10, 12, 2, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(k * 10 + groups)
    cin, cout = 8, 8 if groups > 1 else 12
    x = MultiResMap(torch.randn(lm.layout(0).num_elements, cin, generator=gen, dtype=dtype), lm.layout(0))
    weight = torch.randn(cout, cin // groups, k, k, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    out_layout = lm.layout(int(step))
    residual = MultiResMap(torch.randn(out_layout.num_elements, cout, generator=gen, dtype=dtype), out_layout)
    return x, weight, bias, _bn(cout, k + groups).to(dtype), residual


GEOMETRIES = [(3, 1, False), (3, 1, True), (1, 1, False), (1, 1, True), (3, 8, False), (3, 8, True)]
GEOMETRY_IDS = ["3x3", "3x3-step", "1x1", "1x1-step", "dw3x3", "dw3x3-step"]


@pytest.mark.parametrize("backend", ["torch", "dense"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
@pytest.mark.parametrize("activation", list(TORCH_FNS))
def test_fused_activation_equals_the_function_after(backend, geometry, activation):
    k, groups, step = geometry
    x, weight, bias, bn, residual = _problem(k, groups, step)
    kw = dict(tap_spacing=2, groups=groups, downsample=step, backend=backend)
    with torch.no_grad():
        for res in (None, residual):
            got = AF.conv_bn_act(x, weight, bias, bn, residual=res, activation=activation, **kw)
            plain = AF.conv_bn_act(x, weight, bias, bn, residual=res, **kw)
            expected = TORCH_FNS[activation](plain.values)
            assert got.layout is plain.layout
            torch.testing.assert_close(got.values, expected, rtol=1e-12, atol=1e-12)
            if activation in ("relu6", "hardswish"):  # both clamps reached: the test sees them
                assert (plain.values > 6).any() and (plain.values < -3).any()


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the interpreter's sigmoid at -100: 0, exactly
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("activation", ["relu6", "hardswish", "silu"])
def test_triton_epilogue_activation(activation, dtype):
    x, weight, bias, bn, residual = _problem(3, 1, True)
    low = [t.to(dtype) for t in (x.values, weight, bias, residual.values)]
    ref = [t.to(torch.float64) for t in low]  # the reference on the values rounded to the kernel dtype
    lm = x.layout.levelmap.to(DEVICE)
    with torch.no_grad():
        got = AF.conv_bn_act(
            MultiResMap(low[0].to(DEVICE), lm.layout(0)),
            low[1].to(DEVICE),
            low[2].to(DEVICE),
            bn.float().to(DEVICE),
            residual=MultiResMap(low[3].to(DEVICE), lm.layout(1)),
            tap_spacing=2,
            downsample=True,
            backend="triton",
            activation=activation,
        )
        plain = AF.conv_bn_act(
            MultiResMap(ref[0], x.layout), ref[1], ref[2], bn.double(), residual=MultiResMap(ref[3], residual.layout),
            tap_spacing=2, downsample=True, backend="torch",
        )  # fmt: skip
    expected = TORCH_FNS[activation](plain.values)
    scale = expected.abs().max().item()
    tol = RTOL[dtype] * scale * (1.0 if dtype != torch.float32 else (9 * 8 / 64) ** 0.5)
    err = (got.values.double().cpu() - expected).abs().max().item()
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("activation", ["relu6", "hardswish", "silu"])
def test_training_and_gradients_take_the_exact_unfused_path(activation):
    """Train-mode BatchNorm (statistics over the elements) and a weight that needs a gradient: the op-by-op result
    exactly, and a gradient that reaches the weight."""
    x, weight, bias, bn, residual = _problem(3, 1, False)
    fn = TORCH_FNS[activation]
    train_bn = _bn(weight.shape[0], 0).double().train()
    check_bn = _bn(weight.shape[0], 0).double().train()
    got = AF.conv_bn_act(x, weight, bias, train_bn, residual=residual, tap_spacing=2, activation=activation)
    conv = AF.conv2d(x, weight, bias, 2)
    expected = fn(AF.batch_norm(conv, check_bn).values + residual.values)
    assert torch.equal(got.values, expected)
    assert torch.equal(train_bn.running_mean, check_bn.running_mean)
    w = weight.clone().requires_grad_()
    out = AF.conv_bn_act(x, w, bias, bn, residual=residual, tap_spacing=2, activation=activation)
    with torch.no_grad():
        fused = AF.conv_bn_act(x, weight, bias, bn, residual=residual, tap_spacing=2, activation=activation)
    torch.testing.assert_close(out.values, fused.values, rtol=1e-12, atol=1e-12)
    out.values.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_relu_spellings_and_unknown_names():
    x, weight, bias, bn, _ = _problem(3, 1, False)
    with torch.no_grad():
        by_flag = AF.conv_bn_act(x, weight, bias, bn, relu=True)
        by_name = AF.conv_bn_act(x, weight, bias, bn, activation="relu")
        both = AF.conv_bn_act(x, weight, bias, bn, relu=True, activation="relu")
    assert torch.equal(by_flag.values, by_name.values) and torch.equal(by_flag.values, both.values)
    with pytest.raises(ValueError, match="unknown activation 'gelu'.*relu, relu6, hardswish, silu"):
        AF.conv_bn_act(x, weight, bias, bn, activation="gelu")
    with pytest.raises(ValueError, match="two activations"):
        AF.conv_bn_act(x, weight, bias, bn, relu=True, activation="silu")
    with pytest.raises(ValueError, match="unknown activation"):
        AF.bn_add_act(x, bn, activation="ReLU")
