"""Model conversion: the one entry point that turns a torchvision model into an adaptive one."""

from __future__ import annotations

from torch import nn

from .resnet import OUTPUT_STRIDES, AdaptiveResNet

__all__ = ["convert"]


def convert(model: nn.Module, output_stride: str | int, backend: str | None = None) -> nn.Module:
    """Convert a torchvision model to run at ``output_stride``, sharing its weights.

    Args:
        model: a torchvision ``ResNet`` with bottleneck blocks (ResNet-50/101/152), any
            ``replace_stride_with_dilation``.
        output_stride: ``"8"``, ``"16"``, ``"32"`` (dense networks) or ``"8->16"``, ``"8->32"``, ``"16->32"``
            (adaptive: finest grid at the first stride, downsampled by a level map towards the second).
        backend: conv backend of the adaptive part (``"torch"`` or ``"dense"``); None resolves per call
            (``adatriton.use_backend``, ``$ADATRITON_BACKEND``, else ``"torch"``).

    Returns:
        A module with the same state_dict keys and shared parameters, whose ``forward(x, levels)`` takes the
        image batch ``(N, 3, H, W)`` and a level map (``LevelMap`` or integer tensor ``(N, Hf, Wf)`` on the finest
        grid; optional for dense strides) and returns what the model returns.

    Example:
        >>> net = adatriton.convert(torchvision.models.resnet101(), "8->32").eval()
        >>> logits = net(images, levels)          # levels: (N, H/8, W/8) with values in {0, 1, 2}
    """
    from torchvision.models import ResNet

    if isinstance(model, ResNet):
        return AdaptiveResNet(model, output_stride, backend)
    raise TypeError(
        f"convert supports torchvision ResNet models, got {type(model).__name__}; "
        f"output strides: {list(OUTPUT_STRIDES)}"
    )
