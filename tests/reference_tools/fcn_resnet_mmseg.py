"""Make `tests/data/fcn_resnet_mmseg.npz` with mmsegmentation 1.2.2's `ResNetV1c` (D8: strides 1,2,1,1,
dilations 1,1,2,4, contract_dilation) and `FCNHead`s (a tiny FCN; the reference of `ResNetV1cBackbone`).

Not part of the suite: run it once where the reference is installed and commit the output:

    pip install torch==2.13.0 mmcv-lite==2.1.0 mmengine "mmsegmentation==1.2.2" ftfy regex
    python tests/reference_tools/fcn_resnet_mmseg.py tests/data

The model: ResNetV1c(depth 50 with stage blocks [2, 2, 2, 2], stem_channels 16, base_channels 8,
strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation), FCNHead(stage 4, 256 -> 32, 2 convs,
concat_input, 5 classes, BN) and the auxiliary FCNHead(stage 3, 128 -> 16, one conv, no concat), in
eval mode, random weights (the UperNet-Swin tool's rounding, BN statistics included).

Input: `input/images_nchw` (2, 3, 72, 104): odd sizes after the stride-2 stem and pool (36x52, 18x26,
9x13), so every padding is exercised. Arrays: `state/<name>` (mmseg prefixes `backbone.`,
`decode_head.`, `auxiliary_head.`; `num_batches_tracked` left out), `out/stage{1..4}_nchw`,
`out/decode_features_nchw`, `out/decode_logits_nchw`, `out/aux_features_nchw`, `out/aux_logits_nchw`.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from mmseg_stub import stub_mmcv_ops  # the folder of this script is on sys.path

stub_mmcv_ops()

import torch  # noqa: E402
from mmseg.models.backbones import ResNetV1c  # noqa: E402
from mmseg.models.backbones.resnet import Bottleneck  # noqa: E402
from mmseg.models.decode_heads import FCNHead  # noqa: E402
from upernet_swin_mmseg import BN, head_arrays, nchw, randomise, state_arrays  # noqa: E402


class TinyResNetV1c(ResNetV1c):
    """ResNetV1c whose depth-50 entry has 2 Bottlenecks per stage (mmseg fixes the counts per depth)."""

    arch_settings = {50: (Bottleneck, (2, 2, 2, 2))}


def main(out_dir):
    torch.manual_seed(0)
    backbone = TinyResNetV1c(
        depth=50, stem_channels=16, base_channels=8, strides=(1, 2, 1, 1),
        dilations=(1, 1, 2, 4), contract_dilation=True, norm_cfg=BN, out_indices=(0, 1, 2, 3),
    )  # fmt: skip
    decode_head = FCNHead(
        in_channels=256, in_index=3, channels=32, num_convs=2, concat_input=True, num_classes=5,
        dropout_ratio=0.1, norm_cfg=BN, align_corners=False,
    )  # fmt: skip
    auxiliary_head = FCNHead(
        in_channels=128, in_index=2, channels=16, num_convs=1, concat_input=False, num_classes=5,
        dropout_ratio=0.1, norm_cfg=BN, align_corners=False,
    )  # fmt: skip
    parts = {"backbone": backbone, "decode_head": decode_head, "auxiliary_head": auxiliary_head}
    for module in parts.values():
        randomise(module)
    images = torch.round(torch.randn(2, 3, 72, 104) * 8) / 8
    with torch.no_grad():
        stages = backbone(images)
    arrays = state_arrays(parts)
    arrays["input/images_nchw"] = nchw(images)
    for i, stage in enumerate(stages, start=1):
        arrays[f"out/stage{i}_nchw"] = nchw(stage)
    arrays.update(head_arrays(decode_head, auxiliary_head, stages))
    path = os.path.join(out_dir, "fcn_resnet_mmseg.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: {len(arrays)} arrays, {os.path.getsize(path) / 1e6:.2f} MB; stages "
          + ", ".join(str(tuple(s.shape)) for s in stages))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
