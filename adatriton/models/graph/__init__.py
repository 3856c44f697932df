"""Any CNN: conversion by rewriting the model's ``torch.fx`` graph (docs/semantics.md §8).

:func:`convert_graph` traces a model symbolically, runs the traced graph once on ``meta`` tensors to learn every
value's output stride, and writes a new graph in which

- everything up to the first layer that would take the stride past the finest output stride ``a`` runs as the dense
  network (the original nodes, unchanged);
- the dense features at stride ``a`` enter a :class:`~adatriton.core.multires.MultiResMap` (one
  :class:`~adatriton.core.levelmap.LevelMap` per call), and from there every node runs on the map: a stride-2 layer
  is an adaptive downsampling step (a conv computes the survivors, top-left; a 2x2 max / average pool merges by
  the max / the mean), every spatial layer gets the tap spacing it has in the dense dilated network, per-element
  ops act on the element values, global pooling weighs every element by its area;
- where a dense tensor is needed (a head, an upsampling decoder, an op the converter does not know) the map is
  densified on the finest grid, once per value, and the rest of the graph runs as the dense network at stride
  ``a`` (the dilated one), so a uniform level-0 map gives exactly that network.

The converted module (:class:`AdaptiveGraphModule`) holds the model's own children, so parameters and state_dict
keys are shared, and its ``forward(*inputs, levels)`` is Python code generated from the rewritten graph: readable
(``print(net.code)``), differentiable, and traceable by ``torch.compile`` without graph breaks once the level map's
index tables exist.

The package's modules are its strata: :mod:`~adatriton.models.graph.rules` (what the converter accepts),
:mod:`~adatriton.models.graph.mapops` (the ops on maps the generated forward calls),
:mod:`~adatriton.models.graph.converter` (tracing and writing the converted graph) and
:mod:`~adatriton.models.graph.module` (the converted module). The package lists only what users call; the strata's
own names are internal.
"""

from .module import AdaptiveGraphModule, conv_calls, convert_graph
from .rules import UNSUPPORTED, GraphConversionError, NodePlan, parse_graph_output_stride

__all__ = [
    "AdaptiveGraphModule",
    "GraphConversionError",
    "NodePlan",
    "UNSUPPORTED",
    "conv_calls",
    "convert_graph",
    "parse_graph_output_stride",
]
