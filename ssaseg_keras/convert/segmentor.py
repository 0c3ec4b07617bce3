"""Reference names of a whole segmentor: `backbone.*` and `decode_head.*` (head + classifier)."""

from __future__ import annotations

from ssaseg_keras.convert.reference import (
    dense_mapping,
    reference_mapping,
    register_reference_mapping,
)
from ssaseg_keras.models.segmentor import PixelClassifier, Segmentor


@register_reference_mapping(PixelClassifier)
def pixel_classifier_mapping(layer):
    yield from dense_mapping(layer.conv_seg, "conv_seg", conv1x1=True)


@register_reference_mapping(Segmentor)
def segmentor_mapping(model):
    # mmseg keeps the classifier inside the decode head: both live under `decode_head.`.
    yield from reference_mapping(model.backbone, prefix="backbone.")
    yield from reference_mapping(model.decode_head, prefix="decode_head.")
    yield from reference_mapping(model.classifier, prefix="decode_head.")
