"""torch.compile: the registered custom ops pass torch.library's checks, and a compiled converted model equals eager."""

import pytest
import torch
from torchvision.models.resnet import Bottleneck, ResNet

import adatriton
from adatriton import LevelMap
from adatriton import ops as AF
from adatriton.runtime.backend import triton_runs_on


def _tiny_net(backend: str) -> tuple[torch.nn.Module, torch.Tensor, LevelMap]:
    """A one-block-per-layer bottleneck ResNet: every kind of adaptive block (steps in layer3 and layer4)."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16).eval()
    net = adatriton.convert(model, "8->32", backend=backend).eval()
    x = torch.randn(2, 3, 64, 72)
    lm = LevelMap.random(2, 8, 9, 2, generator=torch.Generator().manual_seed(1))
    return net, x, lm


def _op_samples(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(11, 6, generator=g, dtype=dtype)
    index = torch.randint(0, 12, (7, 9), generator=g)  # 11 = E reads zero
    weight = torch.randn(4, 6, 3, 3, generator=g, dtype=dtype)
    return values, index, weight, torch.randn(4, generator=g, dtype=dtype)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_gather_conv_op_passes_opcheck(groups, with_bias):
    values, index, weight, bias = _op_samples(torch.float64)
    weight = weight[:, : 6 // groups].contiguous().requires_grad_()
    args = (values.requires_grad_(), weight, bias.requires_grad_() if with_bias else None, index, groups)
    torch.library.opcheck(torch.ops.adatriton.gather_conv.default, args)
    assert torch.autograd.gradcheck(lambda v, w: torch.ops.adatriton.gather_conv(v, w, None, index, groups), args[:2])


def test_triton_ops_pass_opcheck():
    if not triton_runs_on(torch.device("cpu")):
        pytest.skip("the Triton ops need TRITON_INTERPRET=1 on the CPU")
    values, index, weight, bias = _op_samples()
    args = (values.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), index, 1, None, None, False)
    # the interpreter's fp32 dot differs from the reference matmul in the last bits: opcheck compares exactly
    torch.library.opcheck(torch.ops.adatriton.triton_conv.default, args, test_utils=("test_schema", "test_faketensor"))
    ids = torch.randint(0, 12, (2, 3, 5), generator=torch.Generator().manual_seed(3))
    torch.library.opcheck(torch.ops.adatriton.densify.default, (values.detach().requires_grad_(), ids))


@pytest.mark.parametrize("backend", ["torch", "dense"])
def test_compiled_converted_model_equals_eager_without_graph_breaks(backend):
    net, x, lm = _tiny_net(backend)
    with torch.no_grad():
        expected = net(x, lm)  # also builds the level map's index tables, which the compiled graph reads
        explanation = torch._dynamo.explain(net)(x, lm)
        assert explanation.graph_break_count == 0, [str(b.reason)[:200] for b in explanation.break_reasons]
        torch._dynamo.reset()
        compiled = torch.compile(net, fullgraph=True)
        torch.testing.assert_close(compiled(x, lm), expected, rtol=1e-4, atol=1e-4)


def test_compiled_training_step_matches_eager_gradients():
    """The custom ops' autograd formulas work inside a compiled graph (aot_eager: the same graph, no codegen)."""
    lm = LevelMap.random(1, 6, 7, 2, generator=torch.Generator().manual_seed(4))
    x = adatriton.MultiResMap.from_dense(torch.randn(1, 5, 6, 7, dtype=torch.float64), lm)
    weight = torch.randn(3, 5, 3, 3, dtype=torch.float64, requires_grad=True)

    def loss(values, w):
        out = AF.conv2d(adatriton.MultiResMap(values, x.layout), w, None, 2, downsample=True, backend="torch")
        return (out.values**2).sum()

    values = x.values.clone().requires_grad_()
    expected = torch.autograd.grad(loss(values, weight), (values, weight))
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(values, weight), (values, weight))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_cuda_graphs_with_a_static_level_map():
    net, x, lm = _tiny_net("triton")
    net, x, lm = net.cuda().half(), x.cuda().half(), lm.to("cuda")
    with torch.no_grad():
        expected = net(x, lm)
        compiled = torch.compile(net, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):  # warm-up, record, replay
            got = compiled(x, lm)
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
