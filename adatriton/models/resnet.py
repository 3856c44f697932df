"""Adaptive torchvision ResNets (docs/semantics.md §3, §7): a thin builder over the graph path
(:class:`~adatriton.models.graph.AdaptiveGraphModule`). The stem, ``layer1`` and the layers at or above the finest
output stride run densely; the remaining layers run on the multi-resolution map, each bottleneck's conv-BN(-add)-ReLU
one fused call, downsampling adaptively where the strided network downsamples.

The converted module holds the model's children under the same names (state_dict keys and parameters shared) and
does not modify the model: a dilated ResNet (``replace_stride_with_dilation``, a segmentation backbone) is converted
from shallow copies of its re-strided convs (:func:`restrided`), as the weights do not depend on the dilation. The
source is a ``ResNet`` or the ``IntermediateLayerGetter`` over one that torchvision's segmentation models use as
``model.backbone`` (same child names ``conv1`` .. ``layer4``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet

from ..core.levelmap import LevelMap
from ..core.strides import OUTPUT_STRIDES
from ..nn.modules import copied_with, swap_modules
from .attach import attached_levels
from .graph import AdaptiveGraphModule
from .graph.module import kept_network

__all__ = ["LAYERS", "OUTPUT_STRIDES", "STEM", "AdaptiveResNet", "graph_source", "is_bottleneck_resnet", "restrided"]

STEM = ("conv1", "bn1", "relu", "maxpool")
LAYERS = ("layer1", "layer2", "layer3", "layer4")
#: The heads of a segmentation model (``model.backbone`` a getter over a ResNet) that run as built.
_HEADS = ("classifier", "aux_classifier")


def restrided(model: nn.Module, output_stride: int) -> nn.Module:
    """``model`` (a ResNet, the ``IntermediateLayerGetter`` over one, or a segmentation model whose ``backbone`` is
    one) with the ResNet's strides and dilations of torchvision's dense network at ``output_stride`` (4, 8, 16 or 32:
    the layers past it dilated, as ``replace_stride_with_dilation`` builds them), whatever the model's own are.

    Only the changed convs and the modules above them are new objects (shallow copies): every parameter, buffer and
    hook is the model's, and the model itself is not modified. No change needed: ``model`` itself.
    """
    prefix = "backbone." if isinstance(getattr(model, "backbone", None), IntermediateLayerGetter) else ""
    resnet = model.get_submodule(prefix.rstrip("."))
    changes: dict[str, dict[str, tuple[int, int]]] = {}
    stride_so_far, dilation = 4, 1
    for name in LAYERS[1:]:
        previous, strided = dilation, stride_so_far * 2 <= output_stride
        stride_so_far, dilation = (stride_so_far * 2, dilation) if strided else (stride_so_far, dilation * 2)
        for index, block in enumerate(getattr(resnet, name)):
            stride = (2, 2) if index == 0 and strided else (1, 1)
            d = previous if index == 0 else dilation
            wanted = {"stride": stride, "dilation": (d, d), "padding": (d, d)}
            if {k: getattr(block.conv2, k) for k in wanted} != wanted:
                changes[f"{prefix}{name}.{index}.conv2"] = wanted
            if block.downsample is not None and block.downsample[0].stride != stride:
                changes[f"{prefix}{name}.{index}.downsample.0"] = {"stride": stride}
    return copied_with(model, changes)


def graph_source(model: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """What the graph path converts for a bottleneck ResNet, the ``IntermediateLayerGetter`` over one, or a
    segmentation model on one: the model with torchvision's strides (:func:`restrided` to OS32; the graph path
    places its adaptive steps at the stride-2 layers and dilates where its finest stride needs it), and the heads
    that run as built (``classifier``, ``aux_classifier``: built for the dilated network, they run on the densified
    finest-grid features, docs/semantics.md §7)."""
    heads = ()
    if isinstance(getattr(model, "backbone", None), IntermediateLayerGetter):
        heads = tuple(h for h in _HEADS if getattr(model, h, None) is not None)
    return restrided(model, 32), heads


def is_bottleneck_resnet(model: nn.Module) -> bool:
    """A torchvision ``ResNet`` (or the ``IntermediateLayerGetter`` over one) with bottleneck blocks: the models
    :class:`AdaptiveResNet` converts."""
    return _bottleneck_problem(model, check_return_layers=False) is None


def _bottleneck_problem(model: nn.Module, check_return_layers: bool) -> Exception | None:
    """What keeps ``model`` from being a torchvision ``ResNet`` with bottleneck blocks or the
    ``IntermediateLayerGetter`` over one (with ``check_return_layers``: returning only ``layer1`` .. ``layer4``), as
    the error to raise; None if nothing does."""
    if not isinstance(model, (ResNet, IntermediateLayerGetter)):
        return TypeError(
            f"expected a torchvision ResNet or an IntermediateLayerGetter over one, got {type(model).__name__}"
        )
    children = dict(model.named_children())
    missing = [name for name in STEM + LAYERS if name not in children]
    if missing:
        return TypeError(f"{type(model).__name__} has no {missing}; expected the children of a torchvision ResNet")
    if check_return_layers and isinstance(model, IntermediateLayerGetter):
        unsupported = sorted(set(map(str, model.return_layers)) - set(LAYERS))
        if unsupported:
            return NotImplementedError(
                f"IntermediateLayerGetter returns {unsupported}; only {list(LAYERS)} outputs are supported"
            )
    for name in LAYERS:
        for block in children[name]:
            if not isinstance(block, Bottleneck):
                return NotImplementedError(
                    f"{name} has {type(block).__name__} blocks; only bottleneck ResNets (50/101/152) are supported"
                )
    return None


class AdaptiveResNet(AdaptiveGraphModule):
    """A torchvision ResNet converted to an adaptive (or re-strided dense) network by the graph path.

    Use :func:`adatriton.convert` to build one. The children are the original model's modules (shared
    parameters, identical state_dict keys); the model is not modified.

    Args:
        model: a torchvision :class:`~torchvision.models.ResNet` with bottleneck blocks (ResNet-50/101/152,
            ResNeXt, Wide ResNet), any ``replace_stride_with_dilation``; or the ``IntermediateLayerGetter`` over
            one that torchvision's segmentation models hold as ``model.backbone`` (its ``return_layers`` must be
            among ``layer1`` .. ``layer4``).
        output_stride: ``"8"``, ``"16"``, ``"32"`` (dense) or ``"8->16"``, ``"8->32"``, ``"16->32"`` (adaptive).
        backend: conv backend of the adaptive part (``"torch"``, ``"dense"``, ``"triton"``, ``"auto"``); None
            resolves per call.
        filter_fn: None, or ``filter_fn(module, fqn) -> bool``: the layers it picks are swapped to their drop-in
            classes in the model, in place, first (exactly :func:`~adatriton.nn.modules.swap_modules`), for code
            that wants adatriton's classes there; the conversion runs either kind.
        downsampling: ``"top_left"`` (the strided network's subsampling, docs/semantics.md §3) or ``"softpool"`` (every
            subsampling from OS8 on, dense or adaptive, merges 2x2 blocks by SoftPool).
        example_input: an image batch of the shape to plan on (default ``(1, 3, 512, 512)``).

    Attributes:
        return_layers: the ``IntermediateLayerGetter``'s ``{layer: output name}`` mapping, None for a ``ResNet``.
        source: the model converted.
    """

    def __init__(
        self,
        model: ResNet | IntermediateLayerGetter,
        output_stride: str | int,
        backend: str | None = None,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
        downsampling: str = "top_left",
        example_input: Tensor | None = None,
    ):
        problem = _bottleneck_problem(model, check_return_layers=True)
        if problem is not None:
            raise problem
        if filter_fn is not None:
            swap_modules(model, filter_fn)
        super().__init__(restrided(model, 32), output_stride, example_input, backend, downsampling=downsampling)
        is_getter = isinstance(model, IntermediateLayerGetter)
        self.return_layers = {str(k): str(v) for k, v in model.return_layers.items()} if is_getter else None
        vars(self)["source"] = model  # not a child: its modules are this module's own (no state_dict keys)
        # forward_features' network, planned now, not in a first call: planning runs the graph on meta tensors, which
        # FlopCounterMode would count (~47x a small input's multiply-adds) and torch.compile would trace.
        self.backbone_network()

    def extra_repr(self) -> str:
        return f"output_stride={self.output_stride!r}, backend={self.backend!r}, downsampling={self.downsampling!r}"

    def backbone_network(self, layers: Sequence[str] = ("layer4",)) -> AdaptiveGraphModule:
        """The conversion of the ``IntermediateLayerGetter`` returning ``layers`` (stem .. the last of them), with this
        network's options, sharing every module; kept per ``(layers, backend)``
        (:func:`~adatriton.models.graph.module.kept_network`: built again after a child of this module is replaced)."""
        unknown = [name for name in layers if name not in LAYERS]
        if unknown or not layers:
            raise ValueError(f"layers must be among {list(LAYERS)}, got {list(layers)}")
        layers = tuple(sorted(set(layers), key=LAYERS.index))

        def build() -> AdaptiveGraphModule:
            # over this module's own children: a re-strided copy is the same object in both networks (its hooks run)
            getter = IntermediateLayerGetter(self, {name: name for name in layers})
            example = self.example_inputs()[0]  # the shape planned on; no data
            return AdaptiveGraphModule(
                getter, self.output_stride, example, self.backend, downsampling=self.downsampling
            )

        return kept_network(self, ("backbone", layers, self.backend), self._modules.values(), build)

    def forward_backbone(
        self, x: Tensor, levels: LevelMap | Tensor | None = None, layers: Sequence[str] = ("layer3", "layer4")
    ) -> dict[str, Tensor]:
        """Outputs of the requested layers, each densified to the finest grid where it is adaptive.

        The heads of segmentation models read these: ``layer4`` (FCN, ASPP), ``layer3`` (auxiliary FCN head),
        ``layer1`` (DeepLabv3+ decoder; always dense).

        Args:
            x: image batch ``(N, 3, H, W)``.
            levels: level map on the finest grid ``(N, Hf, Wf)`` (OS8 for ``"8->*"``, OS16 for ``"16->32"``);
                optional for dense output strides. Or a callable that maps the dense finest-grid features
                ``(N, C, Hf, Wf)`` (the input of the adaptive part) to the level map. None with a mask source
                attached: the source's map of ``x``.
            layers: names among ``"layer1"`` .. ``"layer4"``.

        Returns:
            ``{name: tensor}`` in the order of ``layers``: an adaptive layer's output densified to
            ``(N, C, Hf, Wf)``; a dense layer's output ``(N, C, H/s, W/s)`` at its own stride ``s``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be an image batch, expected a torch.Tensor (N, 3, H, W), got {type(x).__name__}")
        net = self.backbone_network(layers)
        outputs = net(x, attached_levels(self, levels, x))
        return {name: outputs[name] for name in layers}

    def forward_features(self, x: Tensor, levels: LevelMap | Tensor | None = None) -> Tensor:
        """Backbone output (after ``layer4``), densified to the finest grid for adaptive output strides.

        Args:
            x: image batch ``(N, 3, H, W)``.
            levels: see :meth:`forward_backbone`.

        Returns:
            ``(N, C, Hf, Wf)`` for adaptive output strides, else the dense ``layer4`` output at that stride.
        """
        return self.forward_backbone(x, levels, ("layer4",))["layer4"]
