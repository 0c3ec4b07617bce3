"""Reference names of OCRNet's OCR head (mmseg `decode_head.1.*` other than the classifier; the FCN
stage `decode_head.0.*` maps through the FCNHead mapping, see `convert.segmentor`)."""

from __future__ import annotations

from ssaseg_keras.convert.ham_head import conv_norm_act_mapping
from ssaseg_keras.convert.reference import register_reference_mapping
from ssaseg_keras.models.heads.ocr_head import ObjectAttentionBlock, OCRHead


def _modules(modules, name):
    # mmseg keeps a projection of several ConvModules as a Sequential (`name.i.conv`), of one as the
    # ConvModule itself (`name.conv`).
    for index, module in enumerate(modules):
        prefix = f"{name}.{index}" if len(modules) > 1 else name
        for key, variable, transform in conv_norm_act_mapping(module):
            yield f"{prefix}.{key}", variable, transform


@register_reference_mapping(ObjectAttentionBlock)
def object_attention_mapping(layer):
    for name in ("query_project", "key_project", "value_project", "out_project", "bottleneck"):
        yield from _modules(getattr(layer, name), name)


@register_reference_mapping(OCRHead)
def ocr_head_mapping(layer):
    yield from _modules([layer.bottleneck], "bottleneck")
    for key, variable, transform in object_attention_mapping(layer.object_context_block):
        yield f"object_context_block.{key}", variable, transform
