"""Deployment runtimes of an adaptive model beyond eager: ``torch.compile`` takes new level maps of one grid shape
without recompiling (the element counts are unbacked sizes the level map marks itself), a map built under
``inference_mode`` serves training too, and an AOTInductor package of the torch backend equals eager on the CPU."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

import adatriton
from adatriton import LevelMap


def _tiny_resnet(backend: str = "torch") -> torch.nn.Module:
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=8, num_classes=10).eval()
    return adatriton.convert(model, "8->32", backend=backend).eval()


def _maps(batch: int = 1, grid: tuple[int, int] = (8, 9)) -> list[LevelMap]:
    """Mixed maps of one grid shape with different element counts, one with level 2 empty, one all level 2."""
    maps = [LevelMap.random(batch, *grid, 2, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    maps.append(LevelMap.uniform(batch, *grid, 0, 2))
    maps.append(LevelMap.uniform(batch, *grid, 2, 2))
    return maps


def _graph_path_resnet() -> torch.nn.Module:
    """A BasicBlock ResNet: converted by the graph path, with standalone per-element BatchNorms."""
    torch.manual_seed(0)
    return adatriton.convert(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).eval(), "8->32").eval()


@pytest.mark.parametrize("model", ["torch", "dense", "graph"])
def test_compiled_model_takes_new_maps_without_recompiling(model):
    net = _graph_path_resnet() if model == "graph" else _tiny_resnet(model)
    x = torch.randn(1, 3, 64, 72)
    maps = _maps()
    assert len({tuple(map(tuple, (lm.element_counts(j) for j in range(3)))) for lm in maps}) == len(maps)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(net, backend=counting_backend, fullgraph=True)
    with torch.no_grad():
        net(x, maps[1])  # a map whose layouts eager has cached is no different to the compiled graph
        for lm in maps + maps[:2]:  # new maps, then maps seen before
            torch.testing.assert_close(compiled(x, lm), net(x, lm), rtol=1e-5, atol=1e-5)
    assert len(graphs) <= 2, f"{len(graphs)} graphs for {len(maps)} maps of one shape (at most 1 recompile)"


def test_compiled_fullgraph_with_new_maps_equals_eager():
    net = _tiny_resnet()
    x = torch.randn(1, 3, 64, 72)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break raises
    with torch.no_grad():
        for lm in _maps()[:3]:
            torch.testing.assert_close(compiled(x, lm), net(x, lm), rtol=1e-5, atol=1e-5)


def test_map_built_under_inference_mode_serves_training():
    net = _tiny_resnet()
    x = torch.randn(2, 3, 64, 72)
    with torch.inference_mode():
        lm = LevelMap.random(2, 8, 9, 2, generator=torch.Generator().manual_seed(5))
        net(x, lm)  # caches the map's layouts as inference tensors
        tables = lm.layout(2).tap_index(3, 4).clone()
        assert lm.layout(2).id_map.is_inference()
    net.train()
    out = net(x, lm)  # autograd saves index tables: they are built again outside inference_mode
    out.sum().backward()
    assert net.fc.weight.grad is not None and not lm.layout(2).id_map.is_inference()
    assert torch.equal(lm.layout(2).tap_index(3, 4), tables)


@pytest.mark.slow
def test_aoti_package_of_adaptive_model_equals_eager(tmp_path):
    """torch.export under no_grad, then AOTInductor (C++ codegen, gcc): one package serves every map of the shape."""
    net = _tiny_resnet()
    x = torch.randn(1, 3, 64, 72)
    maps = _maps()
    with torch.no_grad():
        ep = torch.export.export(net, (x, maps[0]))
        path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "net.pt2"))
        runner = torch._inductor.aoti_load_package(path)
        for lm in maps:
            torch.testing.assert_close(runner(x, lm), net(x, lm), rtol=1e-5, atol=1e-5)
