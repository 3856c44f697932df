"""How every conv of one forward pass was computed: :func:`explain`, one row per conv call."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..models.graph.module import ConvCallRecorder
from ..ops.dispatch import recording
from ..runtime.extras import require
from .macs import conv_macs

__all__ = ["explain"]


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

    # Dense convs (module and functional calls alike: a functional F.conv2d on a module's weight escapes module hooks);
    # the dense backend of an adaptive conv calls conv2d too, on a weight select() has just recorded.
    with recording(_Collect()), torch.inference_mode(), ConvCallRecorder(names, rows, skip=adaptive_ids):
        model(x, levels)
    dense = {"stage": None, "fractions": None, "density": 1.0, "backend": "dense network", "reason": "not adaptive"}
    rows = [r if r["adaptive"] else {**r, **dense, "MAs": r["per_output"] * r["elements"]} for r in rows]
    return pd.DataFrame([r for r in rows if r.get("op") != "linear"], columns=_COLUMNS)
