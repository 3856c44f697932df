"""What the graph converter accepts (docs/semantics.md §8): the conversion names it parses, the modules, functions and
methods it knows on maps, and the geometry of convs and pools it can express (the reason why not, where not)."""

from __future__ import annotations

import inspect
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.strides import canonical_stride

__all__ = [
    "BINARY_FUNCTIONS",
    "BINARY_METHODS",
    "CAT_FUNCTIONS",
    "GraphConversionError",
    "NodePlan",
    "PLANNING_SIZE",
    "POINTWISE_FUNCTIONS",
    "POINTWISE_METHODS",
    "POINTWISE_MODULES",
    "PoolGeometry",
    "TO_FIRST",
    "TO_LAST",
    "UNSUPPORTED",
    "check_options",
    "conv_problem",
    "fetch",
    "global_dims",
    "grid_problem",
    "inplace_false",
    "keeps_shape",
    "pair",
    "parse_graph_output_stride",
    "permutation",
    "pool_geometry",
    "upsampling",
]

#: What ``convert(..., unsupported=)`` does with a layer the rules cannot express on a map (an even kernel with
#: stride 2, a conv without centred padding, a 3x3 pool with stride 2, ...): raise, or run it densely on the
#: densified map.
UNSUPPORTED = ("error", "densify")
#: How a subsampling merges a 2x2 block: ``"top_left"`` (a strided conv) or ``"softpool"`` (from
#: :data:`SOFTPOOL_FROM_STRIDE` on; ``adatriton.convert(..., downsampling=)``).
DOWNSAMPLING = ("top_left", "softpool")
#: SoftPool replaces the subsamplings that leave this output stride (a ResNet's layer3 and layer4): exactly the steps
#: an adaptive conversion of a ResNet can make adaptive, so that every uniform map equals a dense SoftPool network.
SOFTPOOL_FROM_STRIDE = 8
#: Side of the square ``meta`` input the graph is planned on when no ``example_input`` is given: a multiple of every
#: output stride up to 256, so every stride is exact.
PLANNING_SIZE = 512

# ---------------------------------------------------------------------------------------------- what is known
#: Modules that act on every element's vector on its own (docs/semantics.md §8: every activation, dropout).
POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.Hardtanh,  # ReLU6 too
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Mish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.PReLU,
    nn.Dropout,
    nn.AlphaDropout,
)
#: Functions (and Tensor methods, by name) of one tensor and constants that act on every entry on its own.
POINTWISE_FUNCTIONS = frozenset(
    f
    for f in (
        F.relu,
        F.relu6,
        F.hardswish,
        F.hardsigmoid,
        F.silu,
        F.gelu,
        F.sigmoid,
        F.tanh,
        F.leaky_relu,
        F.elu,
        F.celu,
        F.selu,
        F.mish,
        F.hardtanh,
        F.softplus,
        F.softsign,
        F.prelu,
        F.dropout,
        F.alpha_dropout,
        torch.relu,
        torch.sigmoid,
        torch.tanh,
        torch.exp,
        torch.neg,
        torch.abs,
        torch.sqrt,
        torch.square,
        torch.clamp,
        torch.clip,
        operator.neg,
    )
)
POINTWISE_METHODS = frozenset(
    ("relu", "sigmoid", "tanh", "exp", "neg", "abs", "sqrt", "square", "clamp", "clamp_min", "clamp_max", "clip")
    + ("clone", "float", "double", "half", "bfloat16", "pow")
)
#: Elementwise binary functions: two maps on one layout, a map and a scalar, or a map and per-sample vectors.
BINARY_FUNCTIONS = frozenset(
    (
        operator.add,
        operator.sub,
        operator.mul,
        operator.truediv,
        torch.add,
        torch.sub,
        torch.mul,
        torch.div,
        torch.true_divide,
        torch.maximum,
        torch.minimum,
    )
)
BINARY_METHODS = frozenset(("add", "sub", "mul", "div", "true_divide", "maximum", "minimum"))
CAT_FUNCTIONS = frozenset((torch.cat, torch.concat, torch.concatenate))
#: Spatial dims of an NCHW tensor, as a global pool's ``dim`` may name them; channels-last: (1, 2).
_HW_DIMS = {False: ({2, 3}, {-2, -1}), True: ({1, 2}, {-3, -2})}
TO_LAST, TO_FIRST = (0, 2, 3, 1), (0, 3, 1, 2)


class GraphConversionError(ValueError):
    """The graph cannot be converted as asked: a layer the rules cannot express (naming the node), a model that
    cannot be traced, or strides that never reach the conversion's output strides."""


