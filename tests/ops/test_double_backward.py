"""Double backward on the torch backend: ``adatriton::gather_conv_backward`` has an autograd formula (issue 15), so
gradient penalties and Hessian-vector products work through the adaptive convs."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from adatriton import LevelMap, MultiResMap
from adatriton import ops as AF


def _samples(groups: int):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(5, 2, generator=g, dtype=torch.float64)
    index = torch.randint(0, 6, (4, 9), generator=g)  # 5 = E reads zero
    weight = torch.randn(2, 2 // groups, 3, 3, generator=g, dtype=torch.float64)
    grad = torch.randn(4, 2, generator=g, dtype=torch.float64)
    return values, index, weight, grad


@pytest.mark.parametrize("groups, with_bias", [(1, True), (2, False)], ids=["bias", "groups-no-bias"])
def test_gather_conv_backward_op_passes_opcheck_and_gradcheck(groups, with_bias):
    values, index, weight, grad = _samples(groups)
    bias = torch.zeros(2, dtype=torch.float64) if with_bias else None
    args = (grad.requires_grad_(), values.requires_grad_(), weight.requires_grad_(), bias, index, groups)
    torch.library.opcheck(torch.ops.adatriton.gather_conv_backward.default, args)

    def op(gr, v, w):
        return torch.ops.adatriton.gather_conv_backward(gr, v, w, bias, index, groups)

    assert gradcheck(op, args[:3])


@pytest.mark.parametrize(
    "groups, with_bias, tap_spacing, downsample",
    [(1, True, 1, False), (2, False, 2, True), (1, False, 1, True)],
    ids=["bias", "groups-spacing2-downsample", "downsample"],
)
def test_conv2d_gradgradcheck_on_the_torch_backend(groups, with_bias, tap_spacing, downsample):
    lm = LevelMap.random(2, 3, 5, 2, generator=torch.Generator().manual_seed(1))  # odd grid, per-sample maps
    g = torch.Generator().manual_seed(2)
    x = MultiResMap.from_dense(torch.randn(2, 2, 3, 5, generator=g, dtype=torch.float64), lm)
    weight = torch.randn(2, 2 // groups, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    values = x.values.detach().requires_grad_()

    def conv(v, w, *b):
        y = AF.conv2d(
            MultiResMap(v, x.layout),
            w,
            *b,
            tap_spacing=tap_spacing,
            groups=groups,
            downsample=downsample,
            backend="torch",
        )
        return y.values

    inputs = (values, weight, *([bias] if with_bias else []))
    assert gradcheck(conv, inputs, fast_mode=True)
    # fast mode (random projections of the Jacobians): the op-level test above checks every entry
    assert gradgradcheck(conv, inputs, fast_mode=True)


def test_gradient_penalty_trains():
    """The use case: a loss on the input gradient's norm back-propagates into the weight."""
    lm = LevelMap.random(1, 4, 4, 2, generator=torch.Generator().manual_seed(3))
    x = MultiResMap.from_dense(torch.randn(1, 2, 4, 4, dtype=torch.float64), lm)
    values = x.values.detach().requires_grad_()
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    out = AF.conv2d(MultiResMap(values, x.layout), weight, backend="torch").values
    (g,) = torch.autograd.grad(out.square().sum(), values, create_graph=True)
    g.square().sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
