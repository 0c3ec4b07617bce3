"""Make `tests/data/ocrnet_hrnet_mmseg.npz` with mmsegmentation 1.2.2's `HRNet`, `FCNHead` and `OCRHead`
(a tiny OCRNet: the reference of `HRNetBackbone`, the cascade's region stage and `OCRHead`).

Not part of the suite: run it once where the reference is installed and commit the output:

    pip install torch==2.13.0 mmcv-lite==2.1.0 mmengine "mmsegmentation==1.2.2" ftfy regex
    python tests/reference_tools/ocrnet_hrnet_mmseg.py tests/data

The model: HRNet (stem 64, stage 1 one Bottleneck of 8 -> 32; stages 2-4 with 1, 2, 1 HRModules of 2
BasicBlocks per branch, widths 8, 16, 24, 32), the first cascade stage FCNHead(resize_concat of the 4
branches, 80 channels, one 1x1 conv, no concat, 5 classes) and OCRHead(resize_concat, 32 channels, 16
attention channels), in eval mode, random weights (the UperNet-Swin tool's rounding, BN statistics
included).

Input: `input/images_nchw` (2, 3, 72, 104): branches of 18x26, 9x13, 5x7, 3x4, so the fuse layers'
upsampling-then-resize and the stride-2 paddings meet sides that are not multiples of 32. Arrays:
`state/<name>` (mmseg prefixes `backbone.`, `decode_head.0.`, `decode_head.1.`; `num_batches_tracked`
left out), `out/stage{1..4}_nchw`, `out/region_logits_nchw` (the FCN stage), `out/decode_features_nchw`
(the OCR head's object-context features), `out/decode_logits_nchw`, and
`out/region_bn_running_mean_after_step`: the region stage's BatchNorm running mean after one training
step of mmseg's CascadeEncoderDecoder, which runs the first stage twice in training mode on the same
stages (`_decode_head_forward_train`: its loss, then `forward` for the OCR head's input).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from mmseg_stub import stub_mmcv_ops  # the folder of this script is on sys.path

stub_mmcv_ops()

import torch  # noqa: E402
from mmseg.models.backbones import HRNet  # noqa: E402
from mmseg.models.decode_heads import FCNHead, OCRHead  # noqa: E402
from upernet_swin_mmseg import BN, nchw, randomise, state_arrays  # noqa: E402

WIDTHS = (8, 16, 24, 32)
EXTRA = dict(
    stage1=dict(
        num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(8,)
    ),
    stage2=dict(
        num_modules=1, num_branches=2, block="BASIC", num_blocks=(2, 2), num_channels=WIDTHS[:2]
    ),
    stage3=dict(
        num_modules=2, num_branches=3, block="BASIC", num_blocks=(2, 2, 2), num_channels=WIDTHS[:3]
    ),
    stage4=dict(
        num_modules=1, num_branches=4, block="BASIC", num_blocks=(2, 2, 2, 2), num_channels=WIDTHS
    ),
)


def main(out_dir):
    torch.manual_seed(0)
    backbone = HRNet(EXTRA, norm_cfg=BN)
    region_head = FCNHead(
        in_channels=list(WIDTHS), in_index=(0, 1, 2, 3), input_transform="resize_concat", channels=sum(WIDTHS),
        kernel_size=1, num_convs=1, concat_input=False, dropout_ratio=-1, num_classes=5, norm_cfg=BN,
        align_corners=False,
    )  # fmt: skip
    ocr_head = OCRHead(
        in_channels=list(WIDTHS), in_index=(0, 1, 2, 3), input_transform="resize_concat", channels=32,
        ocr_channels=16, dropout_ratio=-1, num_classes=5, norm_cfg=BN, align_corners=False,
    )  # fmt: skip
    parts = {"backbone": backbone, "decode_head.0": region_head, "decode_head.1": ocr_head}
    for module in parts.values():
        randomise(module)
    images = torch.round(torch.randn(2, 3, 72, 104) * 8) / 8
    arrays = {}
    with torch.no_grad():
        stages = backbone(images)
        regions = region_head(stages)
        pixels = ocr_head.bottleneck(ocr_head._transform_inputs(stages))
        context = ocr_head.spatial_gather_module(pixels, regions)
        features = ocr_head.object_context_block(pixels, context)
        logits = ocr_head.cls_seg(features)
        torch.testing.assert_close(
            logits, ocr_head(stages, regions)
        )  # the same path as mmseg's forward
    arrays.update(
        {key: value.copy() for key, value in state_arrays(parts).items()}
    )  # before the step
    arrays["input/images_nchw"] = nchw(images)
    for i, stage in enumerate(stages, start=1):
        arrays[f"out/stage{i}_nchw"] = nchw(stage)
    arrays["out/region_logits_nchw"] = nchw(regions)
    arrays["out/decode_features_nchw"] = nchw(features)
    arrays["out/decode_logits_nchw"] = nchw(logits)
    with torch.no_grad():
        region_head.train()
        region_head(stages)
        region_head(stages)
        region_head.eval()
    arrays["out/region_bn_running_mean_after_step"] = (
        region_head.convs[0].bn.running_mean.numpy().copy()
    )
    path = os.path.join(out_dir, "ocrnet_hrnet_mmseg.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: {len(arrays)} arrays, {os.path.getsize(path) / 1e6:.2f} MB; stages "
          + ", ".join(str(tuple(s.shape)) for s in stages))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
