"""Small building blocks shared by the decode heads."""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.layers.batch_norm import SyncBatchNormalization

NORM_EPS = 1e-5


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class ConvNormAct(keras.layers.Layer):
    """Conv (no bias) + norm + optional ReLU, mmseg's `ConvModule`. (B, H, W, Cin) -> (B, H, W, C).

    Args:
        filters: output channels C.
        kernel_size: 1 or an odd size, stride 1, zero padding (k - 1) / 2 on every side (mmseg's
            `padding=1` for 3x3), so the output has the input's size.
        norm: "group" (GroupNorm with `groups` groups) or "batch" (BatchNorm); eps 1e-5.
        groups: GroupNorm groups.
        activation: apply ReLU after the norm.
        momentum: BatchNorm's moving-average momentum (Keras convention: 0.9 = torch's 0.1).
    """

    def __init__(self, filters, norm="group", groups=32, activation=True, kernel_size=1, momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        if norm not in ("group", "batch"):
            raise ValueError(f"norm must be 'group' or 'batch', got {norm!r}")
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size!r}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.norm = norm
        self.groups = int(groups)
        self.activation = bool(activation)
        self.momentum = float(momentum)

    def build(self, input_shape):
        policy = self.dtype_policy
        self.conv = keras.layers.Conv2D(
            self.filters, self.kernel_size, padding="same", use_bias=False, dtype=policy, name="conv"
        )
        if self.norm == "group":
            self.norm_layer = keras.layers.GroupNormalization(
                self.groups, epsilon=NORM_EPS, dtype=policy, name="gn"
            )
        else:
            self.norm_layer = SyncBatchNormalization(
                epsilon=NORM_EPS, momentum=self.momentum, dtype=policy, name="bn"
            )
        self.conv.build(input_shape)
        self.norm_layer.build(tuple(input_shape[:-1]) + (self.filters,))
        self.built = True

    def call(self, x, training=False):
        x = self.norm_layer(self.conv(x), training=training)
        return ops.relu(x) if self.activation else x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "norm": self.norm,
            "groups": self.groups,
            "activation": self.activation,
            "kernel_size": self.kernel_size,
            "momentum": self.momentum,
        }


def resize_concat(features, in_index):
    """mmseg's `input_transform="resize_concat"`: the selected stages resized (bilinear, half-pixel)
    to the first one's size and concatenated on channels. (B, h_i, w_i, C_i) -> (B, h, w, sum C_i)."""
    from ssaseg_keras.ops.resize import resize_bilinear

    selected = [features[i] for i in in_index]
    size = ops.shape(selected[0])[1:3]
    resized = [selected[0]] + [resize_bilinear(x, size, align_corners=False) for x in selected[1:]]
    return ops.concatenate(resized, axis=-1)


def resize_concat_shape(input_shape, in_index):
    """The shape `resize_concat` gives for the stage shapes `input_shape`."""
    shapes = [tuple(input_shape[i]) for i in in_index]
    return shapes[0][:-1] + (sum(int(s[-1]) for s in shapes),)
