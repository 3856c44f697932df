"""The D2-Net / VGG-16 case study in one namespace: the trunk (:mod:`adatriton.models.d2net`), its checkpoint loader
(:mod:`adatriton.models.checkpoints`), its multiply-adds (:mod:`adatriton.analysis.macs`) and matching
(:mod:`adatriton.eval.matching`)."""

from .analysis.macs import D2NetMacCount as MacCount
from .analysis.macs import D2NetMacRow as MacRow
from .analysis.macs import d2net_macs as count_macs
from .eval.matching import keypoint_describer, match_mutual_nn
from .models.checkpoints import load_d2net_state_dict
from .models.d2net import (
    ADAPTIVE_STRIDE,
    CAFFE_MEAN_BGR,
    DENSE_STRIDES,
    NUM_POOLS,
    VGG16_CONFIG,
    D2Net,
    D2NetCheckpointError,
    D2NetInputError,
    preprocess,
    sample_descriptors,
    vgg_features,
)

__all__ = [
    "ADAPTIVE_STRIDE",
    "CAFFE_MEAN_BGR",
    "D2Net",
    "D2NetCheckpointError",
    "D2NetInputError",
    "DENSE_STRIDES",
    "MacCount",
    "MacRow",
    "NUM_POOLS",
    "VGG16_CONFIG",
    "count_macs",
    "keypoint_describer",
    "load_d2net_state_dict",
    "match_mutual_nn",
    "preprocess",
    "sample_descriptors",
    "vgg_features",
]
