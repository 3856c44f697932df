"""D2-Net / VGG-16 trunk: dense strides, adaptive "1->8" equivalences (docs/semantics.md §3, §4), MAs (§5),
descriptors, checkpoints.

Most tests use a width-reduced VGG-16 (same layer structure, 4..10 channels) in float64; one group runs the real
VGG-16 trunk (torchvision's ``make_layers``) at a small size.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from adatriton import LevelMap, LevelMapError, count_macs, masks
from adatriton.eval import match_mutual_nn
from adatriton.models import d2net, load_d2net_state_dict
from adatriton.models.d2net import D2Net, D2NetCheckpointError, D2NetInputError
from tests.reference.simulation import DenseSim

SMALL = (4, 4, "M", 6, 6, "M", 8, 8, 8, "M", 10, 10, 10)
SIZES = [(24, 40), (27, 37)]  # a multiple of 8 and an odd size (docs/semantics.md §4)
INF = math.inf


def small_net(output_stride="1->8", dtype=torch.float64, use_relu=True, batch_norm=False):
    feats = d2net.vgg_features(SMALL, batch_norm=batch_norm)
    for m in feats.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial eval statistics
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return D2Net(feats, output_stride, use_relu=use_relu).to(dtype).eval()


def upsample(x, stride, h, w):
    """Nearest upsampling of an OS ``stride`` map to the image grid (what densify does), cropped."""
    return x.repeat_interleave(stride, 2).repeat_interleave(stride, 3)[:, :, :h, :w]


def simulate(net: D2Net, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Dense simulation of the adaptive VGG trunk (docs/semantics.md §3 with the max variant), densified conv4_3 output.

    Every conv runs densely at the image grid on the densified map with dilation = tap spacing and is sampled at
    the element centres; each pool is a max-merge of the blocks with ``L > stage``.
    """
    sim, dense, stage = DenseSim(levels, 3), x, 0
    for m in net.features:
        if isinstance(m, torch.nn.Conv2d):
            dense = sim.conv(dense, m.weight, m.bias, 1 << stage, stage, groups=m.groups)
        elif isinstance(m, torch.nn.MaxPool2d):
            dense = sim.downsample(dense, stage, "max")
            stage += 1
        elif isinstance(m, torch.nn.ReLU):
            dense = F.relu(dense)
        else:
            dense = m(dense)  # BatchNorm (eval)
    return F.relu(dense) if net.use_relu else dense


