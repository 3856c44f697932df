"""Adaptive torchvision ResNets (docs/semantics.md §3, §7): the stem, ``layer1`` and the layers at or above the finest
output stride run densely; the remaining layers run on the multi-resolution map, downsampling adaptively where the
strided network downsamples.

Conversion swaps the model's ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.ReLU`` / ``nn.MaxPool2d`` children, in place,
for their drop-in subclasses (:mod:`adatriton.nn.modules`, same parameter and buffer objects, same behaviour on
tensors). The converted module holds the model's children under the same names, so state_dict keys and
parameters are shared, and it uses its own strides and dilations: the model's ``replace_stride_with_dilation``
does not matter (the weights are the same). The source is a ``ResNet`` or the ``IntermediateLayerGetter`` over one
that torchvision's segmentation models use as ``model.backbone`` (same child names ``conv1`` .. ``layer4``).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet

from .. import ops as AF
from ..core.levelmap import LevelMap
from ..core.multires import MultiResMap
from ..core.strides import OUTPUT_STRIDES, parse_output_stride
from ..nn.hooks import call_with_hooks, has_hooks
from ..nn.modules import AdaptiveConv2d, conv_at, swap_modules
from ..runtime.context import environment_snapshot
from ..runtime.host import module_attrs
from .attach import attached_levels
from .graph.rules import DOWNSAMPLING, SOFTPOOL_FROM_STRIDE

__all__ = [
    "LAYERS",
    "OUTPUT_STRIDES",
    "STEM",
    "AdaptiveResNet",
    "BlockPlan",
    "adaptive_bottleneck",
    "dense_bottleneck",
    "plan_resnet",
    "shortcut_parts",
]

STEM = ("conv1", "bn1", "relu", "maxpool")
LAYERS = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class BlockPlan:
    """How one bottleneck runs.

    Attributes:
        adaptive: runs on the multi-resolution map.
        stride: dense blocks: stride of conv2 and of the shortcut (1 or 2).
        dilation: dense blocks: conv2's dilation; adaptive blocks: conv2's tap spacing on the finest grid.
        downsample_step: adaptive blocks: this block performs the next adaptive downsampling step.
        pool: how this block's stride-2 subsampling (dense ``stride == 2`` or an adaptive ``downsample_step``)
            merges a 2x2 block: ``"top_left"`` (a strided conv) or ``"softpool"``.
    """

    adaptive: bool
    stride: int
    dilation: int
    downsample_step: bool
    pool: str = "top_left"


def plan_resnet(
    num_blocks: list[int], finest_stride: int, num_levels: int, downsampling: str = "top_left"
) -> list[list[BlockPlan]]:
    """Per-layer, per-block plan of a ResNet whose adaptive part starts at ``finest_stride`` with K levels.

    The tap spacings are the dilations of the dense network that runs at ``finest_stride`` everywhere, computed
    as torchvision's ``replace_stride_with_dilation`` does (block 0 keeps the previous dilation). With
    ``downsampling="softpool"`` the subsamplings from OS8 on (layer3, layer4; dense or adaptive) SoftPool.
    """
    if downsampling not in DOWNSAMPLING:
        raise ValueError(f"downsampling must be one of {DOWNSAMPLING}, got {downsampling!r}")
    plans, stride_so_far, dilation, steps_left = [], 4, 1, num_levels
    for li, blocks in enumerate(num_blocks):
        nominal = 1 if li == 0 else 2
        pool = downsampling if nominal == 2 and stride_so_far >= SOFTPOOL_FROM_STRIDE else "top_left"
        if stride_so_far * nominal <= finest_stride:  # still above the finest grid: the ordinary strided layer
            stride_so_far *= nominal
            plans.append([BlockPlan(False, nominal if b == 0 else 1, 1, False, pool) for b in range(blocks)])
            continue
        previous, dilation = dilation, dilation * nominal
        step = steps_left > 0
        steps_left -= int(step)
        plans.append(
            [
                BlockPlan(num_levels > 0, 1, previous if b == 0 else dilation, step and b == 0, pool)
                for b in range(blocks)
            ]
        )
    return plans


def shortcut_parts(block: Bottleneck) -> tuple[nn.Conv2d, nn.Module] | None:
    """The shortcut's ``(1x1 conv, norm)``, or None for an identity shortcut."""
    (ds,) = module_attrs(block, "downsample")
    if ds is None:
        return None
    conv, norm = module_attrs(ds, "0", "1") if isinstance(ds, nn.Sequential) and len(ds) == 2 else (None, None)
    if not isinstance(conv, nn.Conv2d):
        raise NotImplementedError(f"unsupported bottleneck shortcut {ds}; expected Sequential(conv1x1, norm)")
    return conv, norm


