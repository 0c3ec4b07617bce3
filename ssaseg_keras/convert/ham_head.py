"""Reference names of SegNeXt's LightHamHead (the `decode_head.*` keys other than the classifier's)."""

from __future__ import annotations

from ssaseg_keras.convert.reference import (
    conv_mapping,
    norm_mapping,
    register_reference_mapping,
)
from ssaseg_keras.models.heads.common import ConvNormAct
from ssaseg_keras.models.heads.ham_head import LightHamHead


@register_reference_mapping(ConvNormAct)
def conv_norm_act_mapping(layer):
    # mmcv ConvModule: `conv` then `gn` (GroupNorm) or `bn` (BatchNorm).
    yield from conv_mapping(layer.conv, "conv")
    yield from norm_mapping(layer.norm_layer, "gn" if layer.norm == "group" else "bn")


@register_reference_mapping(LightHamHead)
def light_ham_head_mapping(layer):
    for name, variable, transform in conv_norm_act_mapping(layer.squeeze):
        yield f"squeeze.{name}", variable, transform
    # ham_in is a ConvModule without norm or activation: `conv` with bias.
    yield from conv_mapping(layer.hamburger.ham_in, "hamburger.ham_in.conv")
    for name, variable, transform in conv_norm_act_mapping(layer.hamburger.ham_out):
        yield f"hamburger.ham_out.{name}", variable, transform
    for name, variable, transform in conv_norm_act_mapping(layer.align):
        yield f"align.{name}", variable, transform
