"""Make `tests/data/cgr_head_baseline.npz`: the second stage of the baseline CGRSeg head (the reference of
`CGRBaselineClassifier`), with random weights.

Not part of the suite: run it once where the reference is installed and commit the output:

    pip install torch==2.13.0 mmcv-lite==2.1.0 mmengine "mmsegmentation==1.2.2" ftfy regex
    python tests/reference_tools/cgr_head_baseline.py tests/data

Why not the reference's own `CGRSeg` head: `xwmaxwma/SSAClassifier` models/decode_heads/cgr_head.py
imports mmcv 1.x / mmseg 0.x names that mmcv 2.1 and mmseg 1.2.2 no longer have (`mmcv.cnn.kaiming_init`,
`constant_init`, `mmseg.ops.resize`) and timm. Its second stage is built here from library modules
with the same structure and state-dict names instead:
- `SpatialGatherModule` is mmseg's own (the reference's class is a copy of it, scale 1);
- the reference's `DPGHead(C, C, pool="att", fusions=["channel_mul"])` has exactly the modules of
  mmcv's `ContextBlock(C, ratio=1, pooling_type="att", fusion_types=("channel_mul",))` (`conv_mask`,
  `channel_mul_conv` = 1x1, LayerNorm([C, 1, 1]), ReLU, 1x1) and the same `spatial_pool`; only its
  `forward` differs (it pools a second input y: the gathered class regions, and scales x), restated
  here in two lines;
- `conv_seg` is one 1x1 conv used twice, as the reference's `cls_seg` (dropout: eval mode).

    coarse = conv_seg(F)                                  F: linear_fuse's output
    regions = SpatialGatherModule(1)(x, coarse)           x: linear_fuse's input, (B, C, K, 1)
    O = x * sigmoid(channel_mul_conv(spatial_pool(regions))) + x
    logits = conv_seg(O)

Sizes: C = 20, K = 7 classes, (B, h, w) = (2, 8, 12) (the golden tiny CGRSeg's head resolution).
Arrays: `state/decode_head.{conv_seg,lgc.*}`, `input/features_nchw` (F), `input/pre_fuse_nchw` (x),
`input/labels` (B, h, w) int32 with some 255, `out/coarse_logits_nchw`, `out/logits_nchw`, `out/loss`
(the reference's decode loss on `logits`: cross-entropy, ignore 255, mmseg 0.x mean over all pixels,
weight 1; here at head resolution), `grad/features_nchw`, `grad/pre_fuse_nchw` (its gradients: F
receives one only through the coarse logits' spatial softmax).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from mmseg_stub import stub_mmcv_ops  # the folder of this script is on sys.path

stub_mmcv_ops()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmcv.cnn import ContextBlock  # noqa: E402
from mmseg.models.decode_heads.ocr_head import SpatialGatherModule  # noqa: E402

CHANNELS, CLASSES, SHAPE = 20, 7, (2, 8, 12)


def second_stage(conv_seg, gather, lgc, features, pre_fuse):
    coarse = conv_seg(features)
    regions = gather(pre_fuse, coarse)
    gate = torch.sigmoid(lgc.channel_mul_conv(lgc.spatial_pool(regions)))
    return conv_seg(pre_fuse * gate + pre_fuse), coarse


def main(out_dir):
    torch.manual_seed(0)
    conv_seg = torch.nn.Conv2d(CHANNELS, CLASSES, 1)
    gather = SpatialGatherModule(1)
    lgc = ContextBlock(CHANNELS, ratio=1.0, pooling_type="att", fusion_types=("channel_mul",))
    with torch.no_grad():
        for module in (conv_seg, lgc):
            for name, tensor in module.named_parameters():
                if name.endswith("1.weight"):  # the LayerNorm's scale
                    tensor.copy_(1.0 + 0.2 * torch.randn_like(tensor))
                elif tensor.dim() >= 2:
                    tensor.copy_(torch.randn_like(tensor) * tensor[0].numel() ** -0.5)
                else:
                    tensor.copy_(0.2 * torch.randn_like(tensor))
    batch, height, width = SHAPE
    pre_fuse = torch.randn(batch, CHANNELS, height, width, requires_grad=True)
    features = (torch.randn(batch, CHANNELS, height, width) + 0.3).relu().requires_grad_(True)
    labels = torch.randint(0, CLASSES, SHAPE)
    labels[torch.rand(SHAPE) < 0.15] = 255
    logits, coarse = second_stage(conv_seg, gather, lgc.eval(), features, pre_fuse)
    loss = F.cross_entropy(logits, labels, ignore_index=255, reduction="none").mean()
    loss.backward()

    arrays = {f"state/decode_head.conv_seg.{k}": v for k, v in conv_seg.state_dict().items()}
    arrays.update({f"state/decode_head.lgc.{k}": v for k, v in lgc.state_dict().items()})
    arrays = {k: v.detach().numpy().astype("float32") for k, v in arrays.items()}
    arrays.update({
        "input/features_nchw": features.detach().numpy(),
        "input/pre_fuse_nchw": pre_fuse.detach().numpy(),
        "input/labels": labels.numpy().astype("int32"),
        "out/coarse_logits_nchw": coarse.detach().numpy(),
        "out/logits_nchw": logits.detach().numpy(),
        "out/loss": loss.detach().numpy().reshape(1),
        "grad/features_nchw": features.grad.numpy(),
        "grad/pre_fuse_nchw": pre_fuse.grad.numpy(),
    })  # fmt: skip
    path = os.path.join(out_dir, "cgr_head_baseline.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