def _conv_at_hooked(conv: nn.Conv2d, x: Tensor, stride: int, dilation: int) -> Tensor:
    """:func:`~adatriton.nn.modules.conv_at` as a call of ``conv`` (its hooks run)."""
    return call_with_hooks(conv, lambda v: conv_at(conv, v, stride, dilation), x)


def dense_bottleneck(block: Bottleneck, x: Tensor, plan: BlockPlan) -> Tensor:
    """A torchvision bottleneck with the plan's stride, dilation and subsampling instead of its own (every module
    of the block called so that its hooks run, on tensors)."""
    stride, soft = plan.stride, plan.stride == 2 and plan.pool == "softpool"  # soft: conv2 at stride 1, SoftPool
    out = block.relu(block.bn1(block.conv1(x)))
    out = _conv_at_hooked(block.conv2, out, 1 if soft else stride, plan.dilation)
    out = block.relu(block.bn2(AF.softpool2d(out) if soft else out))
    out = block.bn3(block.conv3(out))
    shortcut = shortcut_parts(block)
    if shortcut is None:
        identity = x
    else:  # SoftPool first, as the subsampling a strided 1x1 conv performs comes first
        conv, norm = shortcut

        def run_shortcut(v: Tensor) -> Tensor:
            return norm(_conv_at_hooked(conv, AF.softpool2d(v), 1, 1) if soft else _conv_at_hooked(conv, v, stride, 1))

        identity = call_with_hooks(block.downsample, run_shortcut, x)
    return block.relu(out + identity)


def _conv_bn_relu(
    conv: AdaptiveConv2d,
    bn: nn.Module | None,
    relu: nn.Module | None,
    x: MultiResMap,
    backend: str | None,
    residual: MultiResMap | None = None,
    **geometry,
) -> MultiResMap:
    """``relu(bn(conv(x)) + residual)`` on a map (``relu`` / ``bn`` None: left out): one fused
    :meth:`~adatriton.nn.modules.AdaptiveConv2d.multires` call, or, where one of the modules has hooks, the three
    modules one after the other, each called with its hooks on its own input and output maps."""
    if not has_hooks(conv, bn, relu):
        return conv.multires(x, bn=bn, relu=relu is not None, residual=residual, backend=backend, **geometry)
    out = call_with_hooks(conv, lambda v: conv.multires(v, backend=backend, **geometry), x)
    if bn is not None:
        out = call_with_hooks(bn, lambda v: AF.batch_norm(v, bn), out)
    if residual is not None:
        out = out + residual
    return out if relu is None else call_with_hooks(relu, MultiResMap.relu, out)


# A bottleneck's convs and norms, in the order adaptive_bottleneck reads them.
_CONV_BN_NAMES = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