@dataclass(frozen=True)
class NodePlan:
    """How one node of the traced graph runs in the converted module.

    Attributes:
        node: the traced node's name (e.g. ``features_7_conv_1_0``).
        target: its module path (``features.7.conv.1.0``) or function / method name.
        op: ``"dense"`` (unchanged), ``"dense-dilated"`` (a dense spatial layer at another stride / dilation),
            ``"dense-identity"`` (a stride-2 pool of the dense dilated network), ``"conv"``, ``"downsample"``,
            ``"identity"``, ``"pointwise"``, ``"batch_norm"``, ``"binary"``, ``"per_sample"``, ``"global_pool"``,
            ``"cat"``, ``"permute"``, ``"shape"``, or ``"densify"`` (its map inputs are densified first, then it
            runs densely; ``note`` says why).
        on_map: runs on a multi-resolution map.
        stage: adaptive downsamplings done before it (maps), else None.
        downsample: performs the next adaptive downsampling step.
        kernel: conv kernel size; tap_spacing: its tap spacing on the finest grid (maps) or its dilation (dense).
        note: why a node densifies, or the variant of a step.
    """

    node: str
    target: str
    op: str
    on_map: bool = False
    stage: int | None = None
    downsample: bool = False
    kernel: int | None = None
    tap_spacing: int | None = None
    note: str = ""


