"""Reference names of CGRSeg: the EfficientFormerV2 backbone (`backbone.*`, as in the reference's
efficientformer_v2.py, or an EfficientFormerV2 ImageNet checkpoint's `network.*` / `patch_embed.*`
without the prefix), the CGRSeg head (`decode_head.*` up to `linear_fuse`) and the baseline's
classifier (`decode_head.conv_seg.*` and `decode_head.lgc.*`).

Not mapped: the reference's unused buffers `attention_biases` / `attention_bias_idxs` (an ImageNet-size
7x7 table) and `attention_bias_idxs_seg` (rebuilt from the resolution): `BACKBONE_IGNORE`, registered as
unused, so whole-checkpoint and pretrained loading skip them (listed as skipped); loading the backbone alone
takes `ignore=BACKBONE_IGNORE`.
"""

from __future__ import annotations

import keras
import numpy as np

from ssaseg_keras.convert.ham_head import conv_norm_act_mapping
from ssaseg_keras.convert.reference import (
    conv_mapping,
    dense_mapping,
    identity,
    load_reference_weights,
    norm_mapping,
    reference_mapping,
    register_reference_mapping,
    register_reference_unused,
)
from ssaseg_keras.models.backbones.efficientformer_v2 import (
    Attention4D,
    Attention4DDownsample,
    EfficientFormerAttentionEmbedding,
    EfficientFormerBlock,
    EfficientFormerEmbedding,
    EfficientFormerMlp,
    EfficientFormerStem,
    EfficientFormerV2Backbone,
)
from ssaseg_keras.models.heads.cgr_head import (
    CGRBaselineClassifier,
    CGRFuseBlock,
    CGRSegHead,
    RCMBlock,
)

# Reference buffers of the backbone without a counterpart (pass as `ignore` when loading).
BACKBONE_IGNORE = ("*attention_bias_idxs", "*attention_bias_idxs_seg", "*attention_biases")


def flatten(array):
    """(C, 1, 1) layer scale / LayerNorm([C, 1, 1]) parameter -> (C,)."""
    return np.reshape(array, (-1,))


def _prefixed(mapping, prefix):
    for name, variable, transform in mapping:
        yield prefix + name, variable, transform


@register_reference_mapping(EfficientFormerStem)
def stem_mapping(layer):
    # Sequential(conv, BN, GELU, conv, BN, GELU) -> 0, 1, 3, 4.
    yield from conv_mapping(layer.conv1, "0")
    yield from norm_mapping(layer.norm1, "1")
    yield from conv_mapping(layer.conv2, "3")
    yield from norm_mapping(layer.norm2, "4")


@register_reference_mapping(EfficientFormerEmbedding)
def embedding_mapping(layer):
    yield from conv_mapping(layer.proj, "proj")
    yield from norm_mapping(layer.norm, "norm")


@register_reference_mapping(EfficientFormerMlp)
def mlp_mapping(layer):
    for name in ("fc1", "mid", "fc2"):
        yield from conv_mapping(getattr(layer, name), name)
    for name in ("norm1", "mid_norm", "norm2"):
        yield from norm_mapping(getattr(layer, name), name)


def _conv_bn_mapping(conv, norm, name):
    yield from conv_mapping(conv, f"{name}.0")
    yield from norm_mapping(norm, f"{name}.1")


@register_reference_mapping(Attention4D)
def attention_mapping(layer):
    yield "attention_biases_seg", layer.attention_biases, identity
    if layer.stride is not None:
        yield from _conv_bn_mapping(layer.stride_conv, layer.stride_norm, "stride_conv")
    for name in ("q", "k", "v", "v_local"):
        yield from _conv_bn_mapping(getattr(layer, f"{name}_conv"), getattr(layer, f"{name}_norm"), name)
    yield from dense_mapping(layer.talking_head1, "talking_head1", conv1x1=True)
    yield from dense_mapping(layer.talking_head2, "talking_head2", conv1x1=True)
    # proj = Sequential(act, conv, BN) -> 1, 2.
    yield from conv_mapping(layer.proj_conv, "proj.1")
    yield from norm_mapping(layer.proj_norm, "proj.2")


@register_reference_mapping(Attention4DDownsample)
def attention_downsample_mapping(layer):
    yield "attention_biases_seg", layer.attention_biases, identity
    yield from conv_mapping(layer.q_local, "q.local.0")
    yield from _conv_bn_mapping(layer.q_proj_conv, layer.q_proj_norm, "q.proj")
    for name in ("k", "v", "v_local"):
        yield from _conv_bn_mapping(getattr(layer, f"{name}_conv"), getattr(layer, f"{name}_norm"), name)
    yield from conv_mapping(layer.proj_conv, "proj.1")
    yield from norm_mapping(layer.proj_norm, "proj.2")


@register_reference_mapping(EfficientFormerAttentionEmbedding)
def attention_embedding_mapping(layer):
    yield from _prefixed(attention_downsample_mapping(layer.attn), "attn.")
    yield from conv_mapping(layer.conv, "conv")
    yield from norm_mapping(layer.bn, "bn")


@register_reference_mapping(EfficientFormerBlock)
def block_mapping(layer):
    if layer.attention:
        yield "layer_scale_1", layer.layer_scale_1, flatten
        yield from _prefixed(attention_mapping(layer.token_mixer), "token_mixer.")
    yield "layer_scale_2", layer.layer_scale_2, flatten
    yield from _prefixed(mlp_mapping(layer.mlp), "mlp.")