def adaptive_bottleneck(block: Bottleneck, x: MultiResMap, plan: BlockPlan, backend: str | None) -> MultiResMap:
    """A torchvision bottleneck on a multi-resolution map (docs/semantics.md §3: conv2 at the surviving elements,
    shortcut subsampled before its 1x1 conv), through its :class:`~adatriton.nn.modules.AdaptiveConv2d` modules with the
    plan's tap spacing and downsampling step. Each conv-BN(-add)-ReLU is one
    :meth:`~adatriton.nn.modules.AdaptiveConv2d.multires` call, a single launch on the triton backend in eval mode.

    With SoftPool (``plan.pool``) a downsampling conv2 runs at every pre-step element, then the step SoftPools
    its output before the BatchNorm; the shortcut SoftPools its input before the 1x1 conv.

    A module with hooks (or a global hook) makes its conv-BN(-add)-ReLU run unfused, so that the hooks see its
    own maps (:mod:`adatriton.nn.hooks`).
    """
    step, soft = plan.downsample_step, plan.downsample_step and plan.pool == "softpool"
    conv1, bn1, conv2, bn2, conv3, bn3, relu = module_attrs(block, *_CONV_BN_NAMES, "relu")
    out = _conv_bn_relu(conv1, bn1, relu, x, backend, downsample=False)
    if soft:
        spacing = plan.dilation
        run_conv2 = functools.partial(conv2.multires, tap_spacing=spacing, downsample=False, backend=backend)
        out = call_with_hooks(conv2, run_conv2, out)
        out = AF.downsample(out, "softpool")  # before the BatchNorm: the dense network SoftPools conv2's output
        out = call_with_hooks(relu, MultiResMap.relu, call_with_hooks(bn2, lambda v: AF.batch_norm(v, bn2), out))
    else:
        out = _conv_bn_relu(conv2, bn2, relu, out, backend, tap_spacing=plan.dilation, downsample=step)
    shortcut = shortcut_parts(block)
    if shortcut is None:
        if step:
            raise NotImplementedError("a downsampling bottleneck without a shortcut conv is not a torchvision ResNet")
        identity = x
    else:
        conv, norm = shortcut

        def run_shortcut(v: MultiResMap) -> MultiResMap:
            # SoftPool before the 1x1 conv; else the strided shortcut: subsample then 1x1, one pass
            v = AF.downsample(v, "softpool") if soft else v
            return _conv_bn_relu(conv, norm, None, v, backend, downsample=step and not soft)

        identity = call_with_hooks(block.downsample, run_shortcut, x)
    return _conv_bn_relu(conv3, bn3, relu, out, backend, residual=identity, downsample=False)


def _check_swapped(layers: dict[str, nn.Module], plans: list[list[BlockPlan]]) -> None:
    """Every conv of an adaptive block must be an :class:`AdaptiveConv2d` (a ``filter_fn`` may have kept one)."""
    for name, layer_plans in zip(LAYERS, plans):
        for index, (block, plan) in enumerate(zip(layers[name], layer_plans)):
            shortcut = shortcut_parts(block)
            convs = {"conv1": block.conv1, "conv2": block.conv2, "conv3": block.conv3}
            if shortcut is not None:
                convs["downsample.0"] = shortcut[0]
            for conv_name, conv in convs.items():
                if plan.adaptive and not isinstance(conv, AdaptiveConv2d):
                    raise TypeError(
                        f"{name}.{index}.{conv_name} is a {type(conv).__name__}, but it runs on multi-resolution "
                        "maps: filter_fn must not exclude the convs of the adaptive layers"
                    )


