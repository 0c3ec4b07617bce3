"""Reference names of UperNet's heads: mmseg's `UPerHead` (`decode_head.*` other than the classifier)
and `FCNHead` (`auxiliary_head.*` other than its `conv_seg`)."""

from __future__ import annotations

from ssaseg_keras.convert.ham_head import conv_norm_act_mapping
from ssaseg_keras.convert.reference import register_reference_mapping
from ssaseg_keras.models.heads.fcn_head import FCNHead
from ssaseg_keras.models.heads.uper_head import UPerHead


def _prefixed(layer, prefix):
    for name, variable, transform in conv_norm_act_mapping(layer):
        yield f"{prefix}.{name}", variable, transform


@register_reference_mapping(UPerHead)
def uper_head_mapping(layer):
    for index, module in enumerate(layer.psp_modules):  # mmseg: Sequential(AdaptiveAvgPool2d, ConvModule)
        yield from _prefixed(module, f"psp_modules.{index}.1")
    yield from _prefixed(layer.bottleneck, "bottleneck")
    for index, module in enumerate(layer.lateral_convs):
        yield from _prefixed(module, f"lateral_convs.{index}")
    for index, module in enumerate(layer.fpn_convs):
        yield from _prefixed(module, f"fpn_convs.{index}")
    yield from _prefixed(layer.fpn_bottleneck, "fpn_bottleneck")


@register_reference_mapping(FCNHead)
def fcn_head_mapping(layer):
    for index, module in enumerate(layer.convs):
        yield from _prefixed(module, f"convs.{index}")
    if layer.concat_input:
        yield from _prefixed(layer.conv_cat, "conv_cat")
