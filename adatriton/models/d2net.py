"""D2-Net case study: a VGG-16 trunk as a dense descriptor network and as an adaptive ``"1->8"`` network.

D2-Net (Dusmanu et al., CVPR 2019) describes an image with the L2-normalised ``conv4_3`` features of VGG-16
(``features[:22]``: conv1_1 .. conv4_3, three 2x2 max-pools, then a ReLU). Hesse et al. run that trunk with
content-adaptive downsampling: the finest grid is the image itself (output stride 1), the three max-pools become
the adaptive downsampling steps 1, 2, 3 of docs/semantics.md §3 in their **max variant**, and a keypoint level map
(docs/semantics.md §6, :func:`adatriton.masks.keypoints`) keeps the resolution high near keypoints only.

:class:`D2Net` runs one trunk (shared weights) at any of these output strides:

- ``"1"``, ``"2"``, ``"4"``, ``"8"`` (dense): the first ``log2(s)`` max-pools run, the others are removed and
  the convs after a removed pool are dilated (the dilation doubles per removed pool), as torchvision's
  ``replace_stride_with_dilation`` does for ResNets. ``"8"`` is the plain VGG-16 trunk.
- ``"1->8"`` (adaptive, ``K = 3``): ``forward(x, levels)`` with a level map ``(N, H, W)`` on the image grid. Every
  conv runs with tap spacing = its dilation in the dense OS1 trunk (1 for conv1_x, 2 for conv2_x, 4 for conv3_x,
  8 for conv4_x); pool ``j`` is adaptive downsampling step ``j`` (max variant). So ``L == v`` everywhere gives
  exactly the dense OS ``2^v`` trunk (densified), and a mixed map the dense simulation of docs/semantics.md §3.

Every forward runs the trunk's conversion by the graph path (:meth:`D2Net.graph`, docs/semantics.md §8): conv1_x,
before the first step, run densely on the image grid (a stage-0 map computes the same pixels), each conv-BN-ReLU is
one fused call, and :meth:`D2Net.features_multires` keeps the conv4_3 map undensified (``map_outputs=True``).

**Odd sizes.** docs/semantics.md §4 keeps every block that holds a real pixel, and the max variant takes the maximum
over the sub-elements that hold real pixels: that is 2x2 max-pooling with ``ceil_mode=True``. torchvision's VGG pools
with ``ceil_mode=False`` (floor), which drops the last row/column at odd sizes, and no level map can reproduce that (the
dropped pixels would have to belong to no element). The dense strides here therefore pool with ``ceil_mode=True``: for
sizes that are multiples of the output stride this is exactly torchvision's trunk (tested), and at any size ``L == v``
equals the dense OS ``2^v`` trunk. Output grids are ``ceil(H / s) x ceil(W / s)``.

**Descriptors at keypoints.** The descriptor of a keypoint ``(x, y)`` (image pixels) is the output vector of the
element (adaptive) or output cell (dense OS ``s``) that contains the pixel ``(round(x), round(y))``, then
L2-normalised: nearest sampling on the densified map, so that ``L == v`` and OS ``2^v`` give the same descriptors.
(D2-Net interpolates bilinearly on its OS4 map; on a multi-resolution map bilinear interpolation has no single
definition, so nearest sampling is used for every stride.)

**The authors' D2-Net weights.** Their ``d2_tf.pth`` / ``d2_ots.pth`` hold ``{"model": state_dict}`` with keys
``dense_feature_extraction.model.<i>.weight|bias``, ``<i>`` the index in VGG-16's ``features`` (0, 2, 5, 7, 10, 12, 14,
17, 19, 21); :func:`adatriton.models.checkpoints.load_d2net_state_dict` maps them onto this trunk. Their test-time
network replaces pool3 by a 2x2 average pool at stride 1 and dilates conv4_x by 2 (an OS4 network); this module's OS4
trunk removes pool3 instead (docs/semantics.md §3: a location below level 3 is not pooled at step 3), so its descriptors
differ slightly from theirs.

**Multiply-adds** (:func:`adatriton.count_macs`, docs/semantics.md §5): ``k * k * Cin * Cout`` per
computed output element (per group), for every conv; pools, ReLUs and the normalisation cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.levelmap import LevelMap
from ..core.multires import MultiResMap
from ..core.strides import parse_output_stride
from ..nn.modules import copied_with
from .graph import AdaptiveGraphModule
from .graph.module import kept_network

__all__ = [
    "ADAPTIVE_STRIDE",
    "CAFFE_MEAN_BGR",
    "D2Net",
    "D2NetCheckpointError",
    "D2NetInputError",
    "DENSE_STRIDES",
    "VGG16_CONFIG",
    "D2NET_PREFIX",
    "NUM_POOLS",
    "preprocess",
    "sample_descriptors",
    "vgg_features",
]

#: Dense output strides of the trunk; "8" is the plain VGG-16 trunk.
DENSE_STRIDES = ("1", "2", "4", "8")
#: The adaptive conversion (docs/semantics.md §1: K = 3, finest grid at output stride 1).
ADAPTIVE_STRIDE = "1->8"
#: Number of adaptive downsamplings of ``"1->8"``: the three max-pools before conv4_3.
NUM_POOLS = 3
#: VGG-16's ``features`` up to conv4_3 (torchvision ``cfgs["D"]`` truncated): widths, "M" = 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)
#: Per-channel means subtracted by D2-Net's "caffe" preprocessing, BGR order, 0..255 scale.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: ImageNet statistics of D2-Net's "torch" preprocessing (RGB, 0..1 scale).
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)
#: Prefix of the trunk's weights in the authors' checkpoints.
D2NET_PREFIX = "dense_feature_extraction.model."


class D2NetInputError(ValueError):
    """Bad input to the D2-Net trunk: images, level maps, keypoints, descriptors or a trunk of the wrong form."""


class D2NetCheckpointError(ValueError):
    """A D2-Net checkpoint does not fit the trunk: missing, unexpected or mis-shaped keys."""


# ---------------------------------------------------------------------------------------------------- the trunk
def vgg_features(
    config: Sequence[int | str] = VGG16_CONFIG, in_channels: int = 3, batch_norm: bool = False
) -> nn.Sequential:
    """A VGG ``features`` Sequential in torchvision's layout, randomly initialised as torchvision's VGG is.

    With the default config this is ``torchvision.models.vgg16().features[:22]`` (conv1_1 .. conv4_3, same module
    indices, so the same state_dict keys) without building the 120M-parameter classifier. Smaller widths give fast
    test trunks with the same structure.

    Args:
        config: channel widths, ``"M"`` for a 2x2 max-pool (torchvision's ``cfgs`` notation).
        in_channels: image channels.
        batch_norm: add a BatchNorm2d after every conv (torchvision's ``vgg16_bn`` layout).

    Returns:
        ``nn.Sequential`` of Conv2d(3x3, padding 1) [+ BatchNorm2d] + ReLU blocks and MaxPool2d(2, 2); the ReLU after
        the last conv is included (D2Net drops it and applies its own ``use_relu``).
    """
    layers: list[nn.Module] = []
    c = in_channels
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(c, int(v), kernel_size=3, padding=1)
        # torchvision's VGG init (kaiming fan_out, zero bias), so random trunks behave like vgg16(weights=None).
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        c = int(v)
    return nn.Sequential(*layers)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _check_module(i: int, m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        k = m.kernel_size
        ok = (
            k[0] == k[1]
            and k[0] % 2 == 1
            and m.stride == (1, 1)
            and m.dilation == (1, 1)
            and m.padding == (k[0] // 2, k[0] // 2)
            and m.padding_mode == "zeros"
        )
        if not ok:
            raise D2NetInputError(
                f"trunk module {i} must be an odd square conv with stride 1, dilation 1 and 'same' zero padding "
                f"(VGG), got {m}"
            )
        return "conv"
    if isinstance(m, nn.ReLU):
        return "relu"
    if isinstance(m, nn.BatchNorm2d):
        return "bn"
    if isinstance(m, nn.MaxPool2d):
        if _pair(m.kernel_size) != (2, 2) or _pair(m.stride) != (2, 2) or _pair(m.padding) != (0, 0):
            raise D2NetInputError(f"trunk module {i} must be a 2x2 max-pool with stride 2 (VGG), got {m}")
        if _pair(m.dilation) != (1, 1) or m.return_indices:
            raise D2NetInputError(f"trunk module {i} must be a plain 2x2 max-pool, got {m}")
        return "pool"
    raise D2NetInputError(
        f"trunk module {i} is a {type(m).__name__}; a VGG trunk holds only Conv2d, BatchNorm2d, ReLU and MaxPool2d"
    )


def vgg_trunk(features: nn.Module | None = None) -> nn.Sequential:
    """D2-Net's trunk of a VGG: the modules before the 4th max-pool, without a trailing ReLU.

    Args:
        features: a torchvision VGG (its ``features`` are used), a VGG ``features`` Sequential (full or already
            truncated), or None for a randomly initialised VGG-16 (:func:`vgg_features`).

    Returns:
        ``nn.Sequential`` sharing the given modules, indices unchanged (``conv4_3`` of VGG-16 is module 21).

    Raises:
        D2NetInputError: a module that is not a VGG layer, or not exactly three max-pools before the cut.
    """
    if features is None:
        features = vgg_features()
    if not isinstance(features, nn.Sequential) and isinstance(getattr(features, "features", None), nn.Sequential):
        features = features.features
    if not isinstance(features, nn.Module):
        raise TypeError(f"expected a torchvision VGG or its `features` Sequential, got {type(features).__name__}")
    if not isinstance(features, nn.Sequential):
        raise D2NetInputError(f"expected a torchvision VGG or its `features` Sequential, got {type(features).__name__}")
    modules, pools = [], 0
    for i, m in enumerate(features):
        kind = _check_module(i, m)
        if kind == "pool" and pools == NUM_POOLS:
            break  # pool4: D2-Net cuts VGG-16 at conv4_3
        pools += kind == "pool"
        modules.append(m)
    while modules and isinstance(modules[-1], nn.ReLU):
        modules.pop()  # D2-Net's conv4_3 output is raw; D2Net(use_relu=True) applies the ReLU
    if pools != NUM_POOLS:
        raise D2NetInputError(f"a D2-Net trunk needs {NUM_POOLS} max-pools before its last conv, found {pools}")
    if not modules or not isinstance(modules[-1], (nn.Conv2d, nn.BatchNorm2d)):
        raise D2NetInputError("the trunk must end with a conv (conv4_3) after the third max-pool")
    return nn.Sequential(*modules)


class _Trunk(nn.Module):
    """The trunk as the graph path converts it (:meth:`D2Net.graph`): ``features`` with ceil-mode pools (shallow
    copies; the Sequential's and every module's hooks are the trunk's own), then the optional ReLU."""

    def __init__(self, features: nn.Sequential, use_relu: bool):
        super().__init__()
        pools = [str(i) for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        self.features = copied_with(features, {i: {"ceil_mode": True} for i in pools})
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return F.relu(x) if self.use_relu else x


#: Output strides of the trunk for :func:`~adatriton.core.strides.parse_output_stride`: name -> (finest stride, K).
OUTPUT_STRIDES = {**{s: (int(s), 0) for s in DENSE_STRIDES}, ADAPTIVE_STRIDE: (1, NUM_POOLS)}


class D2Net(nn.Module):
    """D2-Net's dense descriptor network on a VGG trunk, dense at OS 1/2/4/8 or adaptive ``"1->8"``.

    Args:
        features: a torchvision VGG, its ``features``, or None for a randomly initialised VGG-16 trunk
            (:func:`vgg_features`); the modules (and parameters) are shared, not copied.
        output_stride: ``"1"``, ``"2"``, ``"4"``, ``"8"`` (dense) or ``"1->8"`` (adaptive, needs a level map).
        use_relu: apply a ReLU to the conv4_3 output (D2-Net's default).
        backend: conv backend of the adaptive trunk (``"torch"``, ``"dense"``, ``"triton"``, ``"auto"``); None
            resolves as :func:`adatriton.ops.conv2d` does.

    Input images are preprocessed tensors ``(N, 3, H, W)`` (see :func:`preprocess`). State_dict keys are
    ``features.<i>.weight|bias`` with torchvision's module indices.
    """

    def __init__(
        self,
        features: nn.Module | None = None,
        output_stride: str | int = ADAPTIVE_STRIDE,
        use_relu: bool = True,
        backend: str | None = None,
    ):
        super().__init__()
        self.features = vgg_trunk(features)
        self.output_stride = parse_output_stride(output_stride, OUTPUT_STRIDES, D2NetInputError)[0]
        self.use_relu = bool(use_relu)
        self.backend = backend

    # ------------------------------------------------------------------ properties
    @property
    def adaptive(self) -> bool:
        return self.output_stride == ADAPTIVE_STRIDE

    @property
    def stride(self) -> int:
        """Stride of the output grid: ``s`` for dense OS ``s``, 1 for ``"1->8"`` (densified on the image grid)."""
        return 1 if self.adaptive else int(self.output_stride)

    @property
    def first_conv(self) -> nn.Conv2d:
        """conv1_1 (its weight tells the trunk's dtype and device)."""
        return next(m for m in self.features if isinstance(m, nn.Conv2d))

    @property
    def in_channels(self) -> int:
        return self.first_conv.in_channels

    @property
    def num_channels(self) -> int:
        """Descriptor dimension (512 for VGG-16)."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)][-1].out_channels

    def with_output_stride(self, output_stride: str | int) -> D2Net:
        """Another D2Net on the same modules (shared weights) at another output stride."""
        return D2Net(self.features, output_stride, self.use_relu, self.backend)

    def extra_repr(self) -> str:
        return f"output_stride={self.output_stride!r}, use_relu={self.use_relu}, backend={self.backend!r}"

    def graph(
        self, output_stride: str | int | None = None, example_input: Tensor | None = None, map_outputs: bool = False
    ) -> AdaptiveGraphModule:
        """This trunk converted by the graph path (:func:`~adatriton.models.graph.convert_graph`), which computes every
        forward of this module: :meth:`features_map`'s features at every output stride, its pools the adaptive steps.

        The trunk it converts holds this module's convs (state_dict keys ``features.<i>.*``, parameters shared); its
        max-pools are shallow copies with ``ceil_mode=True`` (the rule of the module docstring's "Odd sizes"), and
        ``use_relu`` ends it with a ReLU. The graph path's max-pool step is the max variant of docs/semantics.md §3.
        Without ``example_input`` it is kept per ``(output_stride, backend, map_outputs, use_relu)``
        (:func:`~adatriton.models.graph.module.kept_network`: no state_dict keys; built again after a module of
        ``features`` is replaced).

        Args:
            output_stride: ``"1"`` .. ``"8"`` or ``"1->8"``; default this module's.
            example_input: an image batch of the shape to plan on (default ``(1, C, 512, 512)``).
            map_outputs: ``"1->8"``: return the conv4_3 features as a :class:`MultiResMap` (not densified).

        Returns:
            An :class:`~adatriton.models.graph.AdaptiveGraphModule`: ``net(x, levels)`` returns the features
            ``(N, C, H', W')`` (or their map).
        """
        stride = self.output_stride if output_stride is None else output_stride
        stride = parse_output_stride(stride, OUTPUT_STRIDES, D2NetInputError)[0]

        def build() -> AdaptiveGraphModule:
            trunk = _Trunk(self.features, self.use_relu)
            return AdaptiveGraphModule(trunk, stride, example_input, self.backend, map_outputs=map_outputs)

        if example_input is not None:
            return build()
        return kept_network(self, (stride, self.backend, map_outputs, self.use_relu), self.features, build)

    # ------------------------------------------------------------------ checks
    def _check_images(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise D2NetInputError(f"images must be a tensor (N, C, H, W), got {getattr(x, 'shape', type(x))}")
        if x.shape[1] != self.in_channels:
            raise D2NetInputError(f"images must have {self.in_channels} channels, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise D2NetInputError(f"images must be floating point (preprocess() them first), got {x.dtype}")
        w = self.first_conv.weight
        if x.dtype != w.dtype or x.device != w.device:
            raise D2NetInputError(
                f"images are {x.dtype} on {x.device} but the weights are {w.dtype} on {w.device}; "
                f"move the model (net.to(...)) or the images"
            )
        if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
            raise D2NetInputError(f"images must not be empty, got shape {tuple(x.shape)}")

    def levelmap(self, levels: LevelMap | Tensor | None, x: Tensor) -> LevelMap:
        """The validated ``"1->8"`` level map for images ``x`` (a LevelMap with K = 3 or an integer tensor, moved
        to the images' device)."""
        n, _, h, w = x.shape
        if isinstance(levels, Tensor):
            levels = levels.to(x.device)
        levels = LevelMap.checked(
            levels,
            NUM_POOLS,
            "the '1->8' trunk",
            call="each call (forward, features_map, describe)",
            grid="the image grid",
            missing=D2NetInputError,
        ).to(x.device)
        levels.check_matches(n, h, w, x.device, what="images")
        return levels

    # ------------------------------------------------------------------ forward
    def features_dense(self, x: Tensor) -> Tensor:
        """The dense trunk at this module's dense output stride: ``(N, C, ceil(H/s), ceil(W/s))`` features."""
        if self.adaptive:
            raise D2NetInputError("features_dense needs a dense output stride ('1', '2', '4' or '8')")
        self._check_images(x)
        return self.graph()(x)

    def features_multires(self, x: Tensor, levels: LevelMap | Tensor) -> MultiResMap:
        """The adaptive trunk: conv4_3 features as a :class:`MultiResMap` at stage 3 of ``levels``.

        Args:
            x: images ``(N, 3, H, W)``, preprocessed.
            levels: ``"1->8"`` level map ``(N, H, W)`` on the image grid (``LevelMap`` with K = 3, or an integer
                tensor), e.g. from :func:`adatriton.masks.keypoints`.
        """
        if not self.adaptive:
            raise D2NetInputError(f"features_multires needs output_stride '1->8', this net is {self.output_stride!r}")
        self._check_images(x)
        return self.graph(map_outputs=True)(x.contiguous(), self.levelmap(levels, x))

    def features_map(self, x: Tensor, levels: LevelMap | Tensor | None = None) -> Tensor:
        """conv4_3 features (after ``use_relu``) on the output grid: ``(N, C, ceil(H/s), ceil(W/s))``.

        The adaptive trunk returns its features densified on the image grid ``(N, C, H, W)``.
        """
        if self.adaptive:
            return self.features_multires(x, levels).densify()
        if levels is not None:
            raise D2NetInputError(f"a dense trunk (output stride {self.output_stride}) takes no level map")
        return self.features_dense(x)

    def forward(self, x: Tensor, levels: LevelMap | Tensor | None = None) -> Tensor:
        """Dense descriptor map: the L2-normalised conv4_3 features (D2-Net's descriptor head).

        Args:
            x: images ``(N, 3, H, W)``, preprocessed (:func:`preprocess`).
            levels: the level map for ``"1->8"``; None for the dense strides.

        Returns:
            ``(N, C, ceil(H/s), ceil(W/s))`` unit-norm descriptors (``(N, C, H, W)`` for ``"1->8"``); an all-zero
            feature vector stays zero.
        """
        if self.adaptive:
            y = self.features_multires(x, levels)
            return y.map(lambda v: F.normalize(v, dim=1)).densify()
        return F.normalize(self.features_map(x, levels), dim=1)

    def describe(self, x: Tensor, keypoints_xy: Sequence, levels: LevelMap | Tensor | None = None) -> list[Tensor]:
        """Unit-norm descriptors at keypoints.

        Args:
            x: images ``(N, 3, H, W)``, preprocessed.
            keypoints_xy: per image an ``(M, 2)`` array or tensor of ``(x, y)`` pixel positions.
            levels: the level map for ``"1->8"``; None for the dense strides.

        Returns:
            Per image an ``(M, C)`` tensor: the descriptor of the element / output cell holding the keypoint's
            rounded pixel.
        """
        if self.adaptive:
            y = self.features_multires(x, levels)
            return _sample_multires(y, keypoints_xy, x.shape[2], x.shape[3])
        return sample_descriptors(self.features_map(x, levels), keypoints_xy, self.stride, x.shape[2:])

    def build_tables(self, levels: LevelMap) -> LevelMap:
        """Build (and cache on ``levels``) every index table the adaptive trunk reads; returns ``levels``.

        The first forward on a level map builds these lazily; calling this first lets a caller time the
        bookkeeping apart from the network.
        """
        return self.graph().build_tables(levels)


# ---------------------------------------------------------------------------------------------------- keypoints
def _keypoint_pixels(keypoints_xy: Sequence, n: int, h: int, w: int, device) -> list[tuple[Tensor, Tensor]]:
    if isinstance(keypoints_xy, Tensor) and keypoints_xy.dim() == 3:
        keypoints_xy = list(keypoints_xy)
    if len(keypoints_xy) != n:
        raise D2NetInputError(f"keypoints_xy needs one (M, 2) array per image ({n}), got {len(keypoints_xy)}")
    out = []
    for i, pts in enumerate(keypoints_xy):
        p = torch.as_tensor(np.asarray(pts.detach().cpu() if isinstance(pts, Tensor) else pts, dtype=np.float64))
        if p.numel() == 0:
            p = p.reshape(0, 2)
        if p.dim() != 2 or p.shape[1] != 2:
            raise D2NetInputError(f"keypoints_xy[{i}] must have shape (M, 2) of (x, y), got {tuple(p.shape)}")
        px, py = torch.round(p[:, 0]).long(), torch.round(p[:, 1]).long()
        outside = (px < 0) | (px >= w) | (py < 0) | (py >= h) | ~torch.isfinite(p).all(1)
        if bool(outside.any()):
            j = int(outside.nonzero()[0])
            raise D2NetInputError(f"keypoints_xy[{i}][{j}] = {tuple(p[j].tolist())} lies outside the {h}x{w} image")
        out.append((py.to(device), px.to(device)))
    return out


def sample_descriptors(
    features: Tensor, keypoints_xy: Sequence, stride: int = 1, image_size: Sequence[int] | None = None
) -> list[Tensor]:
    """Unit-norm descriptors at keypoints from a dense feature map on a grid of stride ``stride``.

    Args:
        features: ``(N, C, h, w)`` feature map; cell ``(i, j)`` covers image pixels ``s*i .. s*i + s - 1``.
        keypoints_xy: per image an ``(M, 2)`` array of ``(x, y)`` image-pixel positions.
        stride: ``s``, the map's output stride.
        image_size: ``(H, W)`` of the images (default ``(h * s, w * s)``); keypoints must lie inside.

    Returns:
        Per image an ``(M, C)`` tensor: the L2-normalised vector of the cell holding ``(round(x), round(y))``.
    """
    if not isinstance(features, Tensor) or features.dim() != 4:
        raise D2NetInputError(f"features must be (N, C, h, w), got {getattr(features, 'shape', type(features))}")
    n, _, fh, fw = features.shape
    h, w = (fh * stride, fw * stride) if image_size is None else (int(image_size[0]), int(image_size[1]))
    if -(-h // stride) != fh or -(-w // stride) != fw:
        raise D2NetInputError(f"a {fh}x{fw} map at stride {stride} does not cover a {h}x{w} image")
    out = []
    for b, (py, px) in enumerate(_keypoint_pixels(keypoints_xy, n, h, w, features.device)):
        out.append(F.normalize(features[b, :, py // stride, px // stride].t(), dim=1))
    return out


def _sample_multires(y: MultiResMap, keypoints_xy: Sequence, h: int, w: int) -> list[Tensor]:
    """Descriptors of the elements holding the keypoints' pixels, read from the element table (no densify)."""
    ids = y.layout.id_map
    out = []
    for b, (py, px) in enumerate(_keypoint_pixels(keypoints_xy, y.levelmap.batch, h, w, y.device)):
        out.append(F.normalize(y.values[ids[b, py, px]], dim=1))
    return out


# ---------------------------------------------------------------------------------------------------- preprocessing
def preprocess(images, mode: str = "caffe", dtype: torch.dtype = torch.float32) -> Tensor:
    """D2-Net's image preprocessing.

    Args:
        images: ``(N, 3, H, W)`` RGB, uint8 in ``0..255`` or float in ``[0, 1]`` (tensor or numpy array).
        mode: ``"caffe"`` (the authors' ``d2_tf.pth`` weights: BGR order, 0..255, minus :data:`CAFFE_MEAN_BGR`),
            ``"torch"`` (0..1, ImageNet mean/std, RGB; torchvision's weights) or ``"none"`` (float 0..1 as given).
        dtype: result dtype.

    Returns:
        ``(N, 3, H, W)`` tensor of ``dtype``.
    """
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[1] != 3:
        raise D2NetInputError(f"images must be RGB (N, 3, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.to(dtype) / 255.0
    elif x.is_floating_point():
        x = x.to(dtype)
    else:
        raise D2NetInputError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    if mode == "caffe":
        mean = torch.tensor(CAFFE_MEAN_BGR, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        return x.flip(1) * 255.0 - mean
    if mode == "torch":
        mean = torch.tensor(TORCH_MEAN_RGB, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(TORCH_STD_RGB, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
    if mode == "none":
        return x
    raise D2NetInputError(f"preprocessing mode must be 'caffe', 'torch' or 'none', got {mode!r}")
