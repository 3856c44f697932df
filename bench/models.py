"""``models``: whole segmentation models (backbone, heads, upsampling), ResNet-50 / 101 / 152 x FCN / DeepLabv3 /
DeepLabv3+, dense OS16 and OS8 against adaptive 8->32 at level-0 fraction 0.3 (clustered synthetic mask) through
the per-layer dispatcher. The plot is a grouped bar chart (one group per model, median time with min–max error bars).

Full run: 1024x2048, 10 + 10 calls. ``--quick``: 128x256, 1 + 5 calls.
"""

from __future__ import annotations

from ._networks import run_networks
from ._report import plot_bars
from ._suite import Context, Suite

__all__ = ["SUITE", "run"]

DENSE_STRIDES = ("16", "8")


def run(ctx: Context) -> list:
    """Measure every (backbone, head) pair's rows (see the module docstring): the whole model."""
    return run_networks(ctx, "model", DENSE_STRIDES)


_COMMON = {
    "fractions": (0.3,),
    "backbones": ("resnet50", "resnet101", "resnet152"),
    "heads": ("fcn", "deeplabv3", "deeplabv3plus"),
    "conversions": ("8->32",),
    "masks": ("synthetic",),
    "backends": ("auto",),
}

SUITE = Suite(
    name="models",
    description="ResNet-50/101/152 x FCN/DeepLabv3/DeepLabv3+ whole models: dense OS16/OS8 vs adaptive 8->32",
    run=run,
    full={"size": (1024, 2048), "warmup": 10, "iters": 10, **_COMMON},
    quick={"size": (128, 256), "warmup": 1, "iters": 5, **_COMMON},
    plot=plot_bars,
)
