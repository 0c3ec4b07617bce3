"""Make `tests/data/upernet_swin_mmseg.npz` with mmsegmentation 1.2.2's `SwinTransformer`, `UPerHead`
and `FCNHead` (a tiny UperNet-Swin; the reference of `SwinBackbone` and its converters).

Not part of the suite: run it once where the reference is installed and commit the output:

    pip install torch==2.13.0 mmcv-lite==2.1.0 mmengine "mmsegmentation==1.2.2" ftfy regex
    python tests/reference_tools/upernet_swin_mmseg.py tests/data

The model: SwinTransformer(embed_dims 16, depths [2, 2, 2, 2], heads [1, 2, 2, 4], window 7,
drop_path_rate 0.3, no absolute position embedding, patch norm, 4 outputs), UPerHead(in_channels
[16, 32, 64, 128], channels 32, pool scales 1, 2, 3, 6, 5 classes, BN) and FCNHead(stage 3, 64 -> 16
channels, one conv, no concat, 5 classes, BN), in eval mode. Its weights are random (relative position
bias tables, LayerNorm and BatchNorm affine parameters and statistics included) and rounded to 3
significant bits, the images (random normal) to multiples of 1/8, so that the file compresses to
~3 MB; the outputs are computed in float32 from exactly the stored values.

Inputs: `input/images_nchw` (2, 3, 160, 224) -- the feature maps 40x56, 20x28, 10x14, 5x7 are padded
to window multiples at every stage -- and, backbone only, `input/images2_nchw` (1, 3, 200, 136) --
50x34, 25x17, 13x9, 7x5: odd sides, so patch merging pads too.

Arrays:
- `state/<name>`: the whole model's float state dict with mmseg's prefixes `backbone.`,
  `decode_head.`, `auxiliary_head.` (the integer buffer `relative_position_index` is left out);
- `official/<name>`: the backbone in the official Swin repo's layout (`layers.*`, `patch_embed.proj`,
  `attn.qkv`, `mlp.fc1`, patch merging in concat order), made by inverting mmseg's
  `tools/model_converters/swin2mmseg.py` rule, plus a fake classifier `head.*`, final `norm.*` and
  the buffers `relative_position_index` / `attn_mask`. The tool checks the inverse against mmseg's
  PatchMerging module: the official patch merging (concatenate x[0::2, 0::2], x[1::2, 0::2],
  x[0::2, 1::2], x[1::2, 1::2], LayerNorm, Linear) with the official-layout weights must give the
  module's output;
- `out/stage{1..4}_nchw`, `out/stage{1..4}_b_nchw` (the second input): the backbone's outputs;
  `out/decode_features_nchw` (UPerHead's fpn_bottleneck output, before cls_seg),
  `out/decode_logits_nchw`, `out/aux_features_nchw` (FCNHead before cls_seg), `out/aux_logits_nchw`.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from mmseg_stub import stub_mmcv_ops  # the folder of this script is on sys.path

stub_mmcv_ops()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmseg.models.backbones import SwinTransformer  # noqa: E402
from mmseg.models.decode_heads import FCNHead, UPerHead  # noqa: E402

NEIGHBOUR_ORDER = [0, 2, 1, 3]  # unfold order <-> concat order of the 4 neighbours (self-inverse)
BN = dict(type="BN", requires_grad=True)


def coarse(tensor, std):
    """Normal(0, std) values rounded to 3 significant bits (exact in float32 and compressible)."""
    values = torch.randn_like(tensor) * std
    exponent = torch.floor(torch.log2(values.abs().clamp_min(1e-8))) - 2
    return torch.round(values / 2**exponent) * 2**exponent


def randomise(model):
    """Random weights (std 1/sqrt(fan_in) for matrices), affine norms around 1, BN statistics."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                tensor.copy_(coarse(tensor, 0.3).abs() + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(coarse(tensor, 0.2))
            elif name.endswith("relative_position_bias_table"):
                tensor.copy_(coarse(tensor, 1.0))
            elif tensor.dim() >= 2:
                tensor.copy_(coarse(tensor, tensor[0].numel() ** -0.5))
            elif "norm" in name or name.split(".")[-2].startswith("bn"):
                tensor.copy_(coarse(tensor, 0.2) + (1.0 if name.endswith("weight") else 0.0))
            else:
                tensor.copy_(coarse(tensor, 0.1))
    model.eval()


