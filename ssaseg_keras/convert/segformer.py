"""Reference names of SegFormer: mmseg's `MixVisionTransformer` (`backbone.*`) and `SegformerHead`.

mmseg keeps a stage as `layers.i` = [patch embedding, blocks, norm]; a block's attention is torch's
`nn.MultiheadAttention`, whose `in_proj_weight` (3C, C) stacks the query, key and value projections
that the Keras MiT holds as three Dense layers (sliced here); Mix-FFN's layers are 1x1 conv,
3x3 depthwise conv, GELU, dropout, 1x1 conv (indices 0, 1, 4).
"""

from __future__ import annotations

import os

from ssaseg_keras.convert.ham_head import conv_norm_act_mapping
from ssaseg_keras.convert.reference import (
    LoadReport,
    conv_mapping,
    dense_mapping,
    linear_kernel,
    norm_mapping,
    reference_mapping,
    register_reference_mapping,
)
from ssaseg_keras.models.backbones.mit import (
    BUILD_SHAPE,
    MiTBackbone,
    import_library,
    library_stages,
)
from ssaseg_keras.models.heads.segformer_head import SegFormerHead
from ssaseg_keras.utils.errors import CheckpointError, UserError


def _in_proj_part(part, kernel):
    """Transform taking the query (0), key (1) or value (2) rows of `in_proj_weight` / `in_proj_bias`."""

    def transform(array):
        width = array.shape[0] // 3
        rows = array[part * width : (part + 1) * width]
        return linear_kernel(rows) if kernel else rows

    return transform


def _attention_mapping(attn, prefix):
    for part, dense in enumerate((attn.q, attn.k, attn.v)):
        yield f"{prefix}attn.attn.in_proj_weight", dense.kernel, _in_proj_part(part, kernel=True)
        yield f"{prefix}attn.attn.in_proj_bias", dense.bias, _in_proj_part(part, kernel=False)
    yield from dense_mapping(attn.proj, f"{prefix}attn.attn.out_proj")
    if attn.sr_ratio > 1:
        yield from conv_mapping(attn.sr, f"{prefix}attn.sr")
        yield from norm_mapping(attn.norm, f"{prefix}attn.norm")


@register_reference_mapping(MiTBackbone)
def mit_mapping(model):
    for i, (embed, blocks, norm) in enumerate(library_stages(model.mit, model.depths)):
        yield from conv_mapping(embed.proj, f"layers.{i}.0.projection")
        yield from norm_mapping(embed.norm, f"layers.{i}.0.norm")
        for j, block in enumerate(blocks):
            prefix = f"layers.{i}.1.{j}."
            yield from norm_mapping(block.norm1, f"{prefix}norm1")
            yield from _attention_mapping(block.attn, prefix)
            yield from norm_mapping(block.norm2, f"{prefix}norm2")
            yield from dense_mapping(block.mlp.fc1, f"{prefix}ffn.layers.0", conv1x1=True)
            yield from conv_mapping(block.mlp.dwconv, f"{prefix}ffn.layers.1")
            yield from dense_mapping(block.mlp.fc2, f"{prefix}ffn.layers.4", conv1x1=True)
        yield from norm_mapping(norm, f"layers.{i}.2")


@register_reference_mapping(SegFormerHead)
def segformer_head_mapping(layer):
    for index, conv in enumerate(layer.convs):
        for name, variable, transform in conv_norm_act_mapping(conv):
            yield f"convs.{index}.{name}", variable, transform
    for name, variable, transform in conv_norm_act_mapping(layer.fusion_conv):
        yield f"fusion_conv.{name}", variable, transform


def load_mit_weights(backbone, weights):
    """Pretrained MiT weights: a local `.weights.h5` of the MiT, or a keras-cv preset name.

    A preset (e.g. `mit_b0_imagenet`) is downloaded by keras-cv once; offline, use a local file
    (save one on a connected machine with `backbone.mit.save_weights("mit_b0.weights.h5")`).
    """
    if os.path.splitext(weights)[1]:
        if not os.path.isfile(weights):
            raise CheckpointError(f"model.pretrained {weights!r} does not exist.")
        try:
            backbone.mit.load_weights(weights)
        except Exception as error:
            raise CheckpointError(
                f"model.pretrained {weights!r} does not fit the MiT backbone ({error})."
            ) from error
        return _report(backbone)
    if backbone.source != "keras_cv":
        raise UserError(
            f"model.pretrained {weights!r}: presets are read through keras-cv; with source "
            "keras_hub give a local .weights.h5 file."
        )
    library = import_library("keras_cv")
    try:
        pretrained = library.models.MiTBackbone.from_preset(weights, input_shape=BUILD_SHAPE)
    except Exception as error:
        raise UserError(
            f"model.pretrained {weights!r}: the keras-cv preset could not be loaded ({type(error).__name__}: "
            f"{error}). Presets need network access once; offline, point model.pretrained to a local "
            ".weights.h5 file of the MiT backbone."
        ) from error
    source_weights = pretrained.get_weights()
    if len(source_weights) != len(backbone.mit.weights):
        raise CheckpointError(f"preset {weights!r} does not match this MiT size.")
    backbone.mit.set_weights(source_weights)
    return _report(backbone)


def _report(backbone):
    """What a MiT weights load did: every weight of the MiT (all or nothing), by its mmseg name."""
    names = dict.fromkeys(name for name, _, _ in reference_mapping(backbone, prefix="backbone."))
    return LoadReport(loaded=list(names))
