"""Reference names of ResNetV1c (mmseg `backbone.stem.*` / `backbone.layer{i}.{j}.*`, or open-mmlab's
ImageNet `resnet*_v1c` checkpoints without the prefix)."""

from __future__ import annotations

from ssaseg_keras.convert.reference import (
    conv_mapping,
    norm_mapping,
    reference_mapping,
    register_reference_mapping,
)
from ssaseg_keras.models.backbones.resnet import ResNetBottleneck, ResNetDeepStem, ResNetV1cBackbone


@register_reference_mapping(ResNetDeepStem)
def stem_mapping(layer):
    # Reference: stem = Sequential(conv, BN, ReLU, conv, BN, ReLU, conv, BN, ReLU) -> 0/1, 3/4, 6/7.
    for index, (conv, norm) in enumerate(zip(layer.convs, layer.norms)):
        yield from conv_mapping(conv, str(3 * index))
        yield from norm_mapping(norm, str(3 * index + 1))


@register_reference_mapping(ResNetBottleneck)
def bottleneck_mapping(layer):
    for index in (1, 2, 3):
        yield from conv_mapping(getattr(layer, f"conv{index}"), f"conv{index}")
        yield from norm_mapping(getattr(layer, f"bn{index}"), f"bn{index}")
    if layer.has_downsample:
        yield from conv_mapping(layer.downsample_conv, "downsample.0")
        yield from norm_mapping(layer.downsample_norm, "downsample.1")


@register_reference_mapping(ResNetV1cBackbone)
def resnet_mapping(model):
    yield from reference_mapping(model.get_layer("stem"), prefix="stem.")
    for layer, count in enumerate(model.depths, start=1):
        for block in range(count):
            yield from reference_mapping(model.get_layer(f"layer{layer}_{block}"), prefix=f"layer{layer}.{block}.")
