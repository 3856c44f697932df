"""Never a silent no-op or a silent slow-down: ``convert`` warns (``ConversionWarning``), or raises under
``strict=True``, when a model gets no adaptive layer or its coarsest level costs more than the original, with the
counts and the conversion summary."""

import re
import warnings

import pytest
import torch
import torchvision

import adatriton
from adatriton.models import ConversionProblem, ConversionWarning, coarsest_level_macs

SIZE = 64


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(**kwargs).eval()


NO_OP = [
    pytest.param("swin_t", "8", "error", "changes no layer", id="swin_t-8"),
    pytest.param("googlenet", "8->32", "densify", "gets no adaptive layer", id="googlenet-densify"),
    pytest.param("convnext_tiny", "8->32", "densify", "gets no adaptive layer", id="convnext_tiny-densify"),
]


@pytest.mark.parametrize("name, stride, unsupported, what", NO_OP)
def test_a_conversion_that_does_nothing_warns_with_its_counts(name, stride, unsupported, what):
    model = _model(name)
    x = torch.rand(1, 3, SIZE, SIZE)
    with pytest.warns(ConversionWarning, match=what) as record:
        net = adatriton.convert(model, stride, example_input=x, unsupported=unsupported)
    message = str(record[0].message)
    assert "0 adaptive convs" in message
    assert net.conversion_summary() in message  # the summary is one call away and printed in the warning
    densified = sum(p.op == "densify" for p in net.plan)
    assert f"densified (run densely on the densified map): {densified}" in message
    unchanged = sum(p.op == "dense" for p in net.plan)
    assert f"left alone (dense, as in the original): {unchanged} nodes" in message
    if stride == "8":  # nothing changed: the original network, bitwise
        with torch.no_grad():
            assert torch.equal(net(x), model(x))


@pytest.mark.parametrize("name, stride, unsupported, what", NO_OP)
def test_strict_raises_instead(name, stride, unsupported, what):
    with pytest.raises(ConversionProblem, match=what):
        adatriton.convert(
            _model(name), stride, example_input=torch.zeros(1, 3, SIZE, SIZE), unsupported=unsupported, strict=True
        )


def test_a_coarsest_level_dearer_than_the_original_warns_with_the_multiply_adds():
    model = _model("shufflenet_v2_x1_0")
    x = torch.empty(1, 3, SIZE, SIZE, device="meta")
    with pytest.warns(ConversionWarning, match="costs more at its coarsest uniform level") as record:
        net = adatriton.convert(model, "8->32", example_input=x)
    coarsest = adatriton.count_macs(net, x, torch.full(net.finest_grid(x), 2)).total
    original = adatriton.count_macs(model, x).total
    assert coarsest == coarsest_level_macs(net) and coarsest > original
    pattern = r"level: ([\d.e+]+) multiply-adds .* against ([\d.e+]+) for the original network \(OS32\), [\d.]+x"
    numbers = re.search(pattern, str(record[0].message))
    assert numbers is not None, str(record[0].message)
    assert float(numbers[1]) == pytest.approx(coarsest, rel=1e-2)
    assert float(numbers[2]) == pytest.approx(original, rel=1e-2)
    assert net.conversion_summary() in str(record[0].message)
    with pytest.raises(ConversionProblem, match="costs more"):
        adatriton.convert(model, "8->32", example_input=x, strict=True)


@pytest.mark.parametrize("stride", ["8->32", "8->16", "16"])
def test_a_useful_conversion_gives_no_warning(stride):
    model = _model("mobilenet_v2")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConversionWarning)
        net = adatriton.convert(model, stride, example_input=torch.zeros(1, 3, SIZE, SIZE))
    if net.adaptive:
        assert len(net.adaptive_convs()) > 0
    if stride == "8->32":  # all on the map, nothing densified: convert skips the count, which would find it equal
        assert not any(p.op in ("densify", "dense-dilated", "dense-identity") for p in net.plan)
        x = torch.empty(1, 3, SIZE, SIZE, device="meta")
        assert coarsest_level_macs(net) == adatriton.count_macs(model, x).total


def test_the_warning_is_a_user_warning_and_strict_a_value_error():
    assert issubclass(ConversionWarning, UserWarning) and issubclass(ConversionProblem, ValueError)
    assert adatriton.ConversionWarning is ConversionWarning
    with pytest.raises(TypeError, match="strict must be True or False"):
        adatriton.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2)), "8", strict="yes")