class AdaptiveResNet(nn.Module):
    """A torchvision ResNet converted to an adaptive (or re-strided dense) network.

    Use :func:`adatriton.convert` to build one. The children are the original model's modules (shared
    parameters, identical state_dict keys).

    Args:
        model: a torchvision :class:`~torchvision.models.ResNet` with bottleneck blocks (ResNet-50/101/152,
            ResNeXt, Wide ResNet), any ``replace_stride_with_dilation``; or the ``IntermediateLayerGetter`` over
            one that torchvision's segmentation models hold as ``model.backbone`` (its ``return_layers`` must be
            among ``layer1`` .. ``layer4``).
        output_stride: ``"8"``, ``"16"``, ``"32"`` (dense) or ``"8->16"``, ``"8->32"``, ``"16->32"`` (adaptive).
        backend: conv backend of the adaptive part (``"torch"``, ``"dense"``, ``"triton"``, ``"auto"``); None
            resolves per call.
        filter_fn: ``filter_fn(module, fqn) -> bool`` chooses which ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.ReLU``
            / ``nn.MaxPool2d`` children :func:`~adatriton.nn.modules.swap_modules` replaces (in place) by their drop-in
            classes; None swaps all. The convs of the adaptive layers must be swapped.
        downsampling: ``"top_left"`` (the strided network's subsampling, docs/semantics.md §3) or ``"softpool"`` (every
            subsampling from OS8 on, dense or adaptive, merges 2x2 blocks by SoftPool; see :func:`plan_resnet`).

    Attributes:
        return_layers: the ``IntermediateLayerGetter``'s ``{layer: output name}`` mapping, None for a ``ResNet``.
        source: the model converted (its children are this module's); the graph path converts it to the same
            network (:func:`adatriton.count_macs` counts through it).
    """

    def __init__(
        self,
        model: ResNet | IntermediateLayerGetter,
        output_stride: str | int,
        backend: str | None = None,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
        downsampling: str = "top_left",
    ):
        super().__init__()
        if not isinstance(model, (ResNet, IntermediateLayerGetter)):
            raise TypeError(
                f"expected a torchvision ResNet or an IntermediateLayerGetter over one, got {type(model).__name__}"
            )
        children = dict(model.named_children())
        missing = [name for name in STEM + LAYERS if name not in children]
        if missing:
            raise TypeError(f"{type(model).__name__} has no {missing}; expected the children of a torchvision ResNet")
        return_layers = None
        if isinstance(model, IntermediateLayerGetter):
            return_layers = {str(k): str(v) for k, v in model.return_layers.items()}
            unsupported = sorted(set(return_layers) - set(LAYERS))
            if unsupported:
                raise NotImplementedError(
                    f"IntermediateLayerGetter returns {unsupported}; only {list(LAYERS)} outputs are supported"
                )
        for name in LAYERS:
            for block in children[name]:
                if not isinstance(block, Bottleneck):
                    raise NotImplementedError(
                        f"{name} has {type(block).__name__} blocks; only bottleneck ResNets (50/101/152) are supported"
                    )
        self.output_stride, self.finest_stride, self.num_levels = parse_output_stride(output_stride)
        self.backend = backend
        self.return_layers = return_layers
        self.downsampling = downsampling
        vars(self)["source"] = model  # not a child: the same modules are this module's own (no state_dict keys)
        self.plans = plan_resnet([len(children[n]) for n in LAYERS], self.finest_stride, self.num_levels, downsampling)
        swap_modules(model, filter_fn)  # in place: the model's own children, now drop-in modules with its weights
        children = dict(model.named_children())
        _check_swapped(children, self.plans)
        for name, child in children.items():
            self.add_module(name, child)

    @property
    def adaptive(self) -> bool:
        return self.num_levels > 0

    def extra_repr(self) -> str:
        return f"output_stride={self.output_stride!r}, backend={self.backend!r}, downsampling={self.downsampling!r}"

    def stem(self, x: Tensor) -> Tensor:
        """``conv1``, ``bn1``, ``relu``, ``maxpool``: ``(N, 3, H, W)`` -> ``(N, 64, H/4, W/4)``."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def dense_layer(self, name: str, x: Tensor, plans: Sequence[BlockPlan] | None = None) -> Tensor:
        """Layer ``name`` (``"layer1"`` .. ``"layer4"``) as a dense network on a tensor, with ``plans`` (default:
        this network's plans of that layer, which must be dense ones for an adaptive layer's exact output)."""
        blocks = getattr(self, name)
        for block, plan in zip(blocks, self.plans[LAYERS.index(name)] if plans is None else plans):
            x = dense_bottleneck(block, x, plan)
        return x

    def _level_map(self, levels: LevelMap | Tensor | None, x: Tensor) -> LevelMap | None:
        if levels is None and not self.adaptive:
            return None
        return LevelMap.checked(
            levels,
            self.num_levels,
            f"output_stride {self.output_stride!r}",
            grid=f"the OS{self.finest_stride} grid",
            device=x.device,
        )

    def forward_backbone(
        self, x: Tensor, levels: LevelMap | Tensor | None = None, layers: Sequence[str] = ("layer3", "layer4")
    ) -> dict[str, Tensor]:
        """Outputs of the requested layers, each densified to the finest grid where it is adaptive.

        The heads of segmentation models read these: ``layer4`` (FCN, ASPP), ``layer3`` (auxiliary FCN head),
        ``layer1`` (DeepLabv3+ decoder; always dense).

        Args:
            x: image batch ``(N, 3, H, W)``.
            levels: level map on the finest grid ``(N, Hf, Wf)`` (OS8 for ``"8->*"``, OS16 for ``"16->32"``);
                optional for dense output strides (then it must be all zeros on the ``layer4`` grid). Or a callable
                that maps the dense finest-grid features ``(N, C, Hf, Wf)`` (the input of the adaptive part) to the
                level map, called once they are computed. None with a mask source attached (``adatriton.convert(...,
                mask=...)``, :func:`~adatriton.models.attach_mask`): the source's map of ``x``.
            layers: names among ``"layer1"`` .. ``"layer4"``.

        Returns:
            ``{name: tensor}`` in the order of ``layers``: an adaptive layer's output densified to
            ``(N, C, Hf, Wf)``; a dense layer's output ``(N, C, H/s, W/s)`` at its own stride ``s``.
        """
        if torch.compiler.is_compiling():  # traced once: nothing to save, and no context variable in the graph
            return self._forward_backbone(x, levels, layers)
        with environment_snapshot():  # each environment variable read once per forward, not once per conv
            return self._forward_backbone(x, levels, layers)

    def _forward_backbone(
        self, x: Tensor, levels: LevelMap | Tensor | None, layers: Sequence[str]
    ) -> dict[str, Tensor]:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be an image batch, expected a torch.Tensor (N, 3, H, W), got {type(x).__name__}")
        unknown = [name for name in layers if name not in LAYERS]
        if unknown:
            raise ValueError(f"layers must be among {list(LAYERS)}, got {unknown}")
        levels = attached_levels(self, levels, x)  # none given: the attached mask source's (adatriton.convert(mask=))
        # A callable predicts the map from the finest-grid features (e.g. a learned mask): it runs once they exist,
        # so the stem and the dense layers are computed only once.
        predict = levels if callable(levels) else None
        lm = None if predict is not None else self._level_map(levels, x)
        x = self.stem(x)
        outputs = {}

        def run_layer(value: Tensor | MultiResMap, blocks: nn.Sequential, plans: Sequence[BlockPlan]):
            # Each block (and layer) through call_with_hooks: its hooks get the block's input and output, tensors
            # in the dense part and maps in the adaptive one (the first adaptive block's input is the entered map).
            nonlocal lm
            for block, plan in zip(blocks, plans):
                if not plan.adaptive:
                    value = call_with_hooks(block, lambda v, b=block, p=plan: dense_bottleneck(b, v, p), value)
                    continue
                if not isinstance(value, MultiResMap):
                    if predict is not None:
                        lm = self._level_map(predict(value), value)
                    value = MultiResMap.from_dense(value, lm)
                value = call_with_hooks(
                    block, lambda v, b=block, p=plan: adaptive_bottleneck(b, v, p, self.backend), value
                )
            return value

        # Every layer runs even when the last ones are not requested: the level map is checked against the
        # finest grid (adaptive) or the layer4 grid (dense) only once those exist.
        for name, plans in zip(LAYERS, self.plans):
            blocks = getattr(self, name)
            x = call_with_hooks(blocks, lambda v, b=blocks, p=plans: run_layer(v, b, p), x)
            if name in layers:
                outputs[name] = x.densify(backend=self.backend) if isinstance(x, MultiResMap) else x
        if not isinstance(x, MultiResMap) and lm is not None:
            lm.check_matches(x.shape[0], x.shape[2], x.shape[3], x.device, what="dense output")
        return {name: outputs[name] for name in layers}

    def forward_features(self, x: Tensor, levels: LevelMap | Tensor | None = None) -> Tensor:
        """Backbone output (after ``layer4``), densified to the finest grid for adaptive output strides.

        Args:
            x: image batch ``(N, 3, H, W)``.
            levels: level map on the finest grid ``(N, Hf, Wf)`` (OS8 for ``"8->*"``, OS16 for ``"16->32"``);
                optional for dense output strides (then it must be all zeros) and with an attached mask source.

        Returns:
            ``(N, C, Hf, Wf)`` for adaptive output strides, else the dense ``layer4`` output at that stride.
        """
        return self.forward_backbone(x, levels, ("layer4",))["layer4"]

    def forward(self, x: Tensor, levels: LevelMap | Tensor | None = None) -> Tensor | OrderedDict[str, Tensor]:
        """What the torchvision model returns, computed from the densified backbone outputs.

        Args:
            x: image batch ``(N, 3, H, W)``.
            levels: see :meth:`forward_features`.

        Returns:
            For a ``ResNet``: ``(N, num_classes)`` logits (or whatever ``fc`` makes of the pooled features). For an
            ``IntermediateLayerGetter``: an ``OrderedDict`` ``{output name: layer output}`` as it returns, adaptive
            layers densified to the finest grid (see :meth:`forward_backbone`).
        """
        if self.return_layers is not None:
            names = [name for name in LAYERS if name in self.return_layers]  # the getter's order: children order
            feats = self.forward_backbone(x, levels, names)
            return OrderedDict((self.return_layers[name], feats[name]) for name in names)
        x = self.forward_features(x, levels)
        return self.fc(torch.flatten(self.avgpool(x), 1))
