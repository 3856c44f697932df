"""ONNX export of adaptive models: ONNX translations of the project's custom ops and of ``aten.nonzero_static``.

An adaptive network exported with ``torch.onnx.export(net, (images, levels), dynamo=True)`` can hold five ops that
torch's ONNX library (onnxscript's torchlib) does not translate:

- ``aten.nonzero_static`` (the layouts' element lists, sized by the element counts): ONNX ``NonZero`` (dynamic
  length), padded with the fill value and cut to the requested size, which is ``nonzero_static`` exactly.
- ``adatriton::gather_conv`` (the torch backend's gather-GEMM) and ``adatriton::triton_conv`` (the Triton conv with
  its BatchNorm / residual / ReLU epilogue): one ``Gather`` of the taps' rows (the sentinel row ``E`` reads an
  appended zero row) and one ``MatMul`` over ``k*k*Cin`` (depthwise: a multiply and a sum over the taps; other
  groups: an ``Einsum``). Only the active elements are gathered and multiplied: nothing falls back to a dense conv.
- ``adatriton::densify`` (the Triton densify): the reference ``Gather`` over the pixel-to-element map.
- ``aten.__lshift__.Tensor`` (element sides ``1 << level`` of the graph path's pooling): ONNX ``BitShift`` on the
  unsigned bits.

The level map stays a graph input (its levels tensor; the layouts are built inside the graph from it), so one
``.onnx`` file serves every map of its grid shape. :func:`register_onnx_translations` adds the translations to
onnxscript's registry, which every later export reads, so the plain ``torch.onnx.export(..., dynamo=True)`` call
works; :func:`onnx_translation_table` gives them as a ``custom_translation_table`` instead. ``onnx``, ``onnxscript``
and ``onnxruntime`` (the ``deploy`` extra) are imported only inside these functions: ``import adatriton`` stays light.

Limit: each conv's columns are gathered in one piece (``rows x k*k*Cin``), where the eager torch backend goes in
chunks of :data:`~adatriton.ops.conv.MAX_GATHER_BYTES`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..runtime.extras import require

__all__ = ["ONNX_OPS", "export_onnx", "global_average_pools", "onnx_translation_table", "register_onnx_translations"]

# The ops translated here, by their qualified names ("namespace::name", ".overload" where it is not "default").
ONNX_OPS = (
    "aten::nonzero_static",
    "aten::__lshift__.Tensor",
    "adatriton::gather_conv",
    "adatriton::triton_conv",
    "adatriton::densify",
)


@functools.cache
def _translations() -> dict[str, Callable]:
    """The onnxscript functions, built once, on first use (onnxscript is imported here, not with the module)."""
    op = require("onnxscript").opset18
    values_module = require("onnxscript.values")
    Opset, TracedOnnxFunction = values_module.Opset, values_module.TracedOnnxFunction  # noqa: N806 -- class names

    # Trace-only functions: the exporter calls them on its graph values and inlines the ops they emit (standard ONNX
    # ops only), so the graph needs no custom domain at run time.
    domain = Opset("pkg.adatriton", 1)

    def as_1d(size):
        """A size the exporter gives as an int (static) or as a scalar INT64 value (symbolic), as a 1-D INT64."""
        if isinstance(size, int):
            return op.Constant(value_ints=[size])
        return op.Reshape(op.Cast(size, to=7), op.Constant(value_ints=[-1]))  # 7: INT64

    def with_zero_row(values):
        """``values (E, C)`` and a zero row ``E`` after them: what the sentinel index reads."""
        zero = op.CastLike(op.Constant(value_float=0.0), values)
        return op.Concat(values, op.Expand(zero, op.Constant(value_ints=[1, values.shape[1]])), axis=0)

    def gather_gemm(values, weight, index, groups: int):
        """``(rows, Cout)``: the taps' rows gathered (``index == E`` reads an appended zero row), then one product."""
        cout, cin_g, k, _ = weight.shape  # the weight is an initializer: static shape
        cin, taps = cin_g * groups, k * k
        if index is None:  # a plain 1x1 conv: every element reads itself
            cols = op.Reshape(values, op.Constant(value_ints=[-1, 1, cin]))
        else:  # (rows, taps, Cin): the active elements' taps only
            cols = op.Gather(with_zero_row(values), index, axis=0)
        if groups == 1:
            w = op.Reshape(op.Transpose(weight, perm=[2, 3, 1, 0]), op.Constant(value_ints=[taps * cin, cout]))
            return op.MatMul(op.Reshape(cols, op.Constant(value_ints=[-1, taps * cin])), w)
        if groups == cin == cout:  # depthwise: a multiply-add over the taps
            w = op.Transpose(op.Reshape(weight, op.Constant(value_ints=[cout, taps])), perm=[1, 0])
            return op.ReduceSum(op.Mul(cols, w), op.Constant(value_ints=[1]), keepdims=0)
        cols = op.Reshape(cols, op.Constant(value_ints=[-1, taps, groups, cin_g]))
        w = op.Reshape(weight, op.Constant(value_ints=[groups, cout // groups, cin_g, taps]))
        out = op.Einsum(cols, w, equation="etgc,goct->ego")
        return op.Reshape(out, op.Constant(value_ints=[-1, cout]))

    def nonzero_static(self, size, fill_value: int = -1):
        found = op.Transpose(op.NonZero(self), perm=[1, 0])  # (n, rank)
        rows = as_1d(size)
        shape = op.Concat(rows, op.Constant(value_ints=[len(self.shape)]), axis=0)
        pad = op.Expand(op.Constant(value_int=fill_value), shape)
        return op.Slice(op.Concat(found, pad, axis=0), op.Constant(value_ints=[0]), rows, op.Constant(value_ints=[0]))

    def lshift(self, other):
        # ONNX BitShift takes unsigned ints only; the casts keep the bits (two's complement), so this is C's <<
        shifted = op.BitShift(op.Cast(self, to=13), op.Cast(other, to=13), direction="LEFT")  # 13: UINT64
        return op.CastLike(shifted, self)

    def gather_conv(values, weight, bias, index, groups: int):
        out = gather_gemm(values, weight, index, groups)
        return out if bias is None else op.Add(out, bias)

    def triton_conv(values, weight, bias, index, groups: int, scale, residual, act: int):
        out = gather_gemm(values, weight, index, groups)  # the kernel's epilogue in its order: act(s*y + b + res)
        if scale is not None:
            out = op.Mul(out, op.CastLike(scale, out))
        if bias is not None:
            out = op.Add(out, op.CastLike(bias, out))
        if residual is not None:
            out = op.Add(out, residual)
        if act == 1:  # the kernel's activation codes: kernels.conv.ACTIVATIONS
            return op.Relu(out)
        if act == 2:
            return op.Clip(
                out, op.CastLike(op.Constant(value_float=0.0), out), op.CastLike(op.Constant(value_float=6.0), out)
            )
        if act == 3:
            return op.HardSwish(out)
        if act == 4:
            return op.Mul(out, op.Sigmoid(out))
        return out

    def densify(values, ids):
        dense = op.Gather(with_zero_row(values), ids, axis=0)  # (N, H, W, C)
        return op.Transpose(dense, perm=[0, 3, 1, 2])  # (N, C, H, W), the op's (channels-last) output

    functions = (nonzero_static, lshift, gather_conv, triton_conv, densify)
    return {name: TracedOnnxFunction(domain, fn) for name, fn in zip(ONNX_OPS, functions)}


def onnx_translation_table() -> dict[torch._ops.OpOverload, Callable]:
    """The translations as ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)`` takes them.

    Raises:
        ImportError: ``onnxscript`` is not installed (the ``deploy`` extra).
    """
    table = {}
    for name, fn in _translations().items():
        namespace, op_name = name.split("::")
        op_name, _, overload = op_name.partition(".")
        table[getattr(getattr(getattr(torch.ops, namespace), op_name), overload or "default")] = fn
    return table


def register_onnx_translations() -> None:
    """Add the translations to onnxscript's torchlib registry, from which every ``torch.onnx.export(...,
    dynamo=True)`` builds its own: after this call the plain export of an adaptive model works. Idempotent.

    Raises:
        ImportError: ``onnxscript`` is not installed (the ``deploy`` extra).
    """
    registration = require("onnxscript.function_libs.torch_lib.registration")
    for name, fn in _translations().items():
        if name not in registration.default_registry:
            registration.default_registry.register(fn, name)


def global_average_pools(model) -> int:
    """Rewrite, in place, every ``ReduceMean`` of a rank-4 tensor over its two last axes with ``keepdims`` into the
    equal ``GlobalAveragePool``: ONNX Runtime's CPU ``ReduceMean`` is slow there (ResNet-50 8->32 at 256x512: 20 ms
    for the mean of the densified ``1x2048x32x64`` features, 2 ms as ``GlobalAveragePool``; the dense network's
    mean runs on the NCHWc conv output and is fast either way). A torchvision ``AdaptiveAvgPool2d(1)`` exports as
    that ``ReduceMean``.

    Args:
        model: an ``onnx_ir.Model`` (``ONNXProgram.model``).

    Returns:
        How many nodes were rewritten.
    """
    ir = require("onnx_ir")
    done = 0
    for node in list(model.graph):
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        data, axes = node.inputs
        keepdims = node.attributes.get("keepdims")
        if axes is None or axes.const_value is None or (keepdims is not None and keepdims.as_int() != 1):
            continue
        if data.shape is None or len(data.shape) != 4 or sorted(int(a) % 4 for a in axes.const_value.numpy()) != [2, 3]:
            continue
        pool = ir.node("GlobalAveragePool", inputs=[data])
        model.graph.insert_before(node, pool)
        pool.outputs[0].shape, pool.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
        ir.convenience.replace_all_uses_with(node.outputs[0], pool.outputs[0])
        if node.outputs[0].is_graph_output():
            outputs = model.graph.outputs
            outputs[outputs.index(node.outputs[0])] = pool.outputs[0]
            pool.outputs[0].name = node.outputs[0].name
        model.graph.remove(node, safe=True)
        if axes.is_initializer() and not axes.uses() and not axes.is_graph_input():
            model.graph.initializers.pop(axes.name)  # else ONNX Runtime warns about an unused initializer
        done += 1
    return done


def export_onnx(model: torch.nn.Module, args: tuple, f=None, **kwargs):
    """``torch.onnx.export(model, args, dynamo=True, **kwargs)`` under ``torch.no_grad()`` (an inference export: the
    adaptive part's BatchNorms fold into the convs), with the translations registered first and the global mean
    pools made ``GlobalAveragePool`` nodes (:func:`global_average_pools`).

    Args:
        model: a converted model in eval mode.
        args: its inputs, e.g. ``(images, levels)`` with a :class:`~adatriton.core.levelmap.LevelMap` (its levels
            tensor becomes a graph input: any map of that grid shape runs).
        f: where to save the ``.onnx`` file, or None (``save`` it from the returned program).
        kwargs: passed to ``torch.onnx.export``.

    Returns:
        The ``torch.onnx.ONNXProgram``.
    """
    register_onnx_translations()
    with torch.no_grad():
        program = torch.onnx.export(model, args, dynamo=True, **kwargs)
    global_average_pools(program.model)
    if f is not None:
        program.save(f)
    return program
