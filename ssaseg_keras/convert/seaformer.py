"""Reference names of SeaFormer (`backbone.smb{i}.*` / `backbone.trans{i}.*`, or a SeaFormer ImageNet
checkpoint without the prefix) and of its LightHead (the `decode_head.*` keys other than the classifier's:
`fuse{i}.*`, `linear_fuse.*`; the classifier's `conv_seg` and SSA names map through SSAClassifier)."""

from __future__ import annotations

import numpy as np

from ssaseg_keras.convert.ham_head import conv_norm_act_mapping
from ssaseg_keras.convert.reference import (
    conv_mapping,
    norm_mapping,
    reference_mapping,
    register_reference_mapping,
)
from ssaseg_keras.models.backbones.seaformer import (
    SeaAttention,
    SeaFormerBackbone,
    SeaFormerBlock,
    SeaFormerConvBN,
    SeaFormerInvertedResidual,
    SeaFormerMlp,
)
from ssaseg_keras.models.heads.light_head import LightHead, SeaFormerFusionBlock


def position_table(array):
    """The reference's axial position embedding (1, C, 16) -> our (16, C) table."""
    return np.transpose(array[0])


@register_reference_mapping(SeaFormerConvBN)
def conv_bn_mapping(layer):
    # Conv2d_BN = Sequential(c=Conv2d, bn=BatchNorm).
    yield from conv_mapping(layer.c, "c")
    yield from norm_mapping(layer.bn, "bn")


@register_reference_mapping(SeaFormerInvertedResidual)
def inverted_residual_mapping(layer):
    # `conv` is a Sequential whose indices count the activations: (expand, act,) dw, act, project.
    parts = ([layer.expand] if layer.has_expand else []) + [layer.depthwise, layer.project]
    for index, part in enumerate(parts):
        yield from reference_mapping(part, prefix=f"conv.{2 * index}.")


@register_reference_mapping(SeaAttention)
def sea_attention_mapping(layer):
    for name in ("to_q", "to_k", "to_v", "dwconv", "pwconv"):
        yield from reference_mapping(getattr(layer, name), prefix=f"{name}.")
    # proj* = Sequential(activation, Conv2d_BN).
    for name in ("proj", "proj_encode_row", "proj_encode_column"):
        yield from reference_mapping(getattr(layer, name), prefix=f"{name}.1.")
    for name in ("pos_emb_rowq", "pos_emb_rowk", "pos_emb_columnq", "pos_emb_columnk"):
        yield f"{name}.pos_embed", getattr(layer, name), position_table


@register_reference_mapping(SeaFormerMlp)
def mlp_mapping(layer):
    yield from reference_mapping(layer.fc1, prefix="fc1.")
    yield from conv_mapping(layer.dwconv, "dwconv")
    yield from reference_mapping(layer.fc2, prefix="fc2.")


@register_reference_mapping(SeaFormerBlock)
def block_mapping(layer):
    yield from reference_mapping(layer.attn, prefix="attn.")
    yield from reference_mapping(layer.mlp, prefix="mlp.")


@register_reference_mapping(SeaFormerBackbone)
def seaformer_mapping(model):
    for layer in model.layers:
        name = layer.name
        if name == "smb1_stem":
            yield from reference_mapping(layer, prefix="smb1.stem_block.0.")
        elif name.startswith("smb"):
            stage, _, block = name.partition("_")
            yield from reference_mapping(layer, prefix=f"{stage}.{block}.")
        elif name.startswith("trans"):
            stage, _, index = name.partition("_")
            yield from reference_mapping(layer, prefix=f"{stage}.transformer_blocks.{index}.")


@register_reference_mapping(SeaFormerFusionBlock)
def fusion_block_mapping(layer):
    for name in ("local_embedding", "global_act"):
        for key, variable, transform in conv_norm_act_mapping(getattr(layer, name)):
            yield f"{name}.{key}", variable, transform


@register_reference_mapping(LightHead)
def light_head_mapping(layer):
    for index, fuse in enumerate(layer.fuses, start=1):
        yield from reference_mapping(fuse, prefix=f"fuse{index}.")
    # linear_fuse: ConvModule(conv (depthwise when is_dw), bn, ReLU).
    yield from conv_mapping(layer.linear_fuse_conv, "linear_fuse.conv")
    yield from norm_mapping(layer.linear_fuse_bn, "linear_fuse.bn")