@register_reference_mapping(EfficientFormerV2Backbone)
def efficientformer_v2_mapping(model):
    yield from reference_mapping(model.get_layer("patch_embed"), prefix="patch_embed.")
    for stage, depth in enumerate(model.layers_per_stage):
        for j in range(depth):
            yield from reference_mapping(model.get_layer(f"network_{2 * stage}_{j}"), prefix=f"network.{2 * stage}.{j}.")
        if stage < 3:
            index = 2 * stage + 1
            yield from reference_mapping(model.get_layer(f"network_{index}"), prefix=f"network.{index}.")


@register_reference_mapping(RCMBlock)
def rcm_mapping(layer):
    yield "gamma", layer.gamma, identity
    # token_mixer = RCA: dwconv_hw, excite = Sequential(conv 1xk, BN, ReLU, conv kx1, Sigmoid).
    yield from conv_mapping(layer.dwconv_hw, "token_mixer.dwconv_hw")
    yield from conv_mapping(layer.excite_0, "token_mixer.excite.0")
    yield from norm_mapping(layer.excite_1, "token_mixer.excite.1")
    yield from conv_mapping(layer.excite_3, "token_mixer.excite.3")
    yield from norm_mapping(layer.norm, "norm")
    yield from conv_mapping(layer.fc1, "mlp.fc1")
    yield from conv_mapping(layer.fc2, "mlp.fc2")


@register_reference_mapping(CGRFuseBlock)
def fuse_block_mapping(layer):
    yield from _prefixed(conv_norm_act_mapping(layer.fuse1), "fuse1.")
    yield from _prefixed(conv_norm_act_mapping(layer.fuse2), "fuse2.")


@register_reference_mapping(CGRSegHead)
def cgrseg_head_mapping(layer):
    for j, block in enumerate(layer.trans):
        yield from _prefixed(rcm_mapping(block), f"trans.transformer_blocks.{j}.")
    for i, (meta, sim) in enumerate(zip(layer.meta, layer.sim)):
        yield from _prefixed(rcm_mapping(meta), f"meta.{i}.")
        yield from _prefixed(fuse_block_mapping(sim), f"SIM.{i}.")
    for i, conv in enumerate(layer.convs):
        yield from conv_mapping(conv, f"conv.{i}")
    yield from conv_mapping(layer.linear_fuse_conv, "linear_fuse.conv")
    yield from norm_mapping(layer.linear_fuse_bn, "linear_fuse.bn")


@register_reference_mapping(CGRBaselineClassifier)
def baseline_classifier_mapping(layer):
    yield from dense_mapping(layer.conv_seg, "conv_seg", conv1x1=True)
    yield from dense_mapping(layer.conv_mask, "lgc.conv_mask", conv1x1=True)
    yield from dense_mapping(layer.channel_mul_0, "lgc.channel_mul_conv.0", conv1x1=True)
    # LayerNorm([C, 1, 1]): weight and bias (C, 1, 1).
    yield "lgc.channel_mul_conv.1.weight", layer.channel_mul_1.gamma, flatten
    yield "lgc.channel_mul_conv.1.bias", layer.channel_mul_1.beta, flatten
    yield from dense_mapping(layer.channel_mul_3, "lgc.channel_mul_conv.3", conv1x1=True)


register_reference_unused(EfficientFormerV2Backbone, BACKBONE_IGNORE)


# An EfficientFormerV2 ImageNet file's classification parts (final norm, class and distillation heads).
IMAGENET_CLASSIFICATION_KEYS = ("norm.*", "head.*", "dist_head.*")
SEGMENTATION_BIAS = "attention_biases_seg"


def load_efficientformer_v2_pretrained(backbone, state, path):
    """Load an EfficientFormerV2 ImageNet state dict (`eformer_s2_450.pth`, `eformer_l_450.pth`: keys
    without `backbone.`) or a CGRSeg checkpoint's `backbone.*` into a built `EfficientFormerV2Backbone`,
    strictly, as the reference's backbone loads it.

    An ImageNet file holds attention biases for its 7x7 classification grid (`attention_biases`), which
    the reference's segmentation backbone keeps in an unused buffer; its `attention_biases_seg` (one per
    offset of the segmentation grid) are not in the file and start at zero, as in the reference (its
    non-strict `load_state_dict`). Those are named in the report's `kept`; the file's classification
    parts (`norm.*`, `head.*`, `dist_head.*`) and unused biases in `skipped`. Any other difference
    (a missing block, a width that does not fit) stops with every name listed.

    Returns:
        LoadReport. Raises `ReferenceWeightsError` (the caller names the file).
    """
    backbone = getattr(backbone, "backbone", backbone)
    prefix = "backbone." if any(key.startswith("backbone.") for key in state) else ""
    state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    kept = []
    if not any(key.endswith(SEGMENTATION_BIAS) for key in state):  # an ImageNet file
        for name, variable, _ in reference_mapping(backbone):
            if name.endswith(SEGMENTATION_BIAS) and name not in state:
                state[name] = keras.ops.convert_to_numpy(variable)
                kept.append(name)
    report = load_reference_weights(
        backbone, state, strict=True, ignore=BACKBONE_IGNORE + IMAGENET_CLASSIFICATION_KEYS
    )
    report.loaded = [name for name in report.loaded if name not in kept]
    report.kept.extend(kept)
    return report
