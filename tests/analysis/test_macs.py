"""Multiply-add counter (docs/semantics.md §5): the paper's Table 2 figures on meta tensors, torch's flop counter on
dense models, the element-count algebra of adaptive models, and adatriton.explain."""

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import adatriton
from adatriton import LevelMap, LevelMapError, count_macs, masks
from adatriton.analysis.macs import COLUMNS, stage_element_counts

META_1024 = torch.empty(1, 3, 1024, 2048, device="meta")


@pytest.fixture(scope="module")
def resnet101():
    return torchvision.models.resnet101()


@pytest.fixture(scope="module")
def resnet50():
    return torchvision.models.resnet50().eval()


def _flops_over_2(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2  # the flop counter counts a multiply-add as two FLOPs


@pytest.mark.parametrize(("stride", "reference"), [("32", 3.26e11), ("16", 4.15e11), ("8", 1.42e12)])
def test_table2_backbone_figures_on_meta(resnet101, stride, reference):
    count = count_macs(adatriton.convert(resnet101, stride), META_1024)
    assert count.backbone == pytest.approx(reference, rel=0.01)
    assert count.head == 2048 * 1000  # the classifier: one linear layer


def test_table2_figures_of_the_deeplabv3_backbone_on_meta():
    seg = adatriton.models.segmentation.deeplabv3("resnet101")
    os16 = count_macs(adatriton.convert(seg, "16"), META_1024)
    os8 = count_macs(adatriton.convert(seg, "8"), META_1024)
    # The paper's two-digit figures (Table 2: 4.2e11 and 1.4e12; its counter also counts the elementwise layers)
    # and torchvision's exact layer counts.
    assert os16.backbone == pytest.approx(4.2e11, rel=0.02) and os8.backbone == pytest.approx(1.4e12, rel=0.02)
    assert os16.backbone == pytest.approx(4.15e11, rel=0.01) and os8.backbone == pytest.approx(1.42e12, rel=0.01)
    assert os8.total > os8.backbone  # the ASPP head counts in the whole model only
    assert set(os8.rows.loc[os8.rows["part"] == "head", "layer"].str.split(".").str[0]) == {"classifier"}


def test_8_to_32_count_is_a_function_of_the_level_map_on_meta(resnet101):
    net = adatriton.convert(resnet101, "8->32")
    dense8 = count_macs(adatriton.convert(resnet101, "8"), META_1024).backbone
    dense32 = count_macs(adatriton.convert(resnet101, "32"), META_1024).backbone
    previous = dense32
    for fraction in (0.0, 0.1, 0.3, 0.5, 1.0):
        lm = masks.synthetic(1, 1024, 2048, "8->32", fraction)
        count = count_macs(net, META_1024, lm)
        assert count.elements == tuple(sum(lm.element_counts(j)) for j in range(3))
        assert count.at(count.elements) == count.total
        assert previous <= count.backbone <= dense8  # more level-0 area, more MAs
        previous = count.backbone
    assert count_macs(net, META_1024, masks.synthetic(1, 1024, 2048, "8->32", 0.0)).backbone == dense32
    assert previous == dense8
    # The paper's 8->32 model with oracle masks (about 31% of the area at level 0) counts 6.7e11.
    assert count_macs(net, META_1024, masks.synthetic(1, 1024, 2048, "8->32", 0.31)).backbone == pytest.approx(
        6.7e11, rel=0.05
    )


def test_plain_resnet_matches_the_flop_counter(resnet50):
    x = torch.randn(1, 3, 64, 96)
    count = count_macs(resnet50, x)
    with torch.no_grad():
        assert count.total == _flops_over_2(lambda: resnet50(x))
    assert count.head == 2048 * 1000
    assert list(count.rows.columns) == list(COLUMNS)


@pytest.mark.parametrize("stride", ["8", "16", "32"])
def test_converted_dense_backbone_matches_the_flop_counter(resnet50, stride):
    net = adatriton.convert(resnet50, stride).eval()
    x = torch.randn(1, 3, 72, 88)  # not a multiple of 32: the output sizes round up
    with torch.no_grad():
        assert count_macs(net, x).backbone == _flops_over_2(lambda: net.forward_features(x))
        assert count_macs(net, x).total == _flops_over_2(lambda: net(x))


@pytest.mark.parametrize("builder", ["fcn", "deeplabv3", "deeplabv3plus"])
def test_segmentation_models_match_the_flop_counter(builder):
    model = getattr(adatriton.models.segmentation, builder)("resnet50", num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = _flops_over_2(lambda: model(x))
    assert count_macs(model, x).total == expected  # the plain model
    assert count_macs(adatriton.convert(model, "8"), x).total == expected  # converted: the same network
    assert model.training is False


def test_uniform_maps_equal_the_strided_networks(resnet50):
    x = torch.empty(2, 3, 256, 320, device="meta")
    dense = {s: count_macs(adatriton.convert(resnet50, s), x) for s in ("8", "16", "32")}
    net32, net16 = adatriton.convert(resnet50, "8->32"), adatriton.convert(resnet50, "8->16")
    for level, stride in ((0, "8"), (1, "16"), (2, "32")):
        count = count_macs(net32, x, LevelMap.uniform(2, 32, 40, level, "8->32"))
        assert count.total == dense[stride].total and count.backbone == dense[stride].backbone
    for level, stride in ((0, "8"), (1, "16")):
        assert count_macs(net16, x, LevelMap.uniform(2, 32, 40, level, "8->16")).total == dense[stride].total


def test_mixed_map_matches_the_hand_formula(resnet50):
    """ResNet-50 8->32 on an 8x8 finest grid: the top-left 4x4 block at level 0, the rest at level 2."""
    levels = torch.full((1, 8, 8), 2)
    levels[0, :4, :4] = 0
    lm = LevelMap(levels, "8->32")
    e0, e1, e2 = 64, 16 + 48 // 4, 16 + 48 // 16  # elements after 0, 1, 2 downsamplings
    assert stage_element_counts(lm) == [e0, e1, e2] == [sum(lm.element_counts(j)) for j in range(3)]

    def adaptive(e0, e1, e2):  # layer3 (6 blocks, width 256) and layer4 (3 blocks, width 512) of ResNet-50
        layer3 = e0 * 512 * 256 + e1 * (9 * 256 * 256 + 512 * 1024 + 256 * 1024)
        layer3 += 5 * e1 * (1024 * 256 + 9 * 256 * 256 + 256 * 1024)
        layer4 = e1 * 1024 * 512 + e2 * (9 * 512 * 512 + 1024 * 2048 + 512 * 2048)
        layer4 += 2 * e2 * (2048 * 512 + 9 * 512 * 512 + 512 * 2048)
        return layer3 + layer4

    x = torch.empty(1, 3, 64, 64, device="meta")
    net = adatriton.convert(resnet50, "8->32")
    dense8 = count_macs(adatriton.convert(resnet50, "8"), x).backbone
    fixed = dense8 - adaptive(64, 64, 64)  # stem, layer1, layer2
    count = count_macs(net, x, lm)
    assert count.backbone == fixed + adaptive(e0, e1, e2)
    assert count.per_element == (512 * 256, count.per_element[1], count.per_element[2])
    assert count.at((64, 64, 64)) == dense8 + count.head


def test_matches_explain(resnet50):
    net = adatriton.convert(resnet50, "8->32").eval()
    x = torch.randn(2, 3, 64, 96)
    lm = LevelMap.random(2, 8, 12, "8->32", generator=torch.Generator().manual_seed(1))
    rows = count_macs(net, x, lm).rows
    explained = adatriton.explain(net, x, lm)
    convs = rows[rows["op"] == "conv"]
    assert convs["MAs"].sum() == explained["MAs"].sum()
    # Per conv (the dense and adaptive bottlenecks call conv3 and the shortcut in different orders).
    assert sorted(zip(convs["layer"], convs["elements"])) == sorted(zip(explained["layer"], explained["elements"]))


@pytest.mark.parametrize("conversion", ["8->32", "16->32", "8->16"])
def test_softpool_and_deformable_resnets_match_explain(conversion):
    """The one counter counts a converted ResNet over its graph: a SoftPool merge makes conv2 compute
    every pre-step element, a deformable conv2 (and its offset conv) too, as the converted model does."""
    model = adatriton.make_deformable(torchvision.models.resnet50().eval(), ["layer3.0.conv2", "layer4.2.conv2"])
    net = adatriton.convert(model, conversion, downsampling="softpool").eval()
    x = torch.randn(1, 3, 64, 96)
    finest = int(conversion.split("->")[0])
    lm = LevelMap.random(1, 64 // finest, 96 // finest, conversion, generator=torch.Generator().manual_seed(2))
    rows = count_macs(net, x, lm).rows
    # explain lists a deformable conv where it runs densely (torchvision's deform_conv2d), not on the map (its rows
    # are the dispatcher's, and the deformable sampling is no dispatched conv)
    explained = adatriton.explain(net, x, lm)
    deformable = rows["layer"].isin(["layer3.0.conv2", "layer4.2.conv2"]) & rows["adaptive"]
    convs = rows[(rows["op"] == "conv") & ~deformable]
    assert convs["MAs"].sum() == explained["MAs"].sum()
    assert sorted(zip(convs["layer"], convs["elements"])) == sorted(zip(explained["layer"], explained["elements"]))
    # A deformable conv computes the elements its offset conv computes.
    by_layer = rows.set_index("layer")
    for name in ("layer3.0.conv2", "layer4.2.conv2"):
        assert by_layer.loc[name, "elements"] == by_layer.loc[f"{name}.offset", "elements"]
        assert (
            by_layer.loc[name, "MAs"]
            == 9 * by_layer.loc[name, "cin"] * by_layer.loc[name, "cout"] * by_layer.loc[name, "elements"]
        )


def test_level_map_as_integer_tensor_and_errors(resnet50):
    net = adatriton.convert(resnet50, "8->32")
    x = torch.empty(1, 3, 64, 64, device="meta")
    lm = masks.synthetic(1, 64, 64, "8->32", 0.5)
    assert count_macs(net, x, lm.levels).total == count_macs(net, x, lm).total
    with pytest.raises(ValueError, match=r"count_macs\(model, x, levels\) needs a level map"):
        count_macs(net, x)
    with pytest.raises(LevelMapError, match="shape"):
        count_macs(net, x, LevelMap.uniform(1, 4, 4, 0, "8->32"))
    with pytest.raises(LevelMapError, match="K="):
        count_macs(net, x, LevelMap.uniform(1, 8, 8, 0, "8->16"))
    with pytest.raises(LevelMapError, match="meta"):
        count_macs(net, x, torch.zeros(1, 8, 8, dtype=torch.long, device="meta"))
    with pytest.raises(TypeError, match="explain"):
        count_macs(resnet50, x, lm)


def test_leaves_the_model_alone(resnet50):
    model = torchvision.models.resnet50()  # train mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, META_1024)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())


def test_count_macs_covers_the_d2net_trunk():
    """The generic counter takes the D2-Net / VGG-16 trunk (over the graph its forwards run); conv1_x run densely on
    the image grid before the first step, the same pixels as stage 0."""
    net = adatriton.D2Net(output_stride="1->8")
    x = torch.empty(2, 3, 20, 28, device="meta")
    lm = LevelMap.random(2, 20, 28, 3, generator=torch.Generator().manual_seed(1))
    count = adatriton.count_macs(net, x, lm)
    assert count.total == count.at(count.elements)
    assert count.rows["adaptive"].tolist() == [False] * 2 + [True] * 8 and count.head == 0
    assert count.rows["elements"].iloc[0] == sum(lm.element_counts(0)) == 2 * 20 * 28
    for level, stride in ((0, "1"), (3, "8")):
        dense = adatriton.count_macs(net.with_output_stride(stride), x)
        assert adatriton.count_macs(net, x, LevelMap.uniform(2, 20, 28, level, 3)).total == dense.total
