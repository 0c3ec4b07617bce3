"""Reference names of MSCAN (mmseg 0.30 `backbone.*`, or an MSCAN ImageNet checkpoint without prefix)."""

from __future__ import annotations

from ssaseg_keras.convert.reference import (
    conv_mapping,
    identity,
    norm_mapping,
    reference_mapping,
    register_reference_mapping,
)
from ssaseg_keras.models.backbones.mscan import (
    MSCANBackbone,
    MSCANBlock,
    MSCANDownsample,
    MSCANStem,
)


@register_reference_mapping(MSCANStem)
def stem_mapping(layer):
    # Reference: proj = Sequential(Conv2d, BN, GELU, Conv2d, BN) -> indices 0, 1, 3, 4.
    yield from conv_mapping(layer.conv1, "proj.0")
    yield from norm_mapping(layer.norm1, "proj.1")
    yield from conv_mapping(layer.conv2, "proj.3")
    yield from norm_mapping(layer.norm2, "proj.4")


@register_reference_mapping(MSCANDownsample)
def downsample_mapping(layer):
    yield from conv_mapping(layer.conv, "proj")
    yield from norm_mapping(layer.norm, "norm")


@register_reference_mapping(MSCANBlock)
def block_mapping(layer):
    yield "layer_scale_1", layer.layer_scale_1, identity
    yield "layer_scale_2", layer.layer_scale_2, identity
    yield from norm_mapping(layer.norm1, "norm1")
    attn = layer.attn
    yield from conv_mapping(attn.proj_1, "attn.proj_1")
    gating = attn.gating
    yield from conv_mapping(gating.conv0, "attn.spatial_gating_unit.conv0")
    for index, conv in enumerate(gating.strip_convs):
        yield from conv_mapping(conv, f"attn.spatial_gating_unit.conv{index // 2}_{index % 2 + 1}")
    yield from conv_mapping(gating.conv3, "attn.spatial_gating_unit.conv3")
    yield from conv_mapping(attn.proj_2, "attn.proj_2")
    yield from norm_mapping(layer.norm2, "norm2")
    yield from conv_mapping(layer.mlp.fc1, "mlp.fc1")
    yield from conv_mapping(layer.mlp.dwconv, "mlp.dwconv.dwconv")
    yield from conv_mapping(layer.mlp.fc2, "mlp.fc2")


@register_reference_mapping(MSCANBackbone)
def mscan_mapping(model):
    for stage, depth in enumerate(model.depths, start=1):
        yield from reference_mapping(model.get_layer(f"patch_embed{stage}"), prefix=f"patch_embed{stage}.")
        for j in range(depth):
            yield from reference_mapping(model.get_layer(f"block{stage}_{j}"), prefix=f"block{stage}.{j}.")
        yield from norm_mapping(model.get_layer(f"norm{stage}"), f"norm{stage}")