def dense_reference(net: D2Net, x: torch.Tensor, stride: int) -> torch.Tensor:
    """The dense trunk at output stride ``stride`` from the rule: the first ``log2(stride)`` pools run (ceil mode),
    the later ones are removed and every conv after a removed pool is dilated by 2 per removed pool."""
    kept, pools = stride.bit_length() - 1, 0
    for m in net.features:
        if isinstance(m, torch.nn.Conv2d):
            d = 1 << max(0, pools - kept)
            x = F.conv2d(x, m.weight, m.bias, padding=d * (m.kernel_size[0] // 2), dilation=d, groups=m.groups)
        elif isinstance(m, torch.nn.MaxPool2d):
            x = F.max_pool2d(x, 2, 2, ceil_mode=True) if pools < kept else x
            pools += 1
        else:
            x = m(x)  # ReLU, BatchNorm (eval)
    return F.relu(x) if net.use_relu else x


def random_keypoints(n, h, w, m, seed=0):
    rng = np.random.default_rng(seed)
    return [np.stack([rng.uniform(0, w - 1, m), rng.uniform(0, h - 1, m)], 1) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- structure
def test_trunk_is_d2net_cut_of_vgg16():
    net = D2Net(make_layers(cfgs["D"]), "8")
    assert len(net.features) == 22  # conv1_1 .. conv4_3, module indices as in D2-Net's checkpoints
    rows = count_macs(net, torch.empty(1, 3, 64, 64, device="meta")).rows
    assert rows["layer"].tolist() == [f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)]
    assert net.num_channels == 512 and net.in_channels == 3


def test_shares_parameters_across_strides():
    net = small_net()
    other = net.with_output_stride("4")
    assert all(a is b for a, b in zip(net.parameters(), other.parameters()))
    assert list(net.state_dict()) == list(other.state_dict())


@pytest.mark.parametrize("output_stride", ["1->8", "4"])
def test_forward_sees_a_module_or_use_relu_changed_after_the_first_call(output_stride):
    """The kept graph conversion (``D2Net.graph``) follows ``net.features[i] = ...`` and ``net.use_relu = ...``."""
    h, w = 24, 40
    net = small_net(output_stride, use_relu=False)
    x = torch.randn(1, 3, h, w, dtype=torch.float64)
    levels = LevelMap.random(1, h, w, "1->8", generator=torch.Generator().manual_seed(3)) if net.adaptive else None
    net.features_map(x, levels)
    conv = copy.deepcopy(net.features[19])  # conv4_2
    conv.weight.data.mul_(-1.0)
    net.features[19] = conv
    net.use_relu = True
    stride = 1 if net.adaptive else int(output_stride)
    expected = simulate(net, x, levels.levels) if net.adaptive else dense_reference(net, x, stride)
    got = net.features_map(x, levels)
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()


# ---------------------------------------------------------------------------------------------------- equivalences
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_uniform_level_equals_dense_stride(size, level):
    h, w = size
    net = small_net()
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    got = net.features_map(x, LevelMap.uniform(2, h, w, level, "1->8"))
    dense = net.with_output_stride(str(1 << level)).features_map(x)
    assert dense.shape[2:] == (-(-h // (1 << level)), -(-w // (1 << level)))
    torch.testing.assert_close(got, upsample(dense, 1 << level, h, w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", SIZES)
def test_keypoint_map_extremes_equal_os1_and_os8(size):
    h, w = size
    net = small_net()
    images = torch.rand(2, 3, h, w, dtype=torch.float64)
    kps = random_keypoints(2, h, w, 5)
    all_fine = masks.keypoints(images, (INF, INF, INF), keypoints_xy=kps)
    all_coarse = masks.keypoints(images, (0, 0, 0), keypoints_xy=kps)
    assert bool((all_fine.levels == 0).all()) and bool((all_coarse.levels == 3).all())
    os1 = net.with_output_stride("1").features_map(images)
    os8 = net.with_output_stride("8").features_map(images)
    torch.testing.assert_close(net.features_map(images, all_fine), os1, rtol=0, atol=1e-12)
    torch.testing.assert_close(net.features_map(images, all_coarse), upsample(os8, 8, h, w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", SIZES)
def test_mixed_keypoint_map_equals_dense_simulation(size):
    h, w = size
    net = small_net(use_relu=False)
    images = torch.rand(2, 3, h, w, dtype=torch.float64)
    lm = masks.keypoints(images, (3, 7, 11), keypoints_xy=random_keypoints(2, h, w, 2, seed=1))
    assert len(set(lm.levels.unique().tolist())) == 4, "the map must mix all four levels"
    got = net.features_map(images, lm)
    torch.testing.assert_close(got, simulate(net, images, lm.levels), rtol=0, atol=1e-12)


def test_random_map_with_batchnorm_equals_dense_simulation():
    h, w = 27, 37
    net = small_net(batch_norm=True)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    lm = LevelMap.random(2, h, w, "1->8", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(net.features_map(x, lm), simulate(net, x, lm.levels), rtol=0, atol=1e-12)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg", "vgg_bn"])
@pytest.mark.parametrize("size", SIZES)
def test_graph_path_equals_the_references_at_every_stride(size, batch_norm):
    """The trunk through the graph converter (D2Net.graph, what every forward runs): its pools are the adaptive steps
    (max variant). At every dense stride it equals the VGG trunk written from the rule (the pools past the stride
    removed, the convs after them dilated, ceil-mode pools), at "1->8" the dense simulation, odd sizes included,
    with the trunk's state_dict keys and parameters."""
    h, w = size
    net = small_net(batch_norm=batch_norm)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    lm = LevelMap.random(2, h, w, "1->8", generator=torch.Generator().manual_seed(4))
    example = torch.empty(1, 3, h, w)
    with torch.no_grad():
        for stride in d2net.DENSE_STRIDES:
            dense = net.with_output_stride(stride)
            graph = net.graph(stride, example)
            expected = dense_reference(net, x, int(stride))
            assert (graph(x) - expected).abs().max() <= 1e-12 * expected.abs().max(), stride
            assert torch.equal(dense.features_map(x), graph(x))
        graph = net.graph(example_input=example)
        assert type(graph).__name__ == "AdaptiveGraphModule" and graph.output_stride == "1->8"
        # conv1_x run before the first step, densely at OS1 (on a stage-0 map they would compute the same pixels)
        assert len(graph.adaptive_convs()) == 8 and list(graph.state_dict()) == list(net.state_dict())
        assert all(a is b for a, b in zip(graph.parameters(), net.parameters(), strict=True))
        expected = simulate(net, x, lm.levels)
        assert (graph(x, lm) - expected).abs().max() <= 1e-12 * expected.abs().max()
    # one multiply-add counter: the graph's count is the trunk's
    assert count_macs(graph, x, lm).total == count_macs(net, x, lm).total
    assert not any(m.ceil_mode for m in net.features if isinstance(m, nn.MaxPool2d))  # the trunk is left as it was


@pytest.mark.parametrize("backend", ["dense", "triton"])
def test_backends_agree(backend):
    h, w = 21, 30
    net = small_net(dtype=torch.float32)
    x = torch.randn(1, 3, h, w)
    lm = LevelMap.random(1, h, w, "1->8", generator=torch.Generator().manual_seed(5))
    ref = net.features_map(x, lm)
    other = D2Net(net.features, "1->8", backend=backend)
    torch.testing.assert_close(other.features_map(x, lm), ref, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def vgg16_features():
    """The full-width VGG-16 ``features`` (torchvision's own builder), random weights."""
    torch.manual_seed(0)
    return make_layers(cfgs["D"]).eval()


def test_real_vgg16_os8_is_torchvision_trunk(vgg16_features):
    x = torch.randn(1, 3, 32, 48)
    with torch.inference_mode():
        ref = F.relu(vgg16_features[:22](x))
        got = D2Net(vgg16_features, "8").features_map(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_real_vgg16_adaptive_keypoint_map_equals_simulation(vgg16_features):
    h, w = 19, 26
    net = D2Net(copy.deepcopy(vgg16_features), "1->8").double()
    images = torch.rand(1, 3, h, w, dtype=torch.float64)
    lm = masks.keypoints(images, (1, 3, 5), keypoints_xy=[np.array([[3.0, 4.0], [20.0, 15.0]])])
    assert len(set(lm.levels.unique().tolist())) == 4
    with torch.inference_mode():
        got = net.features_map(images, lm)
        ref = simulate(net, images, lm.levels)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------- MAs
def vgg_conv_macs(config, h, w, stride):
    """MAs of a VGG trunk by hand: per conv, output pixels x 9 x Cin x Cout (docs/semantics.md §5)."""
    total, cin, pools = 0, 3, 0
    for v in config:
        if v == "M":
            pools += 1
            continue
        r = 1 << min(pools, int(math.log2(stride)))
        total += (-(-h // r)) * (-(-w // r)) * 9 * cin * v
        cin = v
    return total


def d2net_count(net: D2Net, h: int, w: int, levels=None, batch: int = 1):
    """``count_macs`` of the trunk on a ``batch x 3 x h x w`` image batch (on meta: nothing is computed)."""
    return count_macs(net, torch.empty(batch, 3, h, w, device="meta"), levels)


def pools_before(net: D2Net, layer: str) -> int:
    """Max-pools before the module ``features.<i>``: the adaptive stage a conv runs at."""
    index = int(layer.removeprefix("features."))
    return sum(isinstance(m, nn.MaxPool2d) for m in net.features[:index])


def test_macs_vgg16_224():
    net = D2Net(make_layers(cfgs["D"]), "8")
    count = d2net_count(net, 224, 224)
    # conv1_x 1.936e9 + conv2_x 2.775e9 + conv3_x 4.624e9 + conv4_x 4.624e9; with conv5_x (1.387e9) this is the
    # well-known 15.35 GMAs of VGG-16's features at 224x224.
    assert count.total == vgg_conv_macs(d2net.VGG16_CONFIG, 224, 224, 8) == 13_959_364_608
    assert count.rows["layer"].iloc[-1] == "features.21" and count.rows["elements"].iloc[-1] == 28 * 28


@pytest.mark.parametrize("size", SIZES)
def test_macs_uniform_levels_equal_dense(size):
    h, w = size
    net = small_net()
    for v in range(4):
        dense = d2net_count(net.with_output_stride(str(1 << v)), h, w, batch=2)
        adaptive = d2net_count(net, h, w, LevelMap.uniform(2, h, w, v, "1->8"), batch=2)
        assert dense.total == adaptive.total == 2 * vgg_conv_macs(SMALL, h, w, 1 << v)
        assert dense.rows["elements"].tolist() == adaptive.rows["elements"].tolist()


def test_macs_mixed_map_counts_elements():
    h, w = 27, 37
    net = small_net()
    lm = LevelMap.random(2, h, w, "1->8", generator=torch.Generator().manual_seed(7))
    count = d2net_count(net, h, w, lm, batch=2)
    lv = lm.levels
    for row in count.rows.itertuples():
        j = pools_before(net, row.layer)
        # Independent element count: per level u <= j, aligned 2^u blocks whose top-left pixel is at level u now.
        expected = sum(int((lv[:, :: 1 << u, :: 1 << u].clamp(max=j) == u).sum()) for u in range(j + 1))
        assert row.elements == expected
        assert row.MAs == expected * 9 * row.cin * row.cout
        assert row.spacing == 1 << j
    assert count.total == int(count.rows["MAs"].sum())


def test_macs_grow_along_the_paper_sweep():
    h, w = 64, 80
    net = small_net()
    images = torch.rand(1, 3, h, w)
    kps = random_keypoints(1, h, w, 6, seed=2)
    totals = [d2net_count(net, h, w, masks.keypoints(images, d, keypoints_xy=kps)).total
              for d in masks.PAPER_KEYPOINT_DILATIONS]  # fmt: skip
    assert totals == sorted(totals)
    assert totals[0] == vgg_conv_macs(SMALL, h, w, 8) and totals[-1] == vgg_conv_macs(SMALL, h, w, 1)


def test_macs_errors():
    net = small_net()
    with pytest.raises(ValueError, match="needs a level map"):
        d2net_count(net, 8, 8)
    with pytest.raises(LevelMapError, match="K=2 levels but output_stride '1->8' needs K=3"):
        d2net_count(net, 8, 8, LevelMap.uniform(1, 8, 8, 0, "8->32"))
    with pytest.raises(LevelMapError, match="shape"):
        d2net_count(net, 8, 16, LevelMap.uniform(1, 8, 8, 0, "1->8"))


# ---------------------------------------------------------------------------------------------------- descriptors
def test_forward_is_unit_norm_and_describe_samples_it():
    h, w = 27, 37
    net = small_net()
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    lm = LevelMap.random(2, h, w, "1->8", generator=torch.Generator().manual_seed(1))
    desc = net(x, lm)
    assert desc.shape == (2, 10, h, w)
    norms = desc.norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.ones(()).double())
    kps = random_keypoints(2, h, w, 7, seed=4)
    got = net.describe(x, kps, lm)
    for b in range(2):
        px, py = np.rint(kps[b][:, 0]).astype(int), np.rint(kps[b][:, 1]).astype(int)
        torch.testing.assert_close(got[b], desc[b, :, py, px].t(), rtol=0, atol=1e-12)


def test_describe_level3_equals_os8():
    h, w = 27, 37
    net = small_net()
    x = torch.randn(1, 3, h, w, dtype=torch.float64)
    kps = random_keypoints(1, h, w, 9, seed=5)
    got = net.describe(x, kps, LevelMap.uniform(1, h, w, 3, "1->8"))[0]
    ref = net.with_output_stride("8").describe(x, kps)[0]
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert torch.allclose(ref.norm(dim=1), torch.ones(()).double())


def test_match_mutual_nn():
    d1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    d2 = torch.tensor([[0.0, 1.0], [1.0, 0.1], [0.9, 0.0]])
    # 0 -> d2[1] (1.0) and d2[1] -> d1[0]; 1 -> d2[0] and back; 2 -> d2[1] but d2[1] prefers 0: no match.
    assert match_mutual_nn(d1, d2).tolist() == [[0, 1], [1, 0]]
    assert match_mutual_nn(d1[:0], d2).shape == (0, 2)
    with pytest.raises(D2NetInputError, match="dimension"):
        match_mutual_nn(d1, torch.zeros(2, 3))


def test_preprocess():
    img = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    img[:, 0] = 255  # red
    caffe = d2net.preprocess(img, "caffe")
    assert caffe[0, :, 0, 0].tolist() == pytest.approx([-103.939, -116.779, 255 - 123.68], abs=1e-4)  # BGR
    torch_ = d2net.preprocess(img.float() / 255, "torch")
    assert torch_[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    with pytest.raises(D2NetInputError, match="mode"):
        d2net.preprocess(img, "bgr")


# ---------------------------------------------------------------------------------------------------- errors
def test_input_errors():
    net = small_net()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(D2NetInputError, match="needs a level map"):
        net(x)
    with pytest.raises(LevelMapError, match="K=2 levels but the '1->8' trunk needs K=3"):
        net(x, LevelMap.uniform(1, 16, 16, 0, "8->32"))
    with pytest.raises(LevelMapError, match="shape"):
        net(x, LevelMap.uniform(1, 16, 8, 0, "1->8"))
    with pytest.raises(LevelMapError):
        net(x, torch.full((1, 16, 16), 4))  # level outside 0..3
    with pytest.raises(D2NetInputError, match="floating point"):
        net(x.long(), LevelMap.uniform(1, 16, 16, 0, "1->8"))
    with pytest.raises(D2NetInputError, match="float32"):
        net(x.float(), LevelMap.uniform(1, 16, 16, 0, "1->8"))
    with pytest.raises(D2NetInputError, match="3 channels"):
        net(torch.randn(1, 4, 16, 16, dtype=torch.float64), LevelMap.uniform(1, 16, 16, 0, "1->8"))
    with pytest.raises(D2NetInputError, match="takes no level map"):
        net.with_output_stride("2")(x, LevelMap.uniform(1, 16, 16, 0, "1->8"))
    with pytest.raises(D2NetInputError, match="outside"):
        net.describe(x, [np.array([[16.0, 2.0]])], LevelMap.uniform(1, 16, 16, 0, "1->8"))
    with pytest.raises(D2NetInputError, match="output_stride"):
        D2Net(net.features, "16")


def test_trunk_errors():
    with pytest.raises(D2NetInputError, match="max-pools"):
        D2Net(d2net.vgg_features((4, "M", 4, "M", 4)))
    bad = d2net.vgg_features(SMALL)
    bad[0] = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    with pytest.raises(D2NetInputError, match="module 0"):
        D2Net(bad)
    with pytest.raises(D2NetInputError, match="Dropout"):
        D2Net(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Dropout()))


# ---------------------------------------------------------------------------------------------------- checkpoints
def d2net_checkpoint(trunk: nn.Sequential, prefix="") -> dict:
    """A state dict in the authors' d2_tf.pth layout: {"model": {"dense_feature_extraction.model.<i>.<p>": ...}}."""
    return {"model": {f"{prefix}dense_feature_extraction.model.{k}": v.clone() for k, v in trunk.state_dict().items()}}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_d2net_checkpoint(prefix, tmp_path):
    source, target = small_net(), small_net()
    ckpt = d2net_checkpoint(source.features, prefix)
    assert "dense_feature_extraction.model.21.weight" in {k[len(prefix) :] for k in ckpt["model"]}
    result = load_d2net_state_dict(target, ckpt)
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = torch.randn(1, 3, 16, 24, dtype=torch.float64)
    torch.testing.assert_close(target.with_output_stride("4")(x), source.with_output_stride("4")(x))
    # from a file, as torch.save wrote it
    path = tmp_path / "d2.pth"
    torch.save(d2net_checkpoint(small_net().features), path)
    load_d2net_state_dict(target, path)
    loaded = torch.load(path, weights_only=True)["model"]["dense_feature_extraction.model.21.weight"]
    torch.testing.assert_close(target.features[21].weight, loaded)


def test_load_d2net_checkpoint_errors():
    net = small_net()
    ckpt = d2net_checkpoint(net.features)["model"]
    missing = {k: v for k, v in ckpt.items() if not k.endswith("21.bias")}
    with pytest.raises(D2NetCheckpointError, match=r"missing: features\.21\.bias"):
        load_d2net_state_dict(net, missing)
    assert load_d2net_state_dict(net, missing, strict=False).missing_keys == ["features.21.bias"]
    extra = dict(ckpt, **{"dense_feature_extraction.model.24.weight": torch.zeros(1)})
    with pytest.raises(D2NetCheckpointError, match=r"unexpected: dense_feature_extraction\.model\.24\.weight"):
        load_d2net_state_dict(net, extra)
    shaped = dict(ckpt, **{"dense_feature_extraction.model.0.weight": torch.zeros(4, 3, 5, 5)})
    with pytest.raises(D2NetCheckpointError, match=r"mis-shaped: .*model\.0\.weight.*\(4, 3, 5, 5\)"):
        load_d2net_state_dict(net, shaped, strict=False)
    assert issubclass(D2NetCheckpointError, ValueError)
