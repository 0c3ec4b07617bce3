"""Make `tests/data/segformer_mmseg.npz` and `tests/data/segformer_param_groups.json.gz` with mmsegmentation.

Not part of the suite: run it once, in an environment with the reference installed, and commit its
outputs (the suite reads them, so it does not need mmseg):

    pip install torch==2.13.0 mmcv-lite==2.1.0 mmengine "mmsegmentation==1.2.2" ftfy regex
    python tests/reference_tools/segformer_mmseg.py tests/data

mmseg 1.2.2's `MixVisionTransformer` and `SegformerHead` have the same modules and parameter names
as mmseg 0.30's, which the SSA-Seg reference trains; mmengine's `DefaultOptimWrapperConstructor`
applies `paramwise_cfg.custom_keys` by the same rule as mmcv 1.x's `DefaultOptimizerConstructor`.
`mmcv.ops` (compiled ops) is not available in mmcv-lite; these two modules do not use it, so a stub
module stands in for it before mmseg is imported.

Outputs:
- segformer_mmseg.npz: a tiny MiT (embed_dims [4, 8, 20, 32], depths [1, 2, 1, 1]) + SegformerHead
  (channels 8, 7 classes) with random weights and BatchNorm statistics: `state/<name>` (the
  state dict, torch layouts), `input/image_nchw` (2, 3, 64, 96), `out/stage{1..4}_nchw` (eval-mode
  backbone outputs), `out/features_nchw` (fusion_conv's output, what SSA reads) and
  `out/logits_nchw` (conv_seg of it).
- segformer_param_groups.json.gz: for MiT-B0..B5 + SegformerHead (150 classes), every parameter's
  name, shape and (lr_mult, decay_mult) as mmengine groups them for the reference's AdamW recipe.
"""

from __future__ import annotations

import gzip
import json
import os
import sys

import numpy as np
from mmseg_stub import stub_mmcv_ops  # the folder of this script is on sys.path

stub_mmcv_ops()

import torch  # noqa: E402
from mmengine.optim import DefaultOptimWrapperConstructor  # noqa: E402
from mmseg.models.backbones import MixVisionTransformer  # noqa: E402
from mmseg.models.decode_heads import SegformerHead  # noqa: E402

NUM_HEADS = [1, 2, 5, 8]
SIZES = {  # SegFormer's MiT sizes: embed_dims (stage 1), depths, head channels
    "b0": (32, [2, 2, 2, 2], 256),
    "b1": (64, [2, 2, 2, 2], 256),
    "b2": (64, [3, 4, 6, 3], 768),
    "b3": (64, [3, 4, 18, 3], 768),
    "b4": (64, [3, 8, 27, 3], 768),
    "b5": (64, [3, 6, 40, 3], 768),
}
PARAMWISE = {"custom_keys": {"pos_block": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0}, "head": {"lr_mult": 10.0}}}
LR, WEIGHT_DECAY = 6e-5, 0.01


class Segmentor(torch.nn.Module):
    """`backbone` + `decode_head`, so parameter names read as in an mmseg checkpoint."""

    def __init__(self, base_dims, depths, channels, num_classes):
        super().__init__()
        self.backbone = MixVisionTransformer(
            in_channels=3, embed_dims=base_dims, num_stages=4, num_layers=depths, num_heads=NUM_HEADS,
            patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1], out_indices=(0, 1, 2, 3), mlp_ratio=4,
            qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
        )
        self.decode_head = SegformerHead(
            in_channels=[base_dims * h for h in NUM_HEADS], in_index=[0, 1, 2, 3], channels=channels,
            dropout_ratio=0.1, num_classes=num_classes, norm_cfg={"type": "BN", "requires_grad": True},
            align_corners=False,
        )


def randomize(module, generator):
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith("weight") and tensor.ndim == 1:  # norm scales
                tensor.copy_(1.0 + 0.2 * torch.randn(tensor.shape, generator=generator))
            else:
                fan_in = max(int(np.prod(tensor.shape[1:])), 1) if tensor.ndim > 1 else 4
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / np.sqrt(fan_in))


def tiny_golden(path):
    generator = torch.Generator().manual_seed(0)
    model = Segmentor(4, [1, 2, 1, 1], 8, 7).eval()
    randomize(model, generator)
    image = torch.randn((2, 3, 64, 96), generator=generator)
    captured = {}
    model.decode_head.fusion_conv.register_forward_hook(lambda m, i, o: captured.setdefault("features", o))
    with torch.no_grad():
        stages = model.backbone(image)
        logits = model.decode_head(stages)
    arrays = {f"state/{k}": v.numpy() for k, v in model.state_dict().items()}
    arrays["input/image_nchw"] = image.numpy()
    for i, stage in enumerate(stages, start=1):
        arrays[f"out/stage{i}_nchw"] = stage.numpy()
    arrays["out/features_nchw"] = captured["features"].numpy()
    arrays["out/logits_nchw"] = logits.numpy()
    np.savez_compressed(path, **arrays)


def parameter_groups(size):
    base_dims, depths, channels = SIZES[size]
    model = Segmentor(base_dims, depths, channels, 150)
    constructor = DefaultOptimWrapperConstructor(
        {"type": "OptimWrapper", "optimizer": {"type": "AdamW", "lr": LR, "betas": (0.9, 0.999), "weight_decay": WEIGHT_DECAY}},
        PARAMWISE,
    )
    wrapper = constructor(model)
    names = {id(p): n for n, p in model.named_parameters()}
    rows = {}
    for group in wrapper.optimizer.param_groups:
        for param in group["params"]:
            rows[names[id(param)]] = [list(param.shape), round(group["lr"] / LR, 6), round(group["weight_decay"] / WEIGHT_DECAY, 6)]
    return [[name, *rows[name]] for name, _ in model.named_parameters()]


def main(folder):
    tiny_golden(os.path.join(folder, "segformer_mmseg.npz"))
    groups = {size: parameter_groups(size) for size in SIZES}
    with gzip.open(os.path.join(folder, "segformer_param_groups.json.gz"), "wt", encoding="utf-8") as handle:
        json.dump({"paramwise_cfg": PARAMWISE, "sizes": groups}, handle)
    for size, rows in groups.items():
        print(size, len(rows), "parameters", sum(int(np.prod(r[1])) for r in rows))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "data"))
