"""Drop-in modules: torch layers that also run on multi-resolution maps.

Each class subclasses the torch module it replaces, keeps its constructor, parameters, buffers and state_dict
keys, and on an ordinary tensor runs exactly the parent's ``forward``. Given a
:class:`~adatriton.core.multires.MultiResMap` it applies the docs/semantics.md §3 operation through :mod:`adatriton.ops`
(so convolutions go through the per-layer dispatcher, :mod:`adatriton.ops.dispatch`):

=========================  ========================================================================================
module                     on a ``MultiResMap``
=========================  ========================================================================================
:class:`AdaptiveConv2d`    the convolution of docs/semantics.md §3, tap spacing = ``dilation``; ``stride=2`` also
                           performs the next adaptive downsampling step (computing only the surviving elements)
:class:`AdaptiveBatchNorm2d`  per element (train mode: statistics over elements, each counting once)
:class:`AdaptiveReLU`      per element
:class:`AdaptiveMaxPool2d` ``kernel_size=2, stride=2``: the max variant of adaptive downsampling (partial blocks at
                           the bottom/right edge merge their real elements, as ``ceil_mode=True`` does densely)
=========================  ========================================================================================

:func:`swap_modules` replaces the ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.ReLU`` / ``nn.MaxPool2d`` children of
a model, recursively and in place, by these classes; the new modules hold the *same* parameter and buffer
objects (nothing is copied), so the model's state_dict, optimiser state and outputs on tensors are unchanged.
:func:`adatriton.convert` starts with it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .. import ops
from ..core.multires import MultiResMap
from ..runtime.host import module_attrs

__all__ = [
    "ADAPTIVE_MODULES",
    "AdaptiveBatchNorm2d",
    "AdaptiveConv2d",
    "AdaptiveMaxPool2d",
    "AdaptiveReLU",
    "DeformableConv2d",
    "conv_at",
    "copied_with",
    "make_deformable",
    "swap_modules",
]


def _pair_value(value, what: str, module: nn.Module) -> int:
    """The single value of a square ``(a, a)`` argument; multi-resolution ops are isotropic."""
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    if a != b:
        raise ValueError(f"{type(module).__name__} on a MultiResMap needs a square {what}, got {tuple(value)}")
    return a


class AdaptiveConv2d(nn.Conv2d):
    """``nn.Conv2d`` that also convolves multi-resolution maps (docs/semantics.md §3).

    Same constructor, parameters and state_dict keys as :class:`torch.nn.Conv2d`; on a tensor it *is* an
    ``nn.Conv2d``. On a :class:`~adatriton.MultiResMap` ``x`` with ``(E, Cin)`` values it returns ``(E', Cout)``:

    - the conv's ``dilation`` is its tap spacing on the finest grid and its ``padding`` must centre the kernel
      (``dilation * (k // 2)``, the only padding with an element-centred meaning); odd square kernels;
    - ``stride=1`` keeps the layout (``E' = E``); ``stride=2`` performs the next adaptive downsampling step
      (top-left rule) and computes only the surviving elements;
    - ``padding_mode`` must be ``"zeros"`` (docs/semantics.md: out-of-grid taps read zero).

    Example:
        >>> conv = adatriton.AdaptiveConv2d(64, 64, 3, padding=2, dilation=2)
        >>> y = conv(torch.randn(1, 64, 32, 32))                 # exactly nn.Conv2d
        >>> m = adatriton.MultiResMap.from_dense(features, levels)
        >>> z = conv(m)                                          # MultiResMap on m's layout
    """

    def forward(self, x: Tensor | MultiResMap) -> Tensor | MultiResMap:
        if isinstance(x, MultiResMap):
            return self.multires(x)
        return super().forward(x)

    def multires(
        self,
        x: MultiResMap,
        *,
        tap_spacing: int | None = None,
        downsample: bool | None = None,
        bn: nn.Module | None = None,
        relu: bool = False,
        residual: MultiResMap | None = None,
        backend: str | None = None,
    ) -> MultiResMap:
        """This conv on a multi-resolution map, optionally fused with a BatchNorm, residual add and ReLU.

        Args:
            x: input map, ``(E, Cin)`` values.
            tap_spacing: override the tap spacing (default: ``dilation``). Converted networks pass the spacing of
                the dense finest-resolution network (docs/semantics.md §3), which a conv's own dilation need not be.
            downsample: override whether this conv performs the next downsampling step (default: ``stride == 2``).
            bn: BatchNorm applied to the conv output (eval mode: folded into the Triton kernel's epilogue).
            relu: apply ReLU last.
            residual: map on the output layout added after the BatchNorm.
            backend: ``"torch"``, ``"dense"``, ``"triton"``, ``"auto"``; None resolves through the dispatcher.

        Returns:
            ``(E', Cout)`` map: on ``x``'s layout, or on the next stage's with ``downsample``.
        """
        stride, dilation = self._multires_geometry()
        params = self._parameters
        if "weight" in params and "bias" in params:  # module_attrs' first case, without its generality (~1.5 µs)
            weight, bias = params["weight"], params["bias"]
        else:
            weight, bias = module_attrs(self, "weight", "bias")
        return ops.conv_bn_act(
            x,
            weight,
            bias,
            bn=bn,
            relu=relu,
            residual=residual,
            tap_spacing=dilation if tap_spacing is None else tap_spacing,
            groups=self.groups,
            downsample=stride == 2 if downsample is None else downsample,
            backend=backend,
        )

    def _multires_geometry(self) -> tuple[int, int]:
        """``(stride, dilation)`` on a multi-resolution map, checked. The check runs again only when one of the
        attributes it reads changed: at ~10 µs it was a sixth of the host time of an eager conv."""
        key = (self.kernel_size, self.stride, self.dilation, self.padding, self.padding_mode)
        checked = vars(self).get("_multires_checked")
        if checked is not None and checked[0] == key:
            return checked[1]
        k = _pair_value(self.kernel_size, "kernel_size", self)
        stride = _pair_value(self.stride, "stride", self)
        dilation = _pair_value(self.dilation, "dilation", self)
        if self.padding_mode != "zeros":
            raise ValueError(f"AdaptiveConv2d on a MultiResMap needs padding_mode='zeros', got {self.padding_mode!r}")
        if stride not in (1, 2):
            raise ValueError(
                f"AdaptiveConv2d on a MultiResMap takes stride 1 or 2 (one downsampling step), got {stride}"
            )
        if self.padding != "same":
            padding = _pair_value(self.padding, "padding", self)
            if padding != dilation * (k // 2):
                raise ValueError(
                    f"AdaptiveConv2d on a MultiResMap needs the centred padding dilation * (k // 2) = "
                    f"{dilation * (k // 2)}, got {padding}"
                )
        if not torch.compiler.is_compiling():  # no module mutation inside a traced graph
            vars(self)["_multires_checked"] = (key, (stride, dilation))
        return stride, dilation

    def dense_at(self, x: Tensor, stride: int, dilation: int) -> Tensor:
        """This conv on a dense ``(N, Cin, H, W)`` map at another stride and dilation (centred padding): how a
        converted network runs a dense layer at its own output stride with the model's weights."""
        k = self.kernel_size[0]
        return F.conv2d(x, self.weight, self.bias, stride, dilation * (k // 2), dilation, self.groups)


class DeformableConv2d(AdaptiveConv2d):
    """A deformable convolution whose offsets come from one bias-free conv of the same geometry (the seed's
    deformable last block), usable wherever :class:`AdaptiveConv2d` is.

    Parameters: ``weight`` / ``bias`` as the conv it replaces, plus ``offset`` (an ``nn.Conv2d`` with
    ``2 * k * k`` outputs, same kernel, stride, padding and dilation, no bias), zero-initialised so that a freshly
    made deformable conv computes exactly the plain conv. On a tensor it is
    ``torchvision.ops.deform_conv2d(x, offset(x), weight, bias, stride, padding, dilation)``. On a
    :class:`~adatriton.MultiResMap` the offsets are computed per element by the offset conv (docs/semantics.md §3
    convolution, same tap spacing), in finest-grid pixels, and every tap samples the densified padded finest grid
    bilinearly at ``c(e) + tap + offset`` (:func:`adatriton.ops.deform_conv2d`); a downsampling step keeps the top-left
    element of each merged block, as for a strided conv.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.offset = self._offset_conv()

    def _offset_conv(self) -> nn.Conv2d:
        k = self.kernel_size
        conv = nn.Conv2d(self.in_channels, 2 * k[0] * k[1], k, self.stride, self.padding, self.dilation, bias=False).to(
            device=self.weight.device, dtype=self.weight.dtype
        )
        nn.init.zeros_(conv.weight)
        return conv

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> DeformableConv2d:
        """A deformable conv sharing ``conv``'s weight and bias (the same parameter objects), zero offsets."""
        if conv.groups != 1:
            raise ValueError(f"DeformableConv2d supports groups=1 only, got groups={conv.groups}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("DeformableConv2d needs numeric zero padding")
        new = _adaptive_copy(conv, cls)
        new.offset = new._offset_conv()
        return new

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return torchvision.ops.deform_conv2d(x, self.offset(x), weight, bias, self.stride, self.padding, self.dilation)

    def dense_at(self, x: Tensor, stride: int, dilation: int) -> Tensor:
        k = self.kernel_size[0]
        pad = dilation * (k // 2)
        offsets = F.conv2d(x, self.offset.weight, None, stride, pad, dilation)
        return torchvision.ops.deform_conv2d(x, offsets, self.weight, self.bias, stride, pad, dilation)

    def multires(
        self,
        x: MultiResMap,
        *,
        tap_spacing: int | None = None,
        downsample: bool | None = None,
        bn: nn.Module | None = None,
        relu: bool = False,
        residual: MultiResMap | None = None,
        backend: str | None = None,
    ) -> MultiResMap:
        """As :meth:`AdaptiveConv2d.multires`, with deformable sampling (never fused into one launch)."""
        spacing = _pair_value(self.dilation, "dilation", self) if tap_spacing is None else tap_spacing
        offsets = ops.conv2d(x, self.offset.weight, None, spacing, backend=backend)
        out = ops.deform_conv2d(x, offsets, self.weight, self.bias, spacing)
        if (_pair_value(self.stride, "stride", self) == 2) if downsample is None else downsample:
            out = ops.downsample(out, "top_left")
        return ops.bn_add_act(out, bn, relu, residual)


class AdaptiveBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also normalises multi-resolution maps, per element.

    In training mode the batch statistics are over elements, each counting once (docs/semantics.md §3); the running
    statistics, momentum and ``num_batches_tracked`` update as the parent's forward does.
    """

    def forward(self, x: Tensor | MultiResMap) -> Tensor | MultiResMap:
        if isinstance(x, MultiResMap):
            return ops.batch_norm(x, self)
        return super().forward(x)


class AdaptiveReLU(nn.ReLU):
    """``nn.ReLU`` that also acts on multi-resolution maps (per element; ``inplace`` is ignored there)."""

    def forward(self, x: Tensor | MultiResMap) -> Tensor | MultiResMap:
        if isinstance(x, MultiResMap):
            return x.relu()
        return super().forward(x)


class AdaptiveMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that, with ``kernel_size=2, stride=2``, performs the max variant of adaptive downsampling
    on a multi-resolution map (docs/semantics.md §3: a merging block takes the elementwise maximum of its elements).

    Partial blocks at the bottom/right edge of a grid of odd size merge the elements that hold real pixels
    (docs/semantics.md §4), which is what the dense layer computes with ``ceil_mode=True``.
    """

    def forward(self, x: Tensor | MultiResMap) -> Tensor | MultiResMap:
        if not isinstance(x, MultiResMap):
            return super().forward(x)
        k = _pair_value(self.kernel_size, "kernel_size", self)
        stride = _pair_value(self.stride if self.stride is not None else self.kernel_size, "stride", self)
        padding = _pair_value(self.padding, "padding", self)
        dilation = _pair_value(self.dilation, "dilation", self)
        if (k, stride, padding, dilation) != (2, 2, 0, 1) or self.return_indices:
            raise ValueError(
                "AdaptiveMaxPool2d on a MultiResMap is one adaptive downsampling step: kernel_size=2, stride=2, "
                f"padding=0, dilation=1, no indices; got kernel_size={k}, stride={stride}, padding={padding}, "
                f"dilation={dilation}, return_indices={self.return_indices}"
            )
        return ops.downsample(x, "max")


#: torch module class -> its drop-in replacement (exact types: subclasses of these are left alone).
ADAPTIVE_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: AdaptiveConv2d,
    nn.BatchNorm2d: AdaptiveBatchNorm2d,
    nn.ReLU: AdaptiveReLU,
    nn.MaxPool2d: AdaptiveMaxPool2d,
}


def _adaptive_copy(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A ``cls`` instance with ``module``'s state: the same parameter and buffer objects, hooks and flags."""
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for key, value in state.items():  # own containers (so later edits of one module do not leak), same tensors
        if isinstance(value, dict):
            state[key] = type(value)(value)
    new.__dict__.update(state)
    return new


def copied_with(root: nn.Module, changes: dict[str, dict[str, object]]) -> nn.Module:
    """``root`` with the attributes ``changes`` gives per module path (``{"layer3.0.conv2": {"stride": (1, 1)}}``)
    set on shallow copies of those modules and of the modules above them: every other module, and every parameter,
    buffer and hook, is shared, and ``root`` itself is not modified. No change: ``root``.

    The graph path converts such copies where a model must be read with other strides (a dilated ResNet,
    :func:`adatriton.models.resnet.restrided`) or other pooling (D2-Net's ceil-mode pools). A copy has its own
    ``training`` flag; the BatchNorms, whose flag matters, are the model's own unless a change names one.
    """
    copies: dict[str, nn.Module] = {}

    def copy_of(path: str) -> nn.Module:
        if path not in copies:
            original = root.get_submodule(path)
            copies[path] = module = copy.copy(original)
            module._modules = dict(original._modules)  # its own children table: a copied child replaces one here
            if path:
                parent, _, name = path.rpartition(".")
                copy_of(parent)._modules[name] = module
        return copies[path]

    for path, attributes in changes.items():
        for name, value in attributes.items():
            setattr(copy_of(path), name, value)
    return copies.get("", root)


def swap_modules(
    model: nn.Module, filter_fn: Callable[[nn.Module, str], bool] | None = None, prefix: str = ""
) -> nn.Module:
    """Replace, in place and recursively, every ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.ReLU`` / ``nn.MaxPool2d``
    child by its drop-in class, sharing its parameters and buffers (no weight is copied).

    Args:
        model: any module; it is modified in place and returned (a ``model`` that is itself one of those classes
            is returned as its replacement, since it has no parent to swap it in).
        filter_fn: ``filter_fn(module, fqn) -> bool`` chooses which modules to swap (``fqn`` is the dotted name
            in ``model``, e.g. ``"layer3.0.conv2"``); None swaps all of them.
        prefix: name of ``model`` inside a larger model, prepended to the ``fqn`` passed to ``filter_fn``.

    Returns:
        ``model`` (or the replacement of a top-level layer). Outputs on tensors and the state_dict are unchanged.
    """

    def wanted(module: nn.Module, fqn: str) -> type[nn.Module] | None:
        cls = ADAPTIVE_MODULES.get(type(module))
        return cls if cls is not None and (filter_fn is None or filter_fn(module, fqn)) else None

    cls = wanted(model, prefix)
    if cls is not None:
        return _adaptive_copy(model, cls)
    for name, child in list(model.named_children()):
        fqn = f"{prefix}.{name}" if prefix else name
        cls = wanted(child, fqn)
        if cls is not None:
            setattr(model, name, _adaptive_copy(child, cls))
        else:
            swap_modules(child, filter_fn, fqn)
    return model


def make_deformable(model: nn.Module, fqns: Sequence[str] | None = None) -> nn.Module:
    """Turn convs of ``model`` into :class:`DeformableConv2d` in place (weights shared, offset convs added, zero).

    Args:
        model: a torchvision ResNet, an ``IntermediateLayerGetter`` over one, or a segmentation model on one.
        fqns: dotted names of the convs; default: ``conv2`` of the last block of ``layer4`` (the seed's deformable
            last block), found as ``layer4`` or ``backbone.layer4``.

    Returns:
        ``model``. Its state_dict gains ``<fqn>.offset.weight`` per deformable conv.
    """
    if fqns is None:
        modules = dict(model.named_modules())
        layer = next((name for name in ("layer4", "backbone.layer4") if name in modules), None)
        if layer is None:
            raise TypeError(f"{type(model).__name__} has no layer4 or backbone.layer4; pass fqns=")
        fqns = [f"{layer}.{len(modules[layer]) - 1}.conv2"]
    for fqn in fqns:
        parent_name, _, name = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, name, None)
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{fqn} is not a Conv2d: {type(conv).__name__}")
        if not isinstance(conv, DeformableConv2d):
            setattr(parent, name, DeformableConv2d.from_conv(conv))
    return model


def conv_at(conv: nn.Conv2d, x: Tensor, stride: int, dilation: int) -> Tensor:
    """``conv`` (plain, drop-in or deformable) on a dense map at the given stride and dilation, centred padding."""
    if isinstance(conv, AdaptiveConv2d):
        return conv.dense_at(x, stride, dilation)
    return AdaptiveConv2d.dense_at(conv, x, stride, dilation)
