"""What a forward pass costs and how it runs: multiply-add counts and the per-conv dispatch report.

``explain`` is not listed here: the name would shadow its module :mod:`adatriton.analysis.explain`; it is
:func:`adatriton.explain`.
"""

from .macs import COLUMNS, D2NetMacCount, D2NetMacRow, MacCount, conv_macs, count_macs, d2net_macs, stage_element_counts

__all__ = [
    "COLUMNS",
    "D2NetMacCount",
    "D2NetMacRow",
    "MacCount",
    "conv_macs",
    "count_macs",
    "d2net_macs",
    "stage_element_counts",
]
