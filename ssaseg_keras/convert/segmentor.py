"""Reference names of a whole segmentor: `backbone.*`, `decode_head.*` (head + classifier) and
`auxiliary_head.*` (mmseg: `auxiliary_head.` for one auxiliary head, `auxiliary_head.<i>.` for a list)."""

from __future__ import annotations

from ssaseg_keras.convert.reference import (
    dense_mapping,
    reference_mapping,
    register_reference_mapping,
)
from ssaseg_keras.models.heads.auxiliary import AuxiliaryHead
from ssaseg_keras.models.segmentor import PixelClassifier, Segmentor


@register_reference_mapping(PixelClassifier)
def pixel_classifier_mapping(layer):
    yield from dense_mapping(layer.conv_seg, "conv_seg", conv1x1=True)


@register_reference_mapping(Segmentor)
def segmentor_mapping(model):
    # mmseg keeps the classifier inside the decode head: both live under `decode_head.`.
    yield from reference_mapping(model.backbone, prefix="backbone.")
    head = "decode_head."
    if model.region_head is not None:  # a cascade (OCRNet): `decode_head.0.*` then `decode_head.1.*`
        yield from reference_mapping(model.region_head, prefix="decode_head.0.")
        head = "decode_head.1."
    yield from reference_mapping(model.decode_head, prefix=head)
    yield from reference_mapping(model.classifier, prefix=head)
    heads = model.auxiliary_heads
    for index, head in enumerate(heads):
        yield from reference_mapping(head, prefix="auxiliary_head." if len(heads) == 1 else f"auxiliary_head.{index}.")


@register_reference_mapping(AuxiliaryHead)
def auxiliary_head_mapping(layer):
    # mmseg keeps the auxiliary classifier inside the auxiliary head, like the decode head's.
    yield from reference_mapping(layer.head)
    yield from reference_mapping(layer.classifier)
