"""Segmentation models: backbones, decode heads and the segmentor that joins them to a classifier.

`build_segmentor(model_config)` builds the network of a recipe's `model:` section;
`build_image_segmenter(recipe)` / `ImageSegmenter.from_preset(name)` the task around it (preprocessor,
inference settings, presets); `with_ssa(keras_hub_segmenter)` puts SSA-Seg into a keras-hub segmenter.
"""

# Importing the parts registers them as Keras-serializable, so `.keras` files load in a fresh process.
from ssaseg_keras.models.backbones.hrnet import HRNetBackbone
from ssaseg_keras.models.backbones.mit import (  # keras-cv/hub imported lazily
    MiTBackbone,
    MiTFeatures,
)
from ssaseg_keras.models.backbones.mscan import MSCANBackbone
from ssaseg_keras.models.backbones.resnet import ResNetV1cBackbone
from ssaseg_keras.models.builder import build_image_segmenter, build_segmentor, model_summary_counts
from ssaseg_keras.models.heads.auxiliary import AuxiliaryHead
from ssaseg_keras.models.heads.fcn_head import FCNHead
from ssaseg_keras.models.heads.ham_head import LightHamHead
from ssaseg_keras.models.heads.ocr_head import OCRHead
from ssaseg_keras.models.heads.segformer_head import SegFormerHead
from ssaseg_keras.models.heads.uper_head import UPerHead
from ssaseg_keras.models.keras_hub_ssa import SelectFeature, with_ssa
from ssaseg_keras.models.preprocessing import ImageConverter, ImageSegmenterPreprocessor
from ssaseg_keras.models.presets import FAMILIES, PRESETS
from ssaseg_keras.models.segmentor import (
    PixelClassifier,
    Segmentor,
    has_auxiliary_heads,
    has_teacher,
    inference_model,
)
from ssaseg_keras.models.task import ImageSegmenter

__all__ = [
    "AuxiliaryHead",
    "FAMILIES",
    "FCNHead",
    "HRNetBackbone",
    "ImageConverter",
    "ImageSegmenter",
    "ImageSegmenterPreprocessor",
    "LightHamHead",
    "MSCANBackbone",
    "MiTBackbone",
    "MiTFeatures",
    "OCRHead",
    "PRESETS",
    "PixelClassifier",
    "ResNetV1cBackbone",
    "SegFormerHead",
    "SelectFeature",
    "Segmentor",
    "UPerHead",
    "build_image_segmenter",
    "build_segmentor",
    "has_auxiliary_heads",
    "has_teacher",
    "inference_model",
    "model_summary_counts",
    "with_ssa",
]
