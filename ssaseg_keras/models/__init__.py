"""Segmentation models: backbones, decode heads and the segmentor that joins them to a classifier.

`build_segmentor(model_config)` builds a model from a recipe's `model:` section.
"""

from ssaseg_keras.models.builder import build_segmentor, model_summary_counts
from ssaseg_keras.models.presets import FAMILIES, PRESETS
from ssaseg_keras.models.segmentor import (
    PixelClassifier,
    Segmentor,
    has_teacher,
    inference_model,
)

__all__ = [
    "FAMILIES",
    "PRESETS",
    "PixelClassifier",
    "Segmentor",
    "build_segmentor",
    "has_teacher",
    "inference_model",
    "model_summary_counts",
]
