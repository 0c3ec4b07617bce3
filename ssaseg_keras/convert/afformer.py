"""Reference names of AFFormer (`backbone.stem.*`, `backbone.patch_embed_stages.*`, `backbone.mhca_stages.*`,
or an AFFormer ImageNet checkpoint without the prefix) and of its head (`decode_head.squeeze.*`; the
classifier's `conv_seg` and SSA names map through SSAClassifier).

Shared tensors: an encoder's `cpe` and `crpe` are single modules reused by all its blocks, so the
reference's state dict repeats each of their tensors under several names:

    mhca_blks.0.cpe.proj.*                      mhca_blks.0.crpe.conv_list.{k}.*
    mhca_blks.0.MHCA_layers.{j}.cpe.proj.*      mhca_blks.0.MHCA_layers.{j}.crpe.conv_list.{k}.*
                                                mhca_blks.0.MHCA_layers.{j}.factoratt_crpe.crpe.conv_list.{k}.*

Our encoder holds each once. The mapping names every copy (so a strict load uses every key), and every
copy must hold the same values: a file whose copies differ (edited by hand, or from a model that did not
share them) raises `ReferenceWeightsError` naming the keys, rather than loading one of them silently.

The head's `align` ConvModule (built by the reference, never called) has no counterpart: `AFF_HEAD_IGNORED`,
registered as unused, so whole-checkpoint loading skips its `align.*` keys (and lists them in the report's
`skipped`); loading the head alone takes `ignore=AFF_HEAD_IGNORED`.
"""

from __future__ import annotations

import collections

import numpy as np

from ssaseg_keras.convert.ham_head import conv_norm_act_mapping
from ssaseg_keras.convert.reference import (
    ReferenceWeightsError,
    conv_mapping,
    dense_mapping,
    norm_mapping,
    reference_mapping,
    register_reference_mapping,
    register_reference_unused,
)
from ssaseg_keras.models.backbones.afformer import (
    AFFormerBackbone,
    AFFormerBlock,
    AFFormerConvBN,
    AFFormerEncoder,
    AFFormerFrequencyFilter,
    AFFormerMlp,
    AFFormerPatchEmbed,
    AFFormerRestore,
    AFFormerStage,
)
from ssaseg_keras.models.heads.aff_head import AFFormerHead

# decode_head.* names of the reference head with no place in AFFormerHead: the never-called `align`.
AFF_HEAD_IGNORED = ("align.*",)


class _SharedTensor:
    """The copies of one shared reference tensor: the first array loaded, and a check for the others."""

    def __init__(self, names):
        self.names = names
        self.first = None

    def transform(self, name, transform):
        def check(array):
            if self.first is None:
                self.first = (name, np.array(array, copy=True))
            else:
                first_name, first = self.first
                if first.shape != array.shape or not np.array_equal(first, array):
                    difference = (
                        f"max |difference| {float(np.max(np.abs(first - array))):.3g}"
                        if first.shape == array.shape else f"shapes {first.shape} and {array.shape}"
                    )  # fmt: skip
                    raise ReferenceWeightsError(
                        f"AFFormer shares one tensor between {', '.join(self.names)}, but the reference file's "
                        f"{first_name} and {name} differ ({difference}); a checkpoint of the reference model "
                        "holds identical copies"
                    )
            return transform(array)

        return check


def checked_copies(entries):
    """(name, variable, transform) entries, where several names may fill one variable (the reference's
    shared modules), with each such group's transforms made to check that all its arrays are equal:
    the first array loaded is kept and each later one compared with it (ReferenceWeightsError naming
    the group's keys and the two that differ)."""
    entries = list(entries)
    groups = collections.defaultdict(list)
    for name, variable, _ in entries:
        groups[id(variable)].append(name)
    shared = {key: _SharedTensor(names) for key, names in groups.items() if len(names) > 1}
    for name, variable, transform in entries:
        group = shared.get(id(variable))
        yield name, variable, transform if group is None else group.transform(name, transform)


@register_reference_mapping(AFFormerConvBN)
def conv_bn_mapping(layer):
    # Conv2d_BN: `conv` (no bias) then `bn`.
    yield from conv_mapping(layer.conv, "conv")
    yield from norm_mapping(layer.bn, "bn")


