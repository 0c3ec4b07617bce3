"""HRNetV2 (mmseg's `HRNet`, the OCRNet backbone), keras.ops only.

    images (B, H, W, 3) --stem (2 x conv3x3 s2 + BN + ReLU)--> layer1 (4 Bottlenecks, 64 -> 256)
      --transition1--> 2 branches --stage2 (HRModules)--> --transition2--> 3 branches --stage3-->
      --transition3--> 4 branches --stage4--> [4 branch outputs at strides 4, 8, 16, 32] NHWC

Each HRModule runs its branches (BasicBlocks) side by side, then fuses them: output branch i sums
every branch j, a lower-resolution j through a 1x1 conv + BN and a bilinear upsampling by 2^(j-i)
(half-pixel) that is then resized to branch i's size (the two resizes differ from one when a side is
not a multiple of 32, as mmseg's), a higher-resolution j through (i - j) 3x3 stride-2 conv + BN
(ReLU between them), followed by a ReLU. A transition turns the branches of one stage into the next:
a 3x3 conv + BN + ReLU where a branch's width changes, and a new branch from the lowest-resolution
one through 3x3 stride-2 convs. Convolutions have no bias; BN has eps 1e-5 and torch momentum 0.1;
torch's zero padding of the stride-2 convolutions is explicit.

HRNetV2-W48 (the reference's `hrnetv2_w48`): branch widths 48, 96, 192, 384; 1, 1, 4, 3 modules in
stages 1-4, 4 blocks per branch. Layer names follow mmseg's (`stage{s}_{m}` for `stage{s}.{m}`), so the
reference-name mapping (`ssaseg_keras.convert.hrnet`) is one to one.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.models.backbones.base import Backbone
from ssaseg_keras.models.backbones.resnet import (
    EXPANSION,
    ResNetBottleneck,
    bn_layer,
    conv_layer,
    torch_pad,
)
from ssaseg_keras.ops.resize import resize_bilinear

# Stages 2-4 of HRNetV2 (stage 1 is fixed: one module of 4 Bottlenecks at 64 channels).
HRNET_W48 = {"widths": (48, 96, 192, 384), "modules": (1, 4, 3), "blocks": 4}


def _conv_norm(filters, kernel, strides, name, policy, input_shape):
    conv = conv_layer(filters, kernel, f"{name}conv_layer", policy, strides=strides)
    conv.build(tuple(input_shape))
    norm = bn_layer(f"{name}_bn", policy)
    norm.build(tuple(input_shape[:-1]) + (filters,))
    return conv, norm


def _run(conv, norm, x, training, relu):
    """conv (torch padding (k - 1) / 2) + BN (+ ReLU)."""
    x = norm(conv(torch_pad(x, conv.kernel_size[0] // 2)), training=training)
    return ops.relu(x) if relu else x


def _half(size):
    return None if size is None else (size - 1) // 2 + 1


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class HRNetStem(keras.layers.Layer):
    """conv3x3 s2 (64) + BN + ReLU, conv3x3 s2 (64) + BN + ReLU: (B, H, W, 3) -> (B, H/4, W/4, 64)."""

    def __init__(self, channels=64, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.conv1, self.bn1 = _conv_norm(self.channels, 3, 2, "stem1", self.dtype_policy, shape)
        self.conv2, self.bn2 = _conv_norm(
            self.channels, 3, 2, "stem2", self.dtype_policy, shape[:-1] + (self.channels,)
        )
        self.built = True

    def call(self, x, training=False):
        x = _run(self.conv1, self.bn1, x, training, relu=True)
        return _run(self.conv2, self.bn2, x, training, relu=True)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, _half(_half(height)), _half(_half(width)), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class HRNetBasicBlock(keras.layers.Layer):
    """mmseg's BasicBlock: conv3x3 + BN + ReLU, conv3x3 + BN, + shortcut (1x1 conv + BN when the width
    changes), ReLU. (B, H, W, Cin) -> (B, H, W, planes)."""

    def __init__(self, planes, **kwargs):
        super().__init__(**kwargs)
        self.planes = int(planes)

    def build(self, input_shape):
        policy, shape = self.dtype_policy, tuple(input_shape)
        inner = shape[:-1] + (self.planes,)
        self.conv1, self.bn1 = _conv_norm(self.planes, 3, 1, "block1", policy, shape)
        self.conv2, self.bn2 = _conv_norm(self.planes, 3, 1, "block2", policy, inner)
        self.has_downsample = shape[-1] != self.planes
        if self.has_downsample:
            self.downsample_conv, self.downsample_norm = _conv_norm(
                self.planes, 1, 1, "downsample", policy, shape
            )
        self.built = True

    def call(self, x, training=False):
        y = _run(self.conv1, self.bn1, x, training, relu=True)
        y = _run(self.conv2, self.bn2, y, training, relu=False)
        shortcut = x
        if self.has_downsample:
            shortcut = _run(self.downsample_conv, self.downsample_norm, x, training, relu=False)
        return ops.relu(y + shortcut)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.planes,)

    def get_config(self):
        return {**super().get_config(), "planes": self.planes}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class HRNetTransition(keras.layers.Layer):
    """One branch of a transition: 3x3 conv + BN + ReLU units in a row (mmseg's `transition{t}.{i}`).

    Args:
        widths: each unit's output width.
        strides: each unit's stride (1: a width change on the same branch; 2: towards a new branch).
        nested: mmseg keeps a new branch's units as a Sequential of Sequentials (`.{k}.0` / `.{k}.1`),
            a width change as one Sequential (`.0` / `.1`); only the reference names depend on it.
    """

    def __init__(self, widths, strides, nested=True, **kwargs):
        super().__init__(**kwargs)
        self.widths = [int(w) for w in widths]
        self.strides = [int(s) for s in strides]
        self.nested = bool(nested)

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.convs, self.norms = [], []
        for index, (width, stride) in enumerate(zip(self.widths, self.strides)):
            conv, norm = _conv_norm(width, 3, stride, f"unit{index}", self.dtype_policy, shape)
            self.convs.append(conv)
            self.norms.append(norm)
            shape = shape[:-1] + (width,)
        self.built = True

    def call(self, x, training=False):
        for conv, norm in zip(self.convs, self.norms):
            x = _run(conv, norm, x, training, relu=True)
        return x

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        for stride in self.strides:
            if stride == 2:
                height, width = _half(height), _half(width)
        return (batch, height, width, self.widths[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "widths": self.widths,
            "strides": self.strides,
            "nested": self.nested,
        }


def upsample_to(x, factor, size):
    """mmseg's fuse upsampling: bilinear (half-pixel) by `factor`, then resized to `size` (H, W) when
    that differs (a side not a multiple of the stride); one resize when the sizes agree."""
    shape = ops.shape(x)
    x = resize_bilinear(x, (shape[1] * factor, shape[2] * factor), align_corners=False)
    return resize_bilinear(x, size, align_corners=False)


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class HRModule(keras.layers.Layer):
    """Call on the list of branch inputs (B, H_b, W_b, C_b) -> the list of fused branch outputs.

    Args:
        widths: the branches' widths C_b (the inputs already have them).
        num_blocks: BasicBlocks per branch.
        multiscale_output: fuse into every branch (True) or into the first only.
    """

    def __init__(self, widths, num_blocks=4, multiscale_output=True, **kwargs):
        super().__init__(**kwargs)
        self.widths = [int(w) for w in widths]
        self.num_blocks = int(num_blocks)
        self.multiscale_output = bool(multiscale_output)

    @property
    def num_outputs(self):
        return len(self.widths) if self.multiscale_output else 1

    def build(self, input_shape):
        policy = self.dtype_policy
        shapes = [tuple(s) for s in input_shape]
        if len(shapes) != len(self.widths):
            raise ValueError(f"HRModule: {len(shapes)} inputs for {len(self.widths)} branches")
        self.blocks = []  # flat, branch-major: blocks[b * num_blocks + k]
        for branch, (shape, width) in enumerate(zip(shapes, self.widths)):
            for k in range(self.num_blocks):
                block = HRNetBasicBlock(width, dtype=policy, name=f"branch{branch}_{k}")
                block.build(shape if k == 0 else shape[:-1] + (width,))
                self.blocks.append(block)
        # fuse units by (i, j): j > i one (conv1x1, BN); j < i (i - j) (conv3x3 s2, BN) units.
        self.fuse_units = {}
        self.fuse_convs, self.fuse_norms = [], []  # flat lists so Keras tracks the variables
        for i in range(self.num_outputs):
            for j in range(len(self.widths)):
                if j == i:
                    continue
                shape = shapes[j][:-1] + (self.widths[j],)
                units = []
                steps = [(self.widths[i], 1, 1)] if j > i else [
                    (self.widths[i] if k == i - j - 1 else self.widths[j], 3, 2) for k in range(i - j)
                ]  # fmt: skip
                for k, (width, kernel, stride) in enumerate(steps):
                    conv, norm = _conv_norm(
                        width, kernel, stride, f"fuse{i}_{j}_{k}", policy, shape
                    )
                    units.append(len(self.fuse_convs))
                    self.fuse_convs.append(conv)
                    self.fuse_norms.append(norm)
                    shape = shape[:-1] + (width,)
                self.fuse_units[(i, j)] = units
        self.built = True

    def fuse_unit(self, i, j):
        """The (conv, BN) pairs that carry branch j into output i."""
        return [(self.fuse_convs[u], self.fuse_norms[u]) for u in self.fuse_units[(i, j)]]

    def call(self, inputs, training=False):
        branches = []
        for branch, x in enumerate(inputs):
            for k in range(self.num_blocks):
                x = self.blocks[branch * self.num_blocks + k](x, training=training)
            branches.append(x)
        if len(branches) == 1:
            return branches
        outputs = []
        for i in range(self.num_outputs):
            size = ops.shape(branches[i])[1:3]
            total = branches[i]
            for j, x in enumerate(branches):
                if j == i:
                    continue
                units = self.fuse_unit(i, j)
                for k, (conv, norm) in enumerate(units):
                    x = _run(conv, norm, x, training, relu=j < i and k < len(units) - 1)
                if j > i:
                    x = upsample_to(x, 2 ** (j - i), size)
                total = total + x
            outputs.append(ops.relu(total))
        return outputs

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s[:-1]) + (w,) for s, w in zip(input_shape, self.widths)]
        return shapes[: self.num_outputs]

    def get_config(self):
        return {
            **super().get_config(),
            "widths": self.widths,
            "num_blocks": self.num_blocks,
            "multiscale_output": self.multiscale_output,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class HRNetBackbone(Backbone):
    """mmseg's HRNet (V2: every branch out) as a functional model: images -> [4 branches] NHWC.

    Args:
        widths: the 4 branch widths of stages 2-4 ((48, 96, 192, 384) for W48, (18, 36, 72, 144) W18).
        modules: HRModules in stages 2, 3, 4 ((1, 4, 3)).
        blocks: BasicBlocks per branch in stages 2-4 (4).
        stem_channels: the stem's width (64, fixed in mmseg).
        stage1_channels: stage 1's bottleneck width (64; stage 1 outputs 4x that).
        stage1_blocks: Bottlenecks in stage 1 (4).
        image_shape: input shape (H, W, 3); H and W may be None.
    """

    def __init__(self, widths=HRNET_W48["widths"], modules=HRNET_W48["modules"], blocks=HRNET_W48["blocks"],
                 stem_channels=64, stage1_channels=64, stage1_blocks=4, image_shape=(None, None, 3), dtype=None,
                 **kwargs):  # fmt: skip
        widths = [int(w) for w in widths]
        modules = [int(m) for m in modules]
        if len(widths) != 4 or len(modules) != 3:
            raise ValueError(
                f"HRNet needs 4 branch widths and 3 module counts; got {widths}, {modules}"
            )
        inputs = keras.Input(shape=tuple(image_shape), name="images")
        x = HRNetStem(stem_channels, dtype=dtype, name="stem")(inputs)
        for k in range(int(stage1_blocks)):
            x = ResNetBottleneck(int(stage1_channels), dtype=dtype, name=f"layer1_{k}")(x)
        branches, previous = [x], [int(stage1_channels) * EXPANSION]
        for stage, count in enumerate(modules, start=2):
            current = widths[:stage]
            # The transition from the previous stage's branches (mmseg's _make_transition_layer).
            inputs_next = []
            for i, width in enumerate(current):
                if i < len(previous):
                    if width == previous[i]:
                        inputs_next.append(branches[i])
                        continue
                    layer = HRNetTransition(
                        [width], [1], nested=False, dtype=dtype, name=f"transition{stage - 1}_{i}"
                    )
                    inputs_next.append(layer(branches[i]))
                else:
                    steps = i + 1 - len(previous)
                    units = [width if k == steps - 1 else previous[-1] for k in range(steps)]
                    layer = HRNetTransition(
                        units, [2] * steps, dtype=dtype, name=f"transition{stage - 1}_{i}"
                    )
                    inputs_next.append(layer(branches[-1]))
            branches = inputs_next
            for m in range(count):
                branches = HRModule(current, int(blocks), dtype=dtype, name=f"stage{stage}_{m}")(
                    branches
                )
                branches = list(branches)
            previous = current
        super().__init__(inputs=inputs, outputs=branches, dtype=dtype, **kwargs)
        self.widths = widths
        self.modules_per_stage = modules
        self.blocks = int(blocks)
        self.stem_channels = int(stem_channels)
        self.stage1_channels = int(stage1_channels)
        self.stage1_blocks = int(stage1_blocks)
        self.image_shape = tuple(image_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "widths": self.widths,
            "modules": self.modules_per_stage,
            "blocks": self.blocks,
            "stem_channels": self.stem_channels,
            "stage1_channels": self.stage1_channels,
            "stage1_blocks": self.stage1_blocks,
            "image_shape": self.image_shape,
        }
