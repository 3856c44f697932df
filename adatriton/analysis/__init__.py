"""What a forward pass costs and how it runs: multiply-add counts and the per-conv dispatch report.

``explain`` is not listed here: the name would shadow its module :mod:`adatriton.analysis.explain`; it is
:func:`adatriton.explain`.
"""

from .macs import COLUMNS, MacCount, conv_macs, count_macs, stage_element_counts

__all__ = ["COLUMNS", "MacCount", "conv_macs", "count_macs", "stage_element_counts"]