@register_reference_mapping(AFFormerPatchEmbed)
def patch_embed_mapping(layer):
    # DWCPatchEmbed.patch_conv = DWConv2d_BN(dwconv, pwconv, bn).
    yield from conv_mapping(layer.dwconv, "patch_conv.dwconv")
    yield from conv_mapping(layer.pwconv, "patch_conv.pwconv")
    yield from norm_mapping(layer.bn, "patch_conv.bn")


@register_reference_mapping(AFFormerRestore)
def restore_mapping(layer):
    yield from reference_mapping(layer.conv1, prefix="conv1.")
    yield from conv_mapping(layer.dwconv, "dwconv")
    yield from norm_mapping(layer.norm, "norm")
    yield from reference_mapping(layer.conv2, prefix="conv2.")


@register_reference_mapping(AFFormerFrequencyFilter)
def frequency_filter_mapping(layer):
    for index, conv in enumerate(layer.conv_list):
        yield from conv_mapping(conv, f"conv_list.{index}")


@register_reference_mapping(AFFormerMlp)
def mlp_mapping(layer):
    yield from dense_mapping(layer.fc1, "fc1")
    yield from conv_mapping(layer.dwconv, "dwconv.dwconv")  # DWConv wraps its Conv2d as `dwconv`
    yield from dense_mapping(layer.fc2, "fc2")


@register_reference_mapping(AFFormerBlock)
def block_mapping(layer):
    # The block's own weights; its shared cpe / crpe copies are named by the encoder's mapping.
    yield from dense_mapping(layer.qkv, "factoratt_crpe.qkv")
    yield from dense_mapping(layer.proj, "factoratt_crpe.proj")
    yield from reference_mapping(layer.mlp, prefix="mlp.")
    yield from norm_mapping(layer.norm1, "norm1")
    yield from norm_mapping(layer.norm2, "norm2")


@register_reference_mapping(AFFormerEncoder)
def encoder_mapping(layer):
    def entries():
        # The shared modules under the encoder and, again, under every block that uses them.
        cpe_prefixes = ["cpe.proj"] + [f"MHCA_layers.{j}.cpe.proj" for j in range(layer.num_layers)]
        crpe_prefixes = ["crpe."]
        for j in range(layer.num_layers):
            crpe_prefixes += [f"MHCA_layers.{j}.crpe.", f"MHCA_layers.{j}.factoratt_crpe.crpe."]
        for prefix in cpe_prefixes:
            yield from conv_mapping(layer.cpe, prefix)
        for prefix in crpe_prefixes:
            yield from reference_mapping(layer.crpe, prefix=prefix)
        for j, block in enumerate(layer.blocks):
            yield from reference_mapping(block, prefix=f"MHCA_layers.{j}.")

    yield from checked_copies(entries())


@register_reference_mapping(AFFormerStage)
def stage_mapping(layer):
    # One of our stages is the reference's patch_embed_stages.{i} and mhca_stages.{i}: the backbone's
    # mapping gives the two prefixes; here `patch_embeds.` names the first, the rest the second.
    for index, embed in enumerate(layer.patch_embeds):
        yield from reference_mapping(embed, prefix=f"patch_embeds.{index}.")
    yield from reference_mapping(layer.restore, prefix="Restore.")
    if layer.attention:
        yield from reference_mapping(layer.encoder, prefix="mhca_blks.0.")
    yield from reference_mapping(layer.aggregate, prefix="aggregate.")


@register_reference_mapping(AFFormerBackbone)
def afformer_mapping(model):
    def entries():
        for index in range(2):
            yield from reference_mapping(model.get_layer(f"stem_{index}"), prefix=f"stem.{index}.")
        for index in range(4):
            for name, variable, transform in reference_mapping(model.get_layer(f"stage{index}")):
                if name.startswith("patch_embeds."):
                    yield f"patch_embed_stages.{index}.{name}", variable, transform
                else:
                    yield f"mhca_stages.{index}.{name}", variable, transform

    # Checked again here, so that a mismatch names the keys in full (`mhca_stages.{i}.mhca_blks.0...`).
    yield from checked_copies(entries())


@register_reference_mapping(AFFormerHead)
def aff_head_mapping(layer):
    for name, variable, transform in conv_norm_act_mapping(layer.squeeze):
        yield f"squeeze.{name}", variable, transform


register_reference_unused(AFFormerHead, AFF_HEAD_IGNORED)
