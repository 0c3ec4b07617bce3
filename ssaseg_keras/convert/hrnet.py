"""Reference names of HRNet (mmseg `backbone.conv1` / `bn1` / `layer1.*` / `transition{t}.*` /
`stage{s}.{m}.branches.*` / `stage{s}.{m}.fuse_layers.*`, as in the msra / open-mmlab `hrnetv2_w*`
ImageNet checkpoints, whose classification parts are ignored by `load_pretrained_backbone`)."""

from __future__ import annotations

from ssaseg_keras.convert.reference import (
    conv_mapping,
    norm_mapping,
    reference_mapping,
    register_reference_mapping,
)
from ssaseg_keras.models.backbones.hrnet import (
    HRModule,
    HRNetBackbone,
    HRNetBasicBlock,
    HRNetStem,
    HRNetTransition,
)

# Keys of the ImageNet classification file (HRNet-Image-Classification's head) with no place here.
HRNET_CLASSIFICATION_KEYS = (
    "incre_modules.*",
    "downsamp_modules.*",
    "final_layer.*",
    "classifier.*",
)


@register_reference_mapping(HRNetStem)
def stem_mapping(layer):
    yield from conv_mapping(layer.conv1, "conv1")
    yield from norm_mapping(layer.bn1, "bn1")
    yield from conv_mapping(layer.conv2, "conv2")
    yield from norm_mapping(layer.bn2, "bn2")


@register_reference_mapping(HRNetBasicBlock)
def basic_block_mapping(layer):
    yield from conv_mapping(layer.conv1, "conv1")
    yield from norm_mapping(layer.bn1, "bn1")
    yield from conv_mapping(layer.conv2, "conv2")
    yield from norm_mapping(layer.bn2, "bn2")
    if layer.has_downsample:
        yield from conv_mapping(layer.downsample_conv, "downsample.0")
        yield from norm_mapping(layer.downsample_norm, "downsample.1")


@register_reference_mapping(HRNetTransition)
def transition_mapping(layer):
    # Sequential(conv, BN, ReLU) for a width change; Sequential of those for a new branch.
    for index, (conv, norm) in enumerate(zip(layer.convs, layer.norms)):
        prefix = f"{index}." if layer.nested else ""
        yield from conv_mapping(conv, f"{prefix}0")
        yield from norm_mapping(norm, f"{prefix}1")


@register_reference_mapping(HRModule)
def hr_module_mapping(layer):
    for index, block in enumerate(layer.blocks):
        branch, k = divmod(index, layer.num_blocks)
        yield from reference_mapping(block, prefix=f"branches.{branch}.{k}.")
    for (i, j), units in layer.fuse_units.items():
        for k, unit in enumerate(units):
            # j > i: Sequential(conv1x1, BN, Upsample); j < i: Sequential of (conv3x3 s2, BN[, ReLU]).
            prefix = f"fuse_layers.{i}.{j}." + ("" if j > i else f"{k}.")
            yield from conv_mapping(layer.fuse_convs[unit], f"{prefix}0")
            yield from norm_mapping(layer.fuse_norms[unit], f"{prefix}1")


@register_reference_mapping(HRNetBackbone)
def hrnet_mapping(model):
    for layer in model.layers:
        name = layer.name
        if name == "stem":
            yield from reference_mapping(layer)
        elif name.startswith(("layer1_", "transition", "stage")):
            head, _, index = name.rpartition("_")
            yield from reference_mapping(layer, prefix=f"{head}.{index}.")
