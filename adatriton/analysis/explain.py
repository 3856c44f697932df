"""How every conv of one forward pass was computed: :func:`explain`, one row per conv call."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..ops.dispatch import recording
from ..runtime.extras import require
from .macs import conv_macs

__all__ = ["explain"]


def _conv_mode(rows: list[dict[str, Any]], names: dict[int, str], adaptive_ids: set[int]):
    """A TorchFunctionMode that records every dense ``conv2d`` on the model's weights (module and functional
    calls alike: a functional ``F.conv2d`` on a module's weight would escape module hooks)."""

    class _Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.conv2d and len(args) >= 2:
                weight = args[1]
                # The dense backend of an adaptive conv also calls conv2d, on a weight the recorder has seen.
                if id(weight) in names and id(weight) not in adaptive_ids:
                    groups = args[6] if len(args) > 6 else (kwargs or {}).get("groups", 1)
                    dil = args[5] if len(args) > 5 else (kwargs or {}).get("dilation", 1)
                    dil = dil[0] if isinstance(dil, (tuple, list)) else dil
                    n, cout, ho, wo = out.shape
                    elements = n * ho * wo
                    rows.append(
                        {
                            "layer": names[id(weight)],
                            "adaptive": False,
                            "stage": None,
                            "fractions": None,
                            "cin": int(args[0].shape[1]),
                            "cout": int(cout),
                            "k": int(weight.shape[-1]),
                            "spacing": int(dil),
                            "groups": int(groups),
                            "downsample": False,
                            "elements": int(elements),
                            "density": 1.0,
                            "backend": "dense network",
                            "reason": "not adaptive: plain torch conv2d",
                            "MAs": conv_macs(weight.shape[-1], args[0].shape[1], cout, groups, elements),
                        }
                    )
            return out

    return _Mode()


_COLUMNS = [
    "layer",
    "adaptive",
    "stage",
    "fractions",
    "cin",
    "cout",
    "k",
    "spacing",
    "groups",
    "downsample",
    "elements",
    "density",
    "backend",
    "reason",
    "MAs",
]


def explain(model: nn.Module, x: Tensor, levels: Any = None):
    """Run ``model(x, levels)`` once (inference mode) and report how every conv was computed.

    Args:
        model: a converted model (:func:`adatriton.convert`).
        x: image batch.
        levels: its level map (see the model's ``forward``).

    Returns:
        A ``pandas.DataFrame``, one row per conv call in execution order: ``layer`` (parameter name without
        ``.weight``), ``adaptive``, ``stage`` (downsamplings done before the conv), ``fractions`` (area fraction
        per level at that stage, levels >= stage merged), ``cin``, ``cout``, ``k``, ``spacing``, ``groups``,
        ``downsample``, ``elements`` (outputs computed), ``density`` (elements / finest-grid pixels), ``backend``
        and ``reason``, ``MAs`` (multiply-adds: ``k*k*Cin/groups*Cout*elements``). Dense convs (stem, layers
        above the finest grid, heads) have ``adaptive=False`` and backend ``"dense network"``.
    """
    pd = require("pandas")

    names = {id(p): n.removesuffix(".weight") for n, p in model.named_parameters()}
    rows: list[dict[str, Any]] = []
    adaptive_ids: set[int] = set()
    fractions: dict[int, list[float]] = {}

    class _Collect(list):
        # select() appends here: turn each record into a row at once so rows keep the execution order.
        def append(self, rec):
            adaptive_ids.add(rec["weight_id"])
            lm, stage, sig = rec["levelmap"], rec["stage"], rec["signature"]
            if id(lm) not in fractions:
                fractions[id(lm)] = lm.fractions().tolist()
            fr = fractions[id(lm)]
            rows.append(
                {
                    "layer": names.get(rec["weight_id"], "?"),
                    "adaptive": True,
                    "stage": stage,
                    "fractions": [round(f, 6) for f in fr[:stage] + [sum(fr[stage:])]],
                    "cin": sig.cin,
                    "cout": sig.cout,
                    "k": sig.k,
                    "spacing": sig.spacing,
                    "groups": sig.groups,
                    "downsample": rec["downsample"],
                    "elements": rec["elements"],
                    "density": rec["density"],
                    "backend": rec["backend"],
                    "reason": rec["reason"],
                    "MAs": conv_macs(sig.k, sig.cin, sig.cout, sig.groups, rec["elements"]),
                }
            )

    with recording(_Collect()), torch.inference_mode(), _conv_mode(rows, names, adaptive_ids):
        model(x, levels)
    return pd.DataFrame(rows, columns=_COLUMNS)
