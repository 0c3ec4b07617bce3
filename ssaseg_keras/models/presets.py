"""Model sizes as data: backbone and decode-head arguments of every family and size.

SegNeXt (MSCAN + LightHamHead) follows the SegNeXt paper / mmseg configs; SegFormer (MiT + all-MLP
head) the SegFormer paper; UperNet (Swin + UPerHead + an FCN auxiliary head) mmseg's / the SSA-Seg
reference's `upernet_swin` configs; FCN (ResNetV1c-D8 + FCNHead + the FCN auxiliary head) mmseg's
`fcn_r*-d8` configs; OCRNet (HRNetV2 + the FCN region stage + OCRHead) mmseg's `ocrnet_hr*` configs.
The lightweight families (SeaFormer-B/L, AFFormer-B, CGRSeg-B/L) follow the SSA-Seg reference's configs;
their layouts live beside their code. `build_segmentor` (ssaseg_keras.models) reads these tables. A preset's `dropout` is the classifier's
default (`model.dropout` when the recipe does not set it; 0.1 where absent).
"""

from __future__ import annotations

from ssaseg_keras.models.backbones.afformer import AFFORMER_LAYOUTS
from ssaseg_keras.models.backbones.efficientformer_v2 import EFFICIENTFORMER_V2_LAYOUTS
from ssaseg_keras.models.backbones.seaformer import SEAFORMER_LAYOUTS
from ssaseg_keras.models.heads.aff_head import AFF_HEAD_PRESETS
from ssaseg_keras.models.heads.cgr_head import CGRSEG_HEAD_LAYOUTS
from ssaseg_keras.models.heads.light_head import LIGHT_HEAD_PRESETS

SEGNEXT_PRESETS = {
    "t": {
        "backbone": {"embed_dims": [32, 64, 160, 256], "mlp_ratios": [8, 8, 4, 4], "depths": [3, 3, 5, 2], "drop_path_rate": 0.1},
        "head": {"channels": 256, "ham_channels": 256, "rank": 16, "groups": 32},
    },
    "s": {
        "backbone": {"embed_dims": [64, 128, 320, 512], "mlp_ratios": [8, 8, 4, 4], "depths": [2, 2, 4, 2], "drop_path_rate": 0.1},
        "head": {"channels": 256, "ham_channels": 256, "rank": 16, "groups": 32},
    },
    "b": {
        "backbone": {"embed_dims": [64, 128, 320, 512], "mlp_ratios": [8, 8, 4, 4], "depths": [3, 3, 12, 3], "drop_path_rate": 0.1},
        "head": {"channels": 512, "ham_channels": 512, "rank": 16, "groups": 32},
    },
    "l": {
        "backbone": {"embed_dims": [64, 128, 320, 512], "mlp_ratios": [8, 8, 4, 4], "depths": [3, 5, 27, 3], "drop_path_rate": 0.3},
        "head": {"channels": 1024, "ham_channels": 1024, "rank": 16, "groups": 32},
    },
}

SEGFORMER_PRESETS = {
    "b0": {"backbone": {"embed_dims": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "drop_path_rate": 0.1}, "head": {"channels": 256}},
    "b1": {"backbone": {"embed_dims": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "drop_path_rate": 0.1}, "head": {"channels": 256}},
    "b2": {"backbone": {"embed_dims": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "drop_path_rate": 0.1}, "head": {"channels": 768}},
    "b3": {"backbone": {"embed_dims": [64, 128, 320, 512], "depths": [3, 4, 18, 3], "drop_path_rate": 0.1}, "head": {"channels": 768}},
    "b4": {"backbone": {"embed_dims": [64, 128, 320, 512], "depths": [3, 8, 27, 3], "drop_path_rate": 0.1}, "head": {"channels": 768}},
    "b5": {"backbone": {"embed_dims": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "drop_path_rate": 0.1}, "head": {"channels": 768}},
}

# UperNet's auxiliary FCNHead (mmseg's `upernet_swin` base config): stage 3, one 3x3 conv of 256, no
# concat, dropout 0.1, cross-entropy weight 0.4. Training only.
UPERNET_AUXILIARY_HEAD = {"channels": 256, "num_convs": 1, "concat_input": False, "in_index": 2, "dropout": 0.1, "loss_weight": 0.4}
UPERNET_HEAD = {"channels": 512, "pool_scales": [1, 2, 3, 6]}


def _swin(embed_dims, depths, num_heads):
    return {
        "backbone": {"type": "swin", "embed_dims": embed_dims, "depths": depths, "num_heads": num_heads, "window_size": 7, "drop_path_rate": 0.3},
        "head": dict(UPERNET_HEAD),
        "auxiliary_head": dict(UPERNET_AUXILIARY_HEAD),
    }


