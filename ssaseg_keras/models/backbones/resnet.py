"""ResNetV1c with dilation (mmseg's `ResNetV1c`, the FCN / DeepLab "-D8" backbones), keras.ops only.

    images (B, H, W, 3) --deep stem (3 x conv3x3 + BN + ReLU, the first stride 2) + max-pool 3x3 s2-->
    layer1 .. layer4 of Bottlenecks --> [4 stage features] NHWC

"D8" (the reference's FCN configs): strides 1, 2, 1, 1 and dilations 1, 1, 2, 4 in layers 1-4, so the
stages are at strides 4, 8, 8, 8; with `contract_dilation` the first block of a dilated layer uses
half its dilation. Bottlenecks are "pytorch" style (the stride in the 3x3 conv), expansion 4; a
block whose shape changes has a 1x1 conv + BN shortcut (`downsample`). Convolutions have no bias
(BN follows), torch's zero padding is explicit, BN has eps 1e-5 and torch momentum 0.1.

Layer names follow mmseg's: `stem`, `layer{i}_{j}` (mmseg `layer{i}.{j}`), so the reference-name
mapping (`ssaseg_keras.convert.resnet`) is one to one.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.layers.batch_norm import SyncBatchNormalization
from ssaseg_keras.models.backbones.base import Backbone

NORM_EPS = 1e-5
BN_MOMENTUM = 0.9  # torch momentum 0.1
EXPANSION = 4
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def bn_layer(name, policy):
    return SyncBatchNormalization(epsilon=NORM_EPS, momentum=BN_MOMENTUM, dtype=policy, name=name)


def conv_layer(filters, kernel, name, policy, strides=1, dilation=1):
    return keras.layers.Conv2D(
        filters, kernel, strides=strides, dilation_rate=dilation, use_bias=False, dtype=policy, name=name
    )


def torch_pad(x, amount):
    """torch's zero padding of `amount` pixels on every spatial side (NHWC)."""
    return x if amount == 0 else ops.pad(x, ((0, 0), (amount, amount), (amount, amount), (0, 0)))


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class ResNetDeepStem(keras.layers.Layer):
    """conv3x3 s2 (C/2) + BN + ReLU, conv3x3 (C/2) + BN + ReLU, conv3x3 (C) + BN + ReLU, max-pool 3x3 s2
    (torch padding 1). (B, H, W, 3) -> (B, H/4, W/4, C)."""

    def __init__(self, channels=64, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def build(self, input_shape):
        policy = self.dtype_policy
        half = self.channels // 2
        widths = (half, half, self.channels)
        self.convs, self.norms = [], []
        shape = tuple(input_shape)
        for index, width in enumerate(widths):
            conv = conv_layer(width, 3, f"conv{index}", policy, strides=2 if index == 0 else 1)
            conv.build(shape[:-1] + (shape[-1],))
            norm = bn_layer(f"norm{index}", policy)
            norm.build(shape[:-1] + (width,))
            self.convs.append(conv)
            self.norms.append(norm)
            shape = shape[:-1] + (width,)
        self.built = True

    def call(self, x, training=False):
        for conv, norm in zip(self.convs, self.norms):
            x = ops.relu(norm(conv(torch_pad(x, 1)), training=training))
        # After the ReLU every value is >= 0, so zero padding gives torch's -inf-padded max-pool.
        return ops.max_pool(torch_pad(x, 1), 3, strides=2, padding="valid")

    def compute_output_shape(self, input_shape):
        def half(size):
            return None if size is None else (size - 1) // 2 + 1

        batch, height, width, _ = input_shape
        return (batch, half(half(height)), half(half(width)), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class ResNetBottleneck(keras.layers.Layer):
    """mmseg's Bottleneck ("pytorch" style): 1x1 (planes) -> 3x3 stride/dilation (planes) -> 1x1
    (4 x planes), BN after each, ReLU after the first two and after the residual sum. The shortcut is a
    1x1 conv (stride) + BN when the shape changes."""

    def __init__(self, planes, strides=1, dilation=1, **kwargs):
        super().__init__(**kwargs)
        self.planes = int(planes)
        self.strides = int(strides)
        self.dilation = int(dilation)

    def build(self, input_shape):
        policy = self.dtype_policy
        channels = input_shape[-1]
        out = self.planes * EXPANSION
        self.conv1 = conv_layer(self.planes, 1, "conv1", policy)
        self.bn1 = bn_layer("bn1", policy)
        self.conv2 = conv_layer(self.planes, 3, "conv2", policy, strides=self.strides, dilation=self.dilation)
        self.bn2 = bn_layer("bn2", policy)
        self.conv3 = conv_layer(out, 1, "conv3", policy)
        self.bn3 = bn_layer("bn3", policy)
        spatial = tuple(input_shape[:-1])
        self.conv1.build(spatial + (channels,))
        self.bn1.build(spatial + (self.planes,))
        self.conv2.build(spatial + (self.planes,))
        self.bn2.build(spatial + (self.planes,))
        self.conv3.build(spatial + (self.planes,))
        self.bn3.build(spatial + (out,))
        self.has_downsample = self.strides != 1 or channels != out
        if self.has_downsample:
            self.downsample_conv = conv_layer(out, 1, "downsample_conv", policy, strides=self.strides)
            self.downsample_conv.build(spatial + (channels,))
            self.downsample_norm = bn_layer("downsample_norm", policy)
            self.downsample_norm.build(spatial + (out,))
        self.built = True

    def call(self, x, training=False):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = ops.relu(self.bn2(self.conv2(torch_pad(y, self.dilation)), training=training))
        y = self.bn3(self.conv3(y), training=training)
        shortcut = x
        if self.has_downsample:
            shortcut = self.downsample_norm(self.downsample_conv(x), training=training)
        return ops.relu(y + shortcut)

    def compute_output_shape(self, input_shape):
        def scaled(size):
            return None if size is None else (size - 1) // self.strides + 1

        batch, height, width, _ = input_shape
        return (batch, scaled(height), scaled(width), self.planes * EXPANSION)

    def get_config(self):
        return {**super().get_config(), "planes": self.planes, "strides": self.strides, "dilation": self.dilation}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class ResNetV1cBackbone(Backbone):
    """mmseg's ResNetV1c as a functional model: images (B, H, W, 3) -> [layer1 .. layer4] NHWC.

    Args:
        depth: 50, 101 or 152 (Bottleneck counts (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)), or
            `depths` for any other list (tiny test models).
        depths: Bottlenecks per layer (overrides `depth`).
        stem_channels: the deep stem's width (64).
        base_channels: layer 1's bottleneck width (64); layer i has base x 2^(i-1), outputs x 4.
        strides, dilations: per layer ((1, 2, 1, 1) and (1, 1, 2, 4) for "D8").
        contract_dilation: the first block of a dilated layer uses half the dilation (mmseg's True).
        image_shape: input shape (H, W, 3); H and W may be None.
    """

    def __init__(self, depth=101, depths=None, stem_channels=64, base_channels=64, strides=(1, 2, 1, 1),
                 dilations=(1, 1, 2, 4), contract_dilation=True, image_shape=(None, None, 3), dtype=None,
                 **kwargs):  # fmt: skip
        if depths is None:
            if int(depth) not in DEPTHS:
                raise ValueError(f"ResNetV1c depth must be one of {sorted(DEPTHS)} (or give depths), got {depth}")
            depths = DEPTHS[int(depth)]
        depths = [int(d) for d in depths]
        strides = [int(s) for s in strides]
        dilations = [int(d) for d in dilations]
        if not (len(depths) == len(strides) == len(dilations) == 4):
            raise ValueError(f"ResNetV1c needs 4 layers; got depths {depths}, strides {strides}, dilations {dilations}")
        inputs = keras.Input(shape=tuple(image_shape), name="images")
        x = ResNetDeepStem(stem_channels, dtype=dtype, name="stem")(inputs)
        outputs = []
        for layer, (count, stride, dilation) in enumerate(zip(depths, strides, dilations), start=1):
            planes = int(base_channels) * 2 ** (layer - 1)
            for block in range(count):
                first_dilation = dilation // 2 if (contract_dilation and dilation > 1 and block == 0) else dilation
                x = ResNetBottleneck(
                    planes,
                    strides=stride if block == 0 else 1,
                    dilation=first_dilation,
                    dtype=dtype,
                    name=f"layer{layer}_{block}",
                )(x)
            outputs.append(x)
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.depth = int(depth)
        self.depths = depths
        self.stem_channels = int(stem_channels)
        self.base_channels = int(base_channels)
        self.strides_per_layer = strides
        self.dilations = dilations
        self.contract_dilation = bool(contract_dilation)
        self.image_shape = tuple(image_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "depth": self.depth,
            "depths": self.depths,
            "stem_channels": self.stem_channels,
            "base_channels": self.base_channels,
            "strides": self.strides_per_layer,
            "dilations": self.dilations,
            "contract_dilation": self.contract_dilation,
            "image_shape": self.image_shape,
        }
