"""Benchmarks of adatriton: ``python -m bench [SUITE ...]`` (or ``adatriton-bench``) writes one CSV per suite, a
markdown summary with each row's time relative to the suite's dense references (OS8 / OS16) of the same run, and plots.

Suites (``python -m bench --list``): ``table2`` (the paper's Table 2: ResNet-101 + DeepLabv3 backbone, dense OS16 /
OS8 and adaptive 8->32 / 8->16 over level-0 fractions, mask sources and backends), ``models`` (ResNet-50/101/152 x
FCN / DeepLabv3 / DeepLabv3+), ``layers`` (single conv layers over densities, every backend against the dense
conv), ``keypoints`` (the D2-Net / VGG-16 trunk: dense OS1/2/4/8 and adaptive 1->8 per keypoint dilation triplet,
references OS1 / OS8), ``host`` (the host cost per adaptive conv on the CPU, Triton launches stubbed: device ops, syncs,
µs). ``python -m bench gpu-check`` runs everything that needs a GPU within 9 minutes (:mod:`bench._gpu_check`). A new
suite is one module ``bench/<name>.py`` that defines
``SUITE = Suite(name, description, run, full, quick)`` with ``run(ctx: Context) -> list[Row]``; see :mod:`bench._suite`.
"""

from ._schema import COLUMNS, HOST_COLUMNS, KEY, Row
from ._suite import Context, Options, Suite, load_suite, suite_names

__all__ = ["COLUMNS", "HOST_COLUMNS", "KEY", "Context", "Options", "Row", "Suite", "load_suite", "suite_names"]
