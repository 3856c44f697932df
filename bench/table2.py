"""``table2``: the paper's Table 2 on this machine. ResNet-101 + DeepLabv3 backbone (stem .. layer4, densified),
dense OS16 and OS8, and adaptive 8->32 and 8->16 at level-0 fractions 0.1 / 0.2 / 0.3 / 0.5 / 0.7, each with a
clustered synthetic mask and with the Sobel edge mask of a bundled photograph (threshold searched for the
fraction), each through the per-layer dispatcher (``auto``) and each forced backend; the triton backend once more
with the weights in the other memory format (``scenario`` ``nchw_weights``: as ``adatriton.convert`` leaves a
torchvision model's, next to the channels-last run's), so a cliff between the two shows.

Full run: 1024x2048, 10 warm-up + 10 timed calls (the paper's protocol). ``--quick``: 256x512, fractions 0.1 / 0.3 /
0.5, 1 + 5 calls (fewer would mark every verdict noisy): minutes on 2 CPU cores.
"""

from __future__ import annotations

from ._networks import run_networks
from ._suite import Context, Suite

__all__ = ["SUITE", "run"]

#: Dense references of every run: OS8 (the speedups' reference) and OS16.
DENSE_STRIDES = ("16", "8")


def run(ctx: Context) -> list:
    """Every (backbone, head) pair's rows (see the module docstring), timing the densified backbone."""
    return run_networks(ctx, "backbone", DENSE_STRIDES, weight_rows=True)


SUITE = Suite(
    name="table2",
    description="ResNet-101 + DeepLabv3 backbone: dense OS16/OS8 vs adaptive 8->32 and 8->16 over level-0 "
    "fractions, synthetic and edge masks, dispatcher and every backend",
    run=run,
    full={
        "size": (1024, 2048),
        "warmup": 10,
        "iters": 10,
        "fractions": (0.1, 0.2, 0.3, 0.5, 0.7),
        "backbones": ("resnet101",),
        "heads": ("deeplabv3",),
        "conversions": ("8->32", "8->16"),
        "masks": ("synthetic", "edges"),
        "backends": ("auto", "torch", "dense", "triton"),
    },
    quick={
        "size": (256, 512),
        "warmup": 1,
        "iters": 5,
        "fractions": (0.1, 0.3, 0.5),
        "backbones": ("resnet101",),
        "heads": ("deeplabv3",),
        "conversions": ("8->32", "8->16"),
        "masks": ("synthetic", "edges"),
        "backends": ("auto", "torch", "dense", "triton"),
    },
)