UPERNET_PRESETS = {
    "t": _swin(96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "b": _swin(128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "l": _swin(192, [2, 2, 18, 2], [6, 12, 24, 48]),
}

# FCN (mmseg's `fcn_r50-d8` / `fcn_r101-d8` configs, the SSA-Seg reference's FCN rows): ResNetV1c with
# strides 1,2,1,1 and dilations 1,1,2,4 (stages at strides 4, 8, 8, 8), FCNHead on stage 4 (2 convs of
# 512, concat_input), the same FCN auxiliary head on stage 3 (in_channels 1024).
FCN_HEAD = {"channels": 512, "num_convs": 2, "kernel_size": 3, "concat_input": True, "in_index": 3}


def _resnet_d8(depth):
    return {
        "backbone": {"depth": depth, "depths": None, "stem_channels": 64, "base_channels": 64,
                     "strides": [1, 2, 1, 1], "dilations": [1, 1, 2, 4], "contract_dilation": True},
        "head": dict(FCN_HEAD),
        "auxiliary_head": dict(UPERNET_AUXILIARY_HEAD),
    }  # fmt: skip


FCN_PRESETS = {"r50": _resnet_d8(50), "r101": _resnet_d8(101)}

# OCRNet (mmseg's `ocrnet_hr18` / `ocrnet_hr48` configs, the SSA-Seg reference's OCRNet rows): HRNetV2
# (stage 1: 4 Bottlenecks of 64; stages 2-4: 1, 4, 3 HRModules of 4 BasicBlocks per branch) and a
# cascade decode head. Its first stage (`region_head`) is an FCNHead on the resized concatenation of
# the 4 branches (one 1x1 conv, `channels` None = the concatenation's width, 720 for W48; no concat)
# with a plain classifier and a cross-entropy of weight 0.4: its logits are the soft object regions
# the OCRHead (3x3 bottleneck to 512, 256 attention channels) reads. Neither stage has dropout.
# `bn_momentum` 0.81 (torch 0.19): the reference runs the first stage twice per training step with
# the same input (its loss, then the input of the second stage), so its BatchNorm statistics take
# two moving-average steps of the same batch statistics, m <- 0.81 m + 0.19 s; one step at
# momentum 0.19 is that exactly.
OCR_REGION_HEAD = {"channels": None, "num_convs": 1, "kernel_size": 1, "concat_input": False, "in_index": [0, 1, 2, 3],
                   "dropout": 0.0, "loss_weight": 0.4, "bn_momentum": 0.81}  # fmt: skip


def _hrnet_ocr(widths):
    return {
        "backbone": {"widths": list(widths), "modules": [1, 4, 3], "blocks": 4, "stem_channels": 64,
                     "stage1_channels": 64, "stage1_blocks": 4},  # fmt: skip
        "region_head": dict(OCR_REGION_HEAD),
        "head": {"channels": 512, "ocr_channels": 256, "in_index": [0, 1, 2, 3]},
        "dropout": 0.0,
    }


OCRNET_PRESETS = {"hr18": _hrnet_ocr((18, 36, 72, 144)), "hr48": _hrnet_ocr((48, 96, 192, 384))}

# `model.backbone` of an UperNet over a keras-hub or keras-cv feature-pyramid backbone (`type: keras_hub`
# or `keras_cv`): a preset (name or local directory) or a class name + arguments (`KerasHubBackbone`'s
# / `KerasCVBackbone`'s arguments).
KERAS_HUB_BACKBONE_KEYS = ("type", "preset", "class_name", "arguments", "load_weights", "levels", "image_shape")
LIBRARY_BACKBONE_TYPES = ("keras_hub", "keras_cv")  # both take KERAS_HUB_BACKBONE_KEYS
BACKBONE_TYPES = ("swin", *LIBRARY_BACKBONE_TYPES)

# SeaFormer (the reference's configs/seaformer/seaformer_{base,large}.py): the backbone layout and the
# LightHead (SSA reads its `linear_fuse` output); classifier dropout 0.1, drop-path 0.1 (per stage).
SEAFORMER_PRESETS = {
    size: {"backbone": dict(SEAFORMER_LAYOUTS[size]), "head": dict(LIGHT_HEAD_PRESETS[size])} for size in ("b", "l")
}

# AFFormer (the reference's configs/AFFormer/AFFormer_base_*.py): the backbone layout and the CLS head
# (SSA reads its `squeeze` of the last map; the reference's never-called `align` conv is left out).
AFFORMER_PRESETS = {"b": {"backbone": dict(AFFORMER_LAYOUTS["b"]), "head": dict(AFF_HEAD_PRESETS["b"])}}

# CGRSeg (the reference's configs/cgrseg/cgrseg-{b,l}_ade20k_160k.py): EfficientFormerV2-S2 / -L at the
# configs' 512 resolution (its attention biases are resized for other inputs) and the CGRSeg head (SSA
# reads `linear_fuse`; the baseline classifier runs the reference's second DPG stage).
EFFICIENTFORMER_V2_ATTENTION = {"resolution": 512, "key_dim": 32, "num_heads": 8, "attn_ratio": 4,
                                "downsample_key_dim": 16, "downsample_num_heads": 8, "downsample_attn_ratio": 4}  # fmt: skip
CGRSEG_PRESETS = {
    size: {
        "backbone": {**EFFICIENTFORMER_V2_LAYOUTS[size], **EFFICIENTFORMER_V2_ATTENTION},
        "head": dict(CGRSEG_HEAD_LAYOUTS[size]),
    }
    for size in ("b", "l")
}

PRESETS = {
    "segnext": SEGNEXT_PRESETS,
    "segformer": SEGFORMER_PRESETS,
    "upernet": UPERNET_PRESETS,
    "fcn": FCN_PRESETS,
    "ocrnet": OCRNET_PRESETS,
    "seaformer": SEAFORMER_PRESETS,
    "afformer": AFFORMER_PRESETS,
    "cgrseg": CGRSEG_PRESETS,
}
FAMILIES = tuple(PRESETS)


def sizes(family):
    """The size names of a family, e.g. sizes("segnext") -> ("t", "s", "b", "l")."""
    return tuple(PRESETS[family])