def unfold_to_concat_columns(weight):
    """mmseg reduction weight (out, 4C), column c * 4 + k -> official concat order (block k of C)."""
    out_channels, merged = weight.shape
    blocks = weight.reshape(out_channels, merged // 4, 4).transpose(1, 2)[:, NEIGHBOUR_ORDER, :]
    return blocks.reshape(out_channels, merged)


def unfold_to_concat_vector(vector):
    blocks = vector.reshape(vector.shape[0] // 4, 4).T[NEIGHBOUR_ORDER, :]
    return blocks.reshape(-1)


def to_official(backbone_state, num_classes=10):
    """mmseg's Swin state dict -> the official repo's layout (inverse of mmseg's swin2mmseg rule)."""
    official = {}
    for key, value in backbone_state.items():
        if key.startswith("norm"):
            continue  # mmseg's output norms norm0..norm3 have no official counterpart
        if key.startswith("patch_embed.projection."):
            key = key.replace("patch_embed.projection.", "patch_embed.proj.")
        elif key.startswith("stages."):
            if ".downsample.reduction." in key:
                value = unfold_to_concat_columns(value)
            elif ".downsample.norm." in key:
                value = unfold_to_concat_vector(value)
            key = "layers." + key[len("stages.") :]
            key = key.replace(".attn.w_msa.", ".attn.")
            key = key.replace(".ffn.layers.0.0.", ".mlp.fc1.").replace(
                ".ffn.layers.1.", ".mlp.fc2."
            )
        official[key] = value.clone()
    width = backbone_state["norm3.weight"].shape[0]
    official["norm.weight"] = coarse(torch.zeros(width), 0.2) + 1.0
    official["norm.bias"] = coarse(torch.zeros(width), 0.1)
    official["head.weight"] = coarse(torch.zeros(num_classes, width), width**-0.5)
    official["head.bias"] = coarse(torch.zeros(num_classes), 0.1)
    # The official repo registers the shifted blocks' mask for its training resolution (here stage 3).
    official["layers.2.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    return official


def official_patch_merging(x, hw_shape, norm_weight, norm_bias, reduction_weight):
    """The official Swin's PatchMerging on (B, H*W, C): concat x0, x1, x2, x3, LayerNorm, Linear."""
    height, width = hw_shape
    batch, _, channels = x.shape
    x = x.view(batch, height, width, channels)
    x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
    x0, x1, x2, x3 = x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]
    x = torch.cat([x0, x1, x2, x3], -1).view(batch, -1, 4 * channels)
    x = F.layer_norm(x, (4 * channels,), norm_weight, norm_bias, eps=1e-5)
    return F.linear(x, reduction_weight)


def check_official_layout(backbone, official):
    """The official-layout weights in the official PatchMerging == mmseg's PatchMerging module."""
    for stage in range(3):
        module = backbone.stages[stage].downsample
        prefix = f"layers.{stage}.downsample."
        for height, width in ((10, 14), (9, 7)):
            x = torch.randn(2, height * width, module.in_channels)
            with torch.no_grad():
                expected, _ = module(x, (height, width))
                got = official_patch_merging(
                    x, (height, width), official[prefix + "norm.weight"], official[prefix + "norm.bias"],
                    official[prefix + "reduction.weight"],
                )  # fmt: skip
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            assert (got - expected).abs().max() < 1e-4 * expected.abs().max()
    print("official-layout patch merging matches mmseg's PatchMerging on 3 stages")


def nchw(tensor):
    return tensor.detach().numpy().astype("float32")


def state_arrays(parts):
    """`state/<part>.<name>`: every float tensor of the parts' state dicts (integer buffers left out)."""
    return {
        f"state/{part}.{name}": tensor.numpy()
        for part, module in parts.items()
        for name, tensor in module.state_dict().items()
        if tensor.dtype.is_floating_point
    }


def head_arrays(decode_head, auxiliary_head, stages):
    """`out/{decode,aux}_{features,logits}_nchw` of both heads (eval mode) on the backbone's stages."""
    arrays = {}
    with torch.no_grad():
        for key, head in (("decode", decode_head), ("aux", auxiliary_head)):
            features = head._forward_feature(stages)
            arrays[f"out/{key}_features_nchw"] = nchw(features)
            arrays[f"out/{key}_logits_nchw"] = nchw(head.cls_seg(features))
    return arrays


def main(out_dir):
    torch.manual_seed(0)
    backbone = SwinTransformer(
        embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7, drop_path_rate=0.3,
        use_abs_pos_embed=False, patch_norm=True, out_indices=(0, 1, 2, 3),
    )  # fmt: skip
    decode_head = UPerHead(
        in_channels=[16, 32, 64, 128], in_index=[0, 1, 2, 3], channels=32, pool_scales=(1, 2, 3, 6),
        num_classes=5, dropout_ratio=0.1, norm_cfg=BN, align_corners=False,
    )  # fmt: skip
    auxiliary_head = FCNHead(
        in_channels=64, in_index=2, channels=16, num_convs=1, concat_input=False, num_classes=5,
        dropout_ratio=0.1, norm_cfg=BN, align_corners=False,
    )  # fmt: skip
    parts = {"backbone": backbone, "decode_head": decode_head, "auxiliary_head": auxiliary_head}
    for module in parts.values():
        randomise(module)

    images = torch.round(torch.randn(2, 3, 160, 224) * 8) / 8  # random normal on a 1/8 grid
    images2 = torch.round(torch.randn(1, 3, 200, 136) * 8) / 8
    with torch.no_grad():
        stages = backbone(images)
        stages_b = backbone(images2)

    arrays = state_arrays(parts)
    official = to_official(backbone.state_dict())
    check_official_layout(backbone, official)
    arrays.update({f"official/{name}": tensor.numpy() for name, tensor in official.items()})
    arrays["input/images_nchw"] = nchw(images)
    arrays["input/images2_nchw"] = nchw(images2)
    for i, (a, b) in enumerate(zip(stages, stages_b), start=1):
        arrays[f"out/stage{i}_nchw"] = nchw(a)
        arrays[f"out/stage{i}_b_nchw"] = nchw(b)
    arrays.update(head_arrays(decode_head, auxiliary_head, stages))
    path = os.path.join(out_dir, "upernet_swin_mmseg.npz")
    np.savez_compressed(path, **arrays)
    shapes = ", ".join(f"{tuple(s.shape)}" for s in stages)
    print(
        f"wrote {path}: {len(arrays)} arrays, {os.path.getsize(path) / 1e6:.2f} MB; stages {shapes}"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
