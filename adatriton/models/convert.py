"""Model conversion: the one entry point that turns a torchvision model into an adaptive one."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..core.strides import parse_output_stride
from ..nn.modules import swap_modules
from ..runtime.backend import BACKENDS
from .attach import attach_mask
from .graph import AdaptiveGraphModule, GraphConversionError, conv_calls, convert_graph
from .graph.rules import check_options
from .resnet import AdaptiveResNet, graph_source, is_bottleneck_resnet
from .segmentation import SEGMENTATION_MODELS, AdaptiveSegmentationModel

__all__ = ["ConversionWarning", "ConversionProblem", "convert", "coarsest_level_macs"]


class ConversionWarning(UserWarning):
    """A conversion that silently does nothing or costs more: the model got no adaptive layer (or, at a dense output
    stride, no changed layer), or its coarsest uniform level costs more multiply-adds than the dense network at its
    coarsest stride (for ``"8->32"`` on a stride-32 CNN: the original network). The
    message gives the counts and the conversion summary (``net.conversion_summary()``)."""


class ConversionProblem(GraphConversionError):
    """What :func:`convert` raises under ``strict=True`` instead of a :class:`ConversionWarning` (a ``ValueError``)."""


def convert(
    model: nn.Module,
    output_stride: str | int,
    backend: str | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    downsampling: str = "top_left",
    example_input=None,
    unsupported: str = "error",
    method: str = "auto",
    strict: bool = False,
    mask=None,
) -> nn.Module:
    """Convert a torchvision model to run at ``output_stride``, sharing its weights.

    Every model converts by the ``torch.fx`` graph path (docs/semantics.md §8). One rule for every model: the model
    is not modified, and the converted module holds the model's own children (parameters, buffers, hooks and
    state_dict keys shared; no weight is copied). The only new modules are shallow copies of the convs whose stride
    or dilation a conversion changes, and of the containers above them (a dilated ResNet re-strided,
    :func:`~adatriton.models.resnet.restrided`); their parameters are the model's.

    Args:
        model: a torchvision ``ResNet`` with bottleneck blocks (ResNet-50/101/152), any
            ``replace_stride_with_dilation``; the ``IntermediateLayerGetter`` over one; or a segmentation model on one:
            torchvision's ``fcn_resnet50/101`` and ``deeplabv3_resnet50/101`` (``FCN`` / ``DeepLabV3``), or
            :func:`adatriton.models.segmentation.fcn` / ``deeplabv3`` / ``deeplabv3plus`` (also on ResNet-152). Or any
            other model ``torch.fx`` can trace (:func:`adatriton.models.graph.convert_graph`: MobileNets,
            EfficientNets, RegNets, VGG, LRASPP, ...).
        output_stride: ``"8"``, ``"16"``, ``"32"`` (dense networks; the ints ``8``, ``16``, ``32`` mean the same) or
            ``"8->16"``, ``"8->32"``, ``"16->32"`` (adaptive: finest grid at the first stride, downsampled by a level
            map towards the second); the graph path takes any power of two and any ``"a->b"`` with powers of two
            ``a < b``. ``"8to32"`` and ``"8:32"`` (safe in a shell) read as ``"8->32"``
            (:func:`~adatriton.core.strides.canonical_stride`).
        backend: conv backend of the adaptive part (``"torch"``, ``"dense"``, ``"triton"``, ``"auto"``); None
            resolves per call (``adatriton.use_backend``, ``$ADATRITON_BACKEND``, else ``"torch"``). Checked here,
            before anything is converted.
        filter_fn: None, or ``filter_fn(module, fqn) -> bool`` (``fqn`` the dotted name in ``model``, e.g.
            ``"layer3.0.conv2"``): an explicit request to swap the layers it picks to their drop-in classes in the
            model, in place, first (exactly ``adatriton.swap_modules(model, filter_fn)``), for code that wants
            adatriton's classes there; the conversion runs either kind.
        downsampling: ``"top_left"`` (docs/semantics.md §3: the strided network's subsampling) or ``"softpool"``: every
            2x2 merge from OS8 on (layer3, layer4; adaptive steps and dense strides alike) is a SoftPool, so a uniform
            level map equals the dense network that SoftPools at those strides. The graph path applies it to every
            stride-2 conv whose input is at OS8 or coarser.
        example_input, unsupported: the graph path's (:class:`~adatriton.models.graph.AdaptiveGraphModule`): an
            input of the model's shape to plan on (default ``(1, C, 512, 512)``), and what to do with a layer the
            rules cannot express (``"error"`` or ``"densify"``).
        method: ``"auto"``: a bottleneck ResNet (or the ``IntermediateLayerGetter`` over one) becomes an
            :class:`~adatriton.models.AdaptiveResNet` and a segmentation model on one an
            :class:`~adatriton.models.segmentation.AdaptiveSegmentationModel` (graph-path modules with their
            builders' extra methods); ``"graph"``: a plain :class:`~adatriton.models.graph.AdaptiveGraphModule` of
            the same network (equal outputs).
        strict: raise :class:`ConversionProblem` where a :class:`ConversionWarning` would be issued.
        mask: a mask source to attach (adaptive ``output_stride`` only), so that ``net(images)`` builds its own
            level map: any callable ``source(images, output_stride) -> LevelMap``, e.g.
            ``adatriton.masks.edges(fraction=0.3)`` (a :class:`~adatriton.masks.MaskSource`; add
            ``.with_normalization()`` for ImageNet-normalised inputs), or a :class:`~adatriton.masks.LearnedMask`
            (``"8->16"``, on the finest-grid features). A ``levels`` passed to the forward still wins. Kept outside
            the module tree: state_dict keys do not change (:mod:`adatriton.models.attach`;
            :func:`~adatriton.models.attach_mask` replaces or removes it later).

    Warns:
        ConversionWarning: (not for the ResNet family: its conversions are the paper's) the converted model has no
            adaptive conv (an adaptive ``output_stride``) or no changed layer (a dense one): it computes what the
            original does, e.g. ``swin_t`` at ``"8"``, or ``googlenet`` and ``convnext_tiny`` with
            ``unsupported="densify"``. Or its uniform coarsest level (every location
            downsampled ``K`` times) costs more multiply-adds on the example input than the dense network at the
            conversion's coarsest stride (the original network for ``"8->32"`` on a stride-32 CNN), e.g.
            ``shufflenet_v2_x1_0`` at ``"8->32"``, whose channel shuffle densifies the map on the OS8 grid. The
            message gives the counts and :meth:`~adatriton.models.graph.AdaptiveGraphModule.conversion_summary`.

    Raises:
        ValueError: an unknown ``output_stride`` or ``backend`` (the message names the argument, the value given
            and the accepted ones), before the model is touched.
        TypeError: a model of another kind; a ``mask`` that is not callable.
        ConversionProblem: ``strict=True`` and the conversion would warn (see Warns).

    Returns:
        A module with the same state_dict keys and shared parameters (the graph path:
        :class:`~adatriton.models.graph.AdaptiveGraphModule`), whose ``forward(x, levels)`` takes the
        image batch ``(N, 3, H, W)`` and a level map (``LevelMap`` or integer tensor ``(N, Hf, Wf)`` on the finest
        grid; optional for dense strides) and returns what the model returns: logits for a ``ResNet``, the
        getter's ``OrderedDict`` (adaptive layers densified to the finest grid) for an ``IntermediateLayerGetter``
        (:class:`~adatriton.models.AdaptiveResNet`), ``OrderedDict(out=...[, aux=...])`` at the input size for a
        segmentation model (:class:`~adatriton.models.segmentation.AdaptiveSegmentationModel`, the graph path's;
        heads on the densified finest-grid maps).

    Example:
        >>> net = adatriton.convert(torchvision.models.resnet101(), "8->32").eval()
        >>> logits = net(images, levels)          # levels: (N, H/8, W/8) with values in {0, 1, 2}
        >>> seg = adatriton.convert(adatriton.models.segmentation.deeplabv3plus("resnet152"), "8->32").eval()
        >>> masks = seg(images, levels)["out"]    # (N, 21, H, W)
        >>> net = adatriton.convert(torchvision.models.resnet50(), "8to32", mask=adatriton.masks.edges(fraction=0.3))
        >>> logits = net(images)                  # images: RGB in [0, 1]; the level map from their edges
    """
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, got {strict!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"convert expects the model to convert, an nn.Module (e.g. torchvision.models.resnet50()), got "
            f"{type(model).__name__}"
        )
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise ValueError(f"convert: unknown backend {backend!r}; backend must be one of {list(BACKENDS)} or None")
    if method not in ("auto", "graph"):
        raise ValueError(f"method must be 'auto' or 'graph', got {method!r}")
    bottleneck = is_bottleneck_resnet(model)
    resnets = bottleneck or (isinstance(model, SEGMENTATION_MODELS) and is_bottleneck_resnet(model.backbone))
    if resnets:
        output_stride = parse_output_stride(output_stride)[0]  # raises naming the accepted ones; 8 -> "8"
    if mask is not None and not callable(mask):
        attach_mask(model, mask)  # raises the TypeError before the model is touched
    check_options(unsupported, downsampling)
    if method == "auto" and bottleneck:
        return _attached(AdaptiveResNet(model, output_stride, backend, filter_fn, downsampling, example_input), mask)
    if method == "auto" and resnets:
        net = AdaptiveSegmentationModel(model, output_stride, backend, filter_fn, downsampling, example_input)
        return _attached(net, mask)
    if filter_fn is not None:
        swap_modules(model, filter_fn)
    source, heads = graph_source(model) if resnets else (model, ())
    net = convert_graph(
        source, output_stride, example_input, backend, unsupported, heads=heads, downsampling=downsampling
    )
    problem = None if resnets else _problem(net, model)  # the ResNet family's conversions are the paper's
    if problem is not None:
        if strict:
            raise ConversionProblem(problem)
        warnings.warn(problem, ConversionWarning, stacklevel=2)
    return _attached(net, mask)


def _attached(net: nn.Module, mask) -> nn.Module:
    return net if mask is None else attach_mask(net, mask)


def _problem(net: AdaptiveGraphModule, model: nn.Module) -> str | None:
    """Why a graph conversion would do nothing or cost more (the warning's text), or None."""
    what = f"convert({type(model).__name__}, {net.output_stride!r}, unsupported={net.unsupported!r})"
    tail = f"\n{net.conversion_summary()}\n(strict=True raises instead of warning)"
    if net.adaptive and not net.adaptive_convs():
        return (
            f"{what} gets no adaptive layer (0 adaptive convs): the model runs as the dense network at OS"
            f"{net.finest_stride}, whatever the level map says, so it never saves work{tail}"
        )
    if not net.adaptive and not any(p.op in ("dense-dilated", "dense-identity") for p in net.plan):
        return (
            f"{what} changes no layer (0 adaptive convs, 0 layers at another stride or dilation): it returns "
            f"exactly what the original model computes{tail}"
        )
    # Every layer past the entry on the map: at a uniform level K each conv computes the elements its strided original
    # computes (ceil(H / s) a side), so the count can only differ where a node runs densely at a finer stride than the
    # original (after a densify, or dilated): count only then, as the two meta runs cost about a second.
    finer = any(p.op in ("densify", "dense-dilated", "dense-identity") for p in net.plan)
    if net.adaptive and finer:
        coarsest_stride = net.finest_stride << net.num_levels
        dense = net.with_output_stride(str(coarsest_stride))
        reference = _macs(dense, net.example_inputs())
        coarsest = coarsest_level_macs(net)
        if coarsest > reference:
            # Against the dense network at the conversion's coarsest stride, which the coarsest level should match:
            # the original network itself when that is the model's own output stride ("8->32" on a stride-32 CNN).
            if any(p.op in ("dense-dilated", "dense-identity") for p in dense.plan):
                against = f"the dense network at OS{coarsest_stride}"
            else:
                against = f"the original network (OS{coarsest_stride})"
            ratio = coarsest / reference if reference else math.inf
            return (
                f"{what} costs more at its coarsest uniform level: {coarsest:.3g} multiply-adds (every location "
                f"downsampled {net.num_levels} times) against {reference:.3g} for {against}, {ratio:.2f}x, on an "
                f"input of shape {net.example_shapes[0]}{tail}"
            )
    return None


def _macs(model: nn.Module, shapes: Sequence, elements: Sequence[int] | None = None) -> int:
    return sum(r["per_output"] * r["elements"] for r in conv_calls(model, shapes, elements))


def coarsest_level_macs(net: AdaptiveGraphModule, shapes: Sequence | None = None) -> int:
    """Multiply-adds of a graph-converted adaptive network at its coarsest uniform level (every location downsampled
    ``K`` times), counted on meta tensors (:func:`~adatriton.models.graph.conv_calls`).

    Args:
        net: an adaptive :class:`~adatriton.models.graph.AdaptiveGraphModule`.
        shapes: input shapes (default: the conversion's example input).

    Returns:
        The total, equal to ``adatriton.count_macs(net, x, uniform K map).total``.
    """
    if shapes is None:
        inputs = net.example_inputs()
    else:
        inputs = [torch.empty(s, device="meta") if isinstance(s, tuple) else s for s in shapes]
    n, h, w = net.finest_grid(*inputs)
    # A uniform level-K map keeps one element per aligned 2^j cell at stage j (docs/semantics.md §4).
    return _macs(
        net, inputs, [n * math.ceil(h / (1 << j)) * math.ceil(w / (1 << j)) for j in range(net.num_levels + 1)]
    )
