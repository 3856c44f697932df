"""Models: adaptive ResNets, segmentation models, the learned-mask model, the D2-Net trunk, checkpoint loaders, the
``torch.fx`` graph path, and :func:`~adatriton.models.convert.convert`.

``convert`` is not listed here: the name would shadow its module :mod:`adatriton.models.convert`; it is
:func:`adatriton.convert`.
"""

from .attach import attach_mask, attached_levels, mask_source_of
from .checkpoints import (
    BN_PATHS,
    CheckpointError,
    D2NetCheckpointError,
    dilate_head,
    load_authors_state_dict,
    load_d2net_state_dict,
    read_checkpoint,
)
from .convert import ConversionProblem, ConversionWarning, coarsest_level_macs
from .d2net import (
    ADAPTIVE_STRIDE,
    CAFFE_MEAN_BGR,
    D2NET_PREFIX,
    DENSE_STRIDES,
    NUM_POOLS,
    VGG16_CONFIG,
    D2Net,
    D2NetInputError,
    preprocess,
    sample_descriptors,
    vgg_features,
)
from .graph import (
    UNSUPPORTED,
    AdaptiveGraphModule,
    GraphConversionError,
    NodePlan,
    conv_calls,
    convert_graph,
    parse_graph_output_stride,
)
from .learned import LearnedMaskModel
from .resnet import LAYERS, OUTPUT_STRIDES, STEM, AdaptiveResNet, graph_source, is_bottleneck_resnet, restrided
from .segmentation import (
    BACKBONES,
    AdaptiveSegmentationModel,
    DeepLabHeadV3Plus,
    DeepLabV3Plus,
    deeplabv3,
    deeplabv3plus,
    fcn,
    segmentation_heads,
)

__all__ = [
    "ConversionProblem",
    "ConversionWarning",
    "coarsest_level_macs",
    "ADAPTIVE_STRIDE",
    "AdaptiveGraphModule",
    "AdaptiveResNet",
    "AdaptiveSegmentationModel",
    "BACKBONES",
    "BN_PATHS",
    "CAFFE_MEAN_BGR",
    "CheckpointError",
    "D2NET_PREFIX",
    "D2Net",
    "D2NetCheckpointError",
    "D2NetInputError",
    "DENSE_STRIDES",
    "DeepLabHeadV3Plus",
    "DeepLabV3Plus",
    "GraphConversionError",
    "LAYERS",
    "LearnedMaskModel",
    "NUM_POOLS",
    "NodePlan",
    "OUTPUT_STRIDES",
    "STEM",
    "UNSUPPORTED",
    "VGG16_CONFIG",
    "attach_mask",
    "attached_levels",
    "conv_calls",
    "convert_graph",
    "deeplabv3",
    "deeplabv3plus",
    "dilate_head",
    "fcn",
    "graph_source",
    "is_bottleneck_resnet",
    "restrided",
    "load_authors_state_dict",
    "load_d2net_state_dict",
    "mask_source_of",
    "parse_graph_output_stride",
    "preprocess",
    "read_checkpoint",
    "sample_descriptors",
    "segmentation_heads",
    "vgg_features",
]
