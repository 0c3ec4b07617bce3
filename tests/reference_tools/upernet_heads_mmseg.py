"""Make `tests/data/uper_head_mmseg.npz` and `fcn_head_mmseg.npz` with mmsegmentation's `UPerHead`
and `FCNHead` (UperNet's decode and auxiliary heads; issue 16's reference).

Not part of the suite: run it once where the reference is installed and commit the outputs:

    pip install torch==2.13.0 mmcv-lite==2.1.0 mmengine "mmsegmentation==1.2.2" ftfy regex
    python tests/reference_tools/upernet_heads_mmseg.py tests/data

A tiny UPerHead (in_channels [6, 8, 10, 12], channels 8, pool scales 1, 2, 3, 6, 5 classes, BN) with
random weights and BatchNorm statistics, in eval mode, on 4 random feature maps of a 2 x 3 x 76 x 100
image's strides 4, 8, 16, 32 (19x25, 10x13, 5x7, 3x4: odd sizes, so the pyramid pooling bins overlap
and the upsampling is not a plain doubling). Arrays: `state/<name>` (the state dict, torch layouts),
`input/stage{1..4}_nchw`, `out/features_nchw` (fpn_bottleneck's output, what SSA reads) and
`out/logits_nchw` (conv_seg of it).

fcn_head_mmseg.npz: an FCNHead on the third of those stages (in_index 2, 10 channels, 2 convs of 8
channels, concat_input, 5 classes), the same kinds of arrays (`out/features_nchw`: before conv_seg).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from mmseg_stub import stub_mmcv_ops  # the folder of this script is on sys.path

stub_mmcv_ops()

import torch  # noqa: E402
from mmseg.models.decode_heads import FCNHead, UPerHead  # noqa: E402

IN_CHANNELS = [6, 8, 10, 12]
SIZES = [(19, 25), (10, 13), (5, 7), (3, 4)]


def randomise(head):
    """Random weights and BatchNorm statistics (eval-mode outputs then test every tensor)."""
    with torch.no_grad():
        for name, tensor in head.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn_like(tensor) * 0.2)
            elif tensor.dtype.is_floating_point:
                tensor.copy_(torch.randn_like(tensor) * 0.3)
    head.eval()


def save(head, inputs, features, logits, path):
    arrays = {f"state/{k}": v.numpy() for k, v in head.state_dict().items() if v.dtype.is_floating_point}
    arrays.update({f"input/stage{i + 1}_nchw": x.numpy() for i, x in enumerate(inputs)})
    arrays["out/features_nchw"] = features.numpy()
    arrays["out/logits_nchw"] = logits.numpy()
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: {len(arrays)} arrays, features {tuple(features.shape)}")


def fcn_head(out_dir, inputs):
    torch.manual_seed(1)
    head = FCNHead(
        in_channels=IN_CHANNELS[2], in_index=2, channels=8, num_convs=2, concat_input=True, dropout_ratio=0.1,
        num_classes=5, norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
    )  # fmt: skip
    randomise(head)
    with torch.no_grad():
        features = head._forward_feature(inputs)
        logits = head.cls_seg(features)
    save(head, inputs, features, logits, os.path.join(out_dir, "fcn_head_mmseg.npz"))


def main(out_dir):
    torch.manual_seed(0)
    head = UPerHead(
        in_channels=IN_CHANNELS, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6), channels=8,
        dropout_ratio=0.1, num_classes=5, norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
    )  # fmt: skip
    randomise(head)
    inputs = [torch.randn(2, c, h, w) for c, (h, w) in zip(IN_CHANNELS, SIZES)]
    with torch.no_grad():
        features = head._forward_feature(inputs)
        logits = head.cls_seg(features)
    save(head, inputs, features, logits, os.path.join(out_dir, "uper_head_mmseg.npz"))
    fcn_head(out_dir, inputs)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