def parse_graph_output_stride(output_stride: str | int) -> tuple[str, int, int]:
    """``"8"`` -> ``("8", 8, 0)``; ``"8->32"`` (or ``"8to32"``, ``"8:32"``, ``"8→32"``, ``"8 -> 32"``: the spellings of
    :func:`~adatriton.core.strides.canonical_stride`) -> ``("8->32", 8, 2)``.

    Any power of two is a dense output stride, and any ``"a->b"`` with powers of two ``a < b`` an adaptive
    conversion with ``K = log2(b / a)`` levels.

    Raises:
        ValueError: anything else.
    """
    if isinstance(output_stride, bool) or not isinstance(output_stride, (str, int)):
        raise ValueError(f"unknown output_stride {output_stride!r}: expected e.g. '8', '16' or '8->32'")
    key = canonical_stride(output_stride)
    match = re.fullmatch(r"(\d+)(?:->(\d+))?", key)
    if match is None:
        raise ValueError(f"unknown output_stride {output_stride!r}: expected e.g. '8', '16' or '8->32'")
    a, b = int(match.group(1)), int(match.group(2) or match.group(1))

    def power_of_two(v: int) -> bool:
        return v >= 1 and v & (v - 1) == 0

    if not (power_of_two(a) and power_of_two(b)) or b < a or (match.group(2) is not None and b == a):
        raise ValueError(
            f"unknown output_stride {output_stride!r}: strides must be powers of two, and a->b needs a < b"
        )
    return key, a, int(math.log2(b // a))


def fetch(root: nn.Module, target: str) -> Any:
    """The submodule, parameter or attribute at the dotted path ``target`` of ``root``."""
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def pair(value: Any) -> tuple[int, int] | None:
    """A layer's size argument as ``(h, w)``: an int, a pair or a one-element sequence; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return int(value[0]), int(value[0])
    return None


@dataclass
class PoolGeometry:
    """The geometry of a max / average pool, as :func:`pool_geometry` reads it from a module or a call."""

    kind: str  # "max" / "avg"
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    exotic: str  # return_indices / divisor_override: what the merge rules do not cover, or ""
    ceil_mode: bool = False


def keeps_shape(root: nn.Module, node: fx.Node, args: tuple, kwargs: dict) -> bool:
    """An activation, BatchNorm or dropout on one tensor (its output has the input's shape and dtype)."""
    if not args or not isinstance(args[0], Tensor) or any(isinstance(a, Tensor) for a in (*args[1:], *kwargs.values())):
        return False
    if node.op == "call_module":
        return isinstance(fetch(root, node.target), (*POINTWISE_MODULES, nn.BatchNorm2d, nn.Identity))
    if node.op == "call_function":
        return node.target in POINTWISE_FUNCTIONS and node.target is not F.prelu
    return False


def pool_geometry(fn_or_module: Any, args: tuple, kwargs: dict) -> PoolGeometry | None:
    """The geometry of a max / average pool module or function call (after its input), or None."""
    if isinstance(fn_or_module, nn.MaxPool2d):
        m = fn_or_module
        return PoolGeometry(
            "max", pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding), pair(m.dilation),
            "return_indices" if m.return_indices else "", bool(m.ceil_mode),
        )  # fmt: skip
    if isinstance(fn_or_module, nn.AvgPool2d):
        m = fn_or_module
        return PoolGeometry(
            "avg", pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding), (1, 1),
            "divisor_override" if m.divisor_override else "", bool(m.ceil_mode),
        )  # fmt: skip
    if fn_or_module is F.max_pool2d:
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        kind = "max"
    elif fn_or_module is F.avg_pool2d:
        names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        kind = "avg"
    else:
        return None
    bound = {**dict(zip(names, args)), **kwargs}
    kernel = pair(bound["kernel_size"])
    stride = pair(bound.get("stride") or bound["kernel_size"])
    exotic = "return_indices" if bound.get("return_indices") else ""
    exotic = exotic or ("divisor_override" if bound.get("divisor_override") else "")
    padding, dilation = pair(bound.get("padding", 0)), pair(bound.get("dilation", 1))
    return PoolGeometry(kind, kernel, stride, padding, dilation, exotic, bool(bound.get("ceil_mode", False)))


def grid_problem(
    kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool = False
) -> tuple[str, str] | None:
    """Why a conv or pool in the dense part breaks the finest grid, with what would fix it; None where it does not.

    docs/semantics.md §8 takes the finest grid to be the ceil or the floor of the image over ``a``. A layer of
    stride ``s`` keeps that for every input size exactly where its output is always ``floor(x / s)`` or
    ``ceil(x / s)`` or in between: its output ``floor((x + e) / s) + 1`` (``e = 2p - d (k - 1) - 1``) needs
    ``-s <= e <= -1`` (``1 - 2s <= e <= -s`` in ceil mode). A chain of such layers stays between the floor and the
    ceil of the image over the product of their strides, so checking layer by layer suffices.
    """
    k, s, d = pair(kernel), pair(stride), pair(dilation)
    if padding == "same":
        return None if s == (1, 1) else ("padding 'same' with a stride", "padding d * (k // 2) with an odd k")
    p = (0, 0) if padding == "valid" else pair(padding)
    if None in (k, s, d, p):
        return None
    for ki, si, pi, di in zip(k, s, p, d):
        e = 2 * pi - di * (ki - 1) - 1
        low, high = (1 - 2 * si, -si) if ceil_mode else (-si, -1)
        if not low <= e <= high:
            fix = "padding d * (k // 2) with an odd kernel k, or a kernel equal to its stride without padding"
            return (
                f"kernel {k}, stride {s}, padding {p}, dilation {d}{' (ceil mode)' if ceil_mode else ''} turns a "
                f"side of x pixels into {'ceil' if ceil_mode else 'floor'}((x {'+' if e >= 0 else '-'} {abs(e)}) "
                f"/ {si}) + 1 pixels, neither floor(x / {si}) nor ceil(x / {si})",
                fix,
            )
    return None


def upsampling(fn_or_module: Any, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """The arguments of ``F.interpolate`` (after its input) that an upsampling call or module stands for, or None
    where it is none (``nn.Upsample``, ``nn.UpsamplingNearest2d`` / ``UpsamplingBilinear2d`` included)."""
    if isinstance(fn_or_module, nn.Upsample):  # the UpsamplingNearest2d / UpsamplingBilinear2d subclasses too
        m = fn_or_module
        return {
            "size": m.size, "scale_factor": m.scale_factor, "mode": m.mode, "align_corners": m.align_corners,
            "recompute_scale_factor": m.recompute_scale_factor,
        }  # fmt: skip
    if fn_or_module is not F.interpolate:
        return None
    bound = inspect.signature(F.interpolate).bind(None, *args, **kwargs)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k != "input"}


def conv_problem(m: nn.Conv2d) -> str:
    """Why a conv cannot run on a map (or at another dilation), or ""."""
    k, s, d = pair(m.kernel_size), pair(m.stride), pair(m.dilation)
    if k is None or k[0] != k[1] or k[0] % 2 == 0:
        return f"kernel {tuple(m.kernel_size)} is not odd and square"
    if s is None or s[0] != s[1] or s[0] not in (1, 2):
        return f"stride {tuple(m.stride)} is not 1 or 2 in both directions"
    if d is None or d[0] != d[1]:
        return f"dilation {tuple(m.dilation)} is not square"
    if m.padding_mode != "zeros":
        return f"padding_mode {m.padding_mode!r} is not 'zeros'"
    if m.padding == "same":
        return "" if s[0] == 1 else "padding 'same' with stride 2"
    p = pair(m.padding)
    if p is None or p != (d[0] * (k[0] // 2),) * 2:
        return f"padding {m.padding} does not centre the kernel (dilation * (k // 2) = {d[0] * (k[0] // 2)})"
    return ""


def permutation(args: tuple) -> tuple[int, ...] | None:
    dims = args[1:]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if len(dims) != 4 or not all(isinstance(d, int) for d in dims):
        return None
    return tuple(d % 4 for d in dims)


def global_dims(dim: Any, last: bool) -> bool:
    dims = {dim} if isinstance(dim, int) else set(dim) if isinstance(dim, (tuple, list)) else None
    return dims is not None and dims in _HW_DIMS[last]


def inplace_false(fn: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``fn``'s arguments with ``inplace=False`` (map values are never updated in place)."""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):  # builtins without a signature have no inplace argument
        return args, kwargs
    if not bound.arguments.get("inplace"):
        return args, kwargs
    bound.arguments["inplace"] = False
    return bound.args, bound.kwargs


def check_options(unsupported: str, downsampling: str = "top_left") -> None:
    """Raise ``ValueError`` unless ``unsupported`` is one of :data:`UNSUPPORTED` and ``downsampling`` one of
    :data:`DOWNSAMPLING`."""
    if unsupported not in UNSUPPORTED:
        raise ValueError(f"unsupported must be one of {UNSUPPORTED}, got {unsupported!r}")
    if downsampling not in DOWNSAMPLING:
        raise ValueError(f"downsampling must be one of {DOWNSAMPLING}, got {downsampling!r}")
