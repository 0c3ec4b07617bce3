"""Reference names of the Swin backbone (mmseg 1.2.2's `SwinTransformer`) and loading pretrained Swin.

mmseg names (without the `backbone.` prefix): `patch_embed.{projection,norm}`,
`stages.{i}.blocks.{j}.{norm1, attn.w_msa.{qkv, proj, relative_position_bias_table}, norm2,
ffn.layers.0.0 (fc1), ffn.layers.1 (fc2)}`, `stages.{i}.downsample.{norm, reduction}` and the output
norms `norm{i}`. The buffer `relative_position_index` holds no weight (it is rebuilt from the window
size) and is skipped.

ImageNet checkpoints of the official Swin repo (`swin_tiny_patch4_window7_224.pth`, ...) use other
names and concatenate a patch merging's 2x2 neighbours as [0::2, 0::2], [1::2, 0::2], [0::2, 1::2],
[1::2, 1::2] (all channels of one neighbour, then the next), where mmseg's unfold interleaves them
(channel c of neighbour (kh, kw) at c * 4 + kh * 2 + kw). `official_to_mmseg` renames and reorders
them as mmseg's `tools/model_converters/swin2mmseg.py` does. The official files have no output norms
`norm0..norm3`: loading one leaves those at their initial values (the report says so).
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from ssaseg_keras.convert.reference import (
    ReferenceWeightsError,
    conv_mapping,
    dense_mapping,
    identity,
    load_reference_weights,
    norm_mapping,
    register_reference_mapping,
    to_numpy,
)
from ssaseg_keras.models.backbones.swin import SwinBackbone
from ssaseg_keras.utils.errors import CheckpointError

logger = logging.getLogger(__name__)

# Buffers without weights (mmseg's and the official repo's), rebuilt from the window size.
IGNORED_BUFFERS = ("*relative_position_index", "*attn_mask")
# The official layout's unfold-order permutation of the 4 neighbours: [x0, x2, x1, x3] (self-inverse).
NEIGHBOUR_ORDER = [0, 2, 1, 3]
# patch_embed width -> the usual name of a Swin size, for error messages.
KNOWN_SIZES = {96: "Swin-T or Swin-S", 128: "Swin-B", 192: "Swin-L"}


@register_reference_mapping(SwinBackbone)
def swin_mapping(model):
    embed = model.get_layer("patch_embed")
    yield from conv_mapping(embed.projection, "patch_embed.projection")
    yield from norm_mapping(embed.norm, "patch_embed.norm")
    for i, depth in enumerate(model.depths):
        for j in range(depth):
            block = model.get_layer(f"stage{i}_block{j}")
            prefix = f"stages.{i}.blocks.{j}."
            yield from norm_mapping(block.norm1, f"{prefix}norm1")
            yield from dense_mapping(block.attn.qkv, f"{prefix}attn.w_msa.qkv")
            yield from dense_mapping(block.attn.proj, f"{prefix}attn.w_msa.proj")
            yield (
                f"{prefix}attn.w_msa.relative_position_bias_table",
                block.attn.relative_position_bias_table,
                identity,
            )
            yield from norm_mapping(block.norm2, f"{prefix}norm2")
            yield from dense_mapping(block.fc1, f"{prefix}ffn.layers.0.0")
            yield from dense_mapping(block.fc2, f"{prefix}ffn.layers.1")
        if i < len(model.depths) - 1:
            downsample = model.get_layer(f"stage{i}_downsample")
            yield from norm_mapping(downsample.norm, f"stages.{i}.downsample.norm")
            yield from dense_mapping(downsample.reduction, f"stages.{i}.downsample.reduction")
        yield from norm_mapping(model.get_layer(f"norm{i}"), f"norm{i}")


def concat_to_unfold_columns(weight):
    """Official reduction weight (out, 4C), columns [x0 | x1 | x2 | x3] -> mmseg's unfold order."""
    out_channels, merged = weight.shape
    blocks = weight.reshape(out_channels, 4, merged // 4)[:, NEIGHBOUR_ORDER, :]
    return np.transpose(blocks, (0, 2, 1)).reshape(out_channels, merged)


def concat_to_unfold_vector(vector):
    """Official downsample norm weight/bias (4C,) in concat order -> mmseg's unfold order."""
    blocks = vector.reshape(4, vector.shape[0] // 4)[NEIGHBOUR_ORDER, :]
    return np.transpose(blocks).reshape(-1)


def official_to_mmseg(state):
    """An official Swin state dict (`layers.*`, `patch_embed.proj.*`) -> mmseg's names and layouts.

    Renames `layers` -> `stages`, `attn.` -> `attn.w_msa.`, `mlp.fc1` -> `ffn.layers.0.0`,
    `mlp.fc2` -> `ffn.layers.1`, `patch_embed.proj` -> `patch_embed.projection`, and reorders the
    downsample reduction's input columns and norm to unfold order. Drops the classifier `head.*`, the
    final `norm.*` (mmseg's output norms norm0..norm3 have no official counterpart) and the buffers
    `relative_position_index` / `attn_mask`. Arrays are numpy (torch tensors are converted).
    """
    converted = {}
    for key, value in state.items():
        value = to_numpy(value)
        if key.startswith(("head.", "norm.")) or key.endswith(
            ("relative_position_index", "attn_mask")
        ):
            continue
        if key.startswith("layers."):
            new_key = "stages." + key[len("layers.") :]
            if ".downsample.reduction." in key:
                value = concat_to_unfold_columns(value)
            elif ".downsample.norm." in key:
                value = concat_to_unfold_vector(value)
            new_key = new_key.replace(".attn.", ".attn.w_msa.")
            new_key = new_key.replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(
                ".mlp.fc2.", ".ffn.layers.1."
            )
        elif key.startswith("patch_embed.proj."):
            new_key = "patch_embed.projection." + key[len("patch_embed.proj.") :]
        else:
            new_key = key
        converted[new_key] = value
    return converted


def checkpoint_layout(state):
    """("official" | "mmseg", prefix) of a Swin state dict, or (None, "") when it is neither."""
    for prefix in ("", "backbone.", "module."):
        if (
            any(key.startswith(f"{prefix}layers.") for key in state)
            and f"{prefix}patch_embed.proj.weight" in state
        ):
            return "official", prefix
        if (
            any(key.startswith(f"{prefix}stages.") for key in state)
            and f"{prefix}patch_embed.projection.weight" in state
        ):
            return "mmseg", prefix
    return None, ""


def describe_width(width):
    return f"embed_dims {width}" + (f" ({KNOWN_SIZES[width]})" if width in KNOWN_SIZES else "")


def stage_depths(state):
    """Blocks per stage of an mmseg-named state dict ({stage: depth})."""
    depths = {}
    for key in state:
        match = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            depths[stage] = max(depths.get(stage, 0), block + 1)
    return [depths[s] for s in sorted(depths)]


def load_swin_pretrained(backbone, path):
    """Load a Swin `.pth` (official ImageNet layout, or mmseg's, with or without `backbone.`) into a
    built `SwinBackbone` (or a model with a `.backbone`), strictly.

    Official files have no output norms: `norm0..norm3` keep their values (their initialisation) and
    are named in the report's `kept`; the official classifier `head.*` and final `norm.*` in `skipped`.

    Returns:
        LoadReport: `loaded` mmseg names; `skipped` the file's names not loaded (buffers, an official
        file's `head.*` / `norm.*`); `kept` the output norms an official file lacks.

    Raises:
        CheckpointError naming the file and the fix when the layout is unknown or the sizes differ.
    """
    from keras import ops

    from ssaseg_keras.convert.checkpoint import read_torch_checkpoint

    backbone = getattr(backbone, "backbone", backbone)
    path = os.fspath(path)
    raw = read_torch_checkpoint(path)
    layout, prefix = checkpoint_layout(raw)
    if layout is None:
        raise CheckpointError(
            f"Checkpoint {path!r} is not a Swin checkpoint: it has neither the official layout "
            "(`layers.*`, `patch_embed.proj.weight`) nor mmseg's (`stages.*`, `patch_embed.projection.weight`); "
            f"first keys: {sorted(raw)[:5]}. Give an official Swin ImageNet .pth or an mmseg Swin checkpoint."
        )
    state = {key[len(prefix) :]: value for key, value in raw.items() if key.startswith(prefix)}
    unused, kept_norms = [], []
    if layout == "official":
        unused = sorted(key for key in state if key.startswith(("head.", "norm.")))
        state = official_to_mmseg(state)
        # No output norms in the file: give the loader the model's own values (a no-op copy) so that
        # everything else is still loaded strictly.
        for i in range(4):
            norm = backbone.get_layer(f"norm{i}")
            for name, variable in ((f"norm{i}.weight", norm.gamma), (f"norm{i}.bias", norm.beta)):
                if name not in state:
                    state[name] = ops.convert_to_numpy(variable)
                    kept_norms.append(name)

    width = int(np.shape(state["patch_embed.projection.weight"])[0])
    file_depths = stage_depths(state)
    if width != backbone.embed_dims or file_depths != list(backbone.depths):
        raise CheckpointError(
            f"Checkpoint {path!r} holds a Swin with {describe_width(width)} and depths {file_depths}, but the "
            f"model is a Swin with {describe_width(backbone.embed_dims)} and depths {list(backbone.depths)}: "
            "use the checkpoint of the recipe's Swin size, or the recipe of this checkpoint's size."
        )
    try:
        report = load_reference_weights(backbone, state, strict=True, ignore=IGNORED_BUFFERS)
    except ReferenceWeightsError as error:
        raise CheckpointError(
            f"Pretrained Swin weights {path!r} do not fit the backbone: {error}\nCheck that the recipe's Swin "
            "size (embed_dims, depths, num_heads, window_size) is the checkpoint's."
        ) from error
    report.loaded = [name for name in report.loaded if name not in kept_norms]
    report.kept.extend(kept_norms)
    report.skipped.extend(unused)
    if kept_norms:
        logger.warning(
            "%s: official Swin weights have no output norms; %s keep their initial values.",
            path,
            ", ".join(kept_norms),
        )
    return report
