"""Converters from the reference implementation's checkpoints (PyTorch, mmseg 0.30 layout)."""

from ssaseg_keras.convert import afformer as _afformer_mappings  # noqa: F401  (registers mappings)
from ssaseg_keras.convert import cgrseg as _cgrseg_mappings  # noqa: F401
from ssaseg_keras.convert import ham_head as _ham_head_mappings  # noqa: F401
from ssaseg_keras.convert import hrnet as _hrnet_mappings  # noqa: F401
from ssaseg_keras.convert import keras_cv_pyramid as _keras_cv_mappings  # noqa: F401
from ssaseg_keras.convert import keras_hub_pyramid as _keras_hub_mappings  # noqa: F401
from ssaseg_keras.convert import mscan as _mscan_mappings  # noqa: F401
from ssaseg_keras.convert import ocrnet as _ocrnet_mappings  # noqa: F401
from ssaseg_keras.convert import resnet as _resnet_mappings  # noqa: F401
from ssaseg_keras.convert import seaformer as _seaformer_mappings  # noqa: F401
from ssaseg_keras.convert import segformer as _segformer_mappings  # noqa: F401
from ssaseg_keras.convert import segmentor as _segmentor_mappings  # noqa: F401
from ssaseg_keras.convert import ssa as _ssa_mappings  # noqa: F401  (registers the SSA mapping)
from ssaseg_keras.convert import swin as _swin_mappings  # noqa: F401
from ssaseg_keras.convert import upernet as _upernet_mappings  # noqa: F401
from ssaseg_keras.convert.checkpoint import (
    convert_checkpoint,
    load_pretrained_backbone,
    read_torch_checkpoint,
)
from ssaseg_keras.convert.reference import (
    LoadReport,
    ReferenceWeightsError,
    conv_kernel,
    conv_mapping,
    counts_by_part,
    dense_mapping,
    depthwise_kernel,
    identity,
    linear_kernel,
    load_reference_weights,
    norm_mapping,
    pointwise_as_dense,
    reference_mapping,
    reference_unused,
    register_reference_mapping,
    register_reference_unused,
)

__all__ = [
    "LoadReport",
    "ReferenceWeightsError",
    "conv_kernel",
    "convert_checkpoint",
    "counts_by_part",
    "load_pretrained_backbone",
    "read_torch_checkpoint",
    "conv_mapping",
    "dense_mapping",
    "depthwise_kernel",
    "identity",
    "linear_kernel",
    "load_reference_weights",
    "norm_mapping",
    "pointwise_as_dense",
    "reference_mapping",
    "reference_unused",
    "register_reference_mapping",
    "register_reference_unused",
]
