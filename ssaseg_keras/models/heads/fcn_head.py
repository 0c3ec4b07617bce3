"""mmseg's `FCNHead`: a few 3x3 ConvModules on one backbone stage (UperNet's auxiliary head).

    stage[in_index] --num_convs x (3x3 conv + BN + ReLU) (`convs.i`)--> [concat with the stage,
    3x3 ConvModule (`conv_cat`) when concat_input] = F (B, h, w, channels)

UperNet trains it on stage 3 (256 channels, one conv, no concat) with a plain classifier and a
cross-entropy of weight 0.4; it exists only for training. Layer names follow mmseg's modules
(`convs_i`, `conv_cat`), so a checkpoint's `auxiliary_head.*` tensors map one to one.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.models.heads.common import ConvNormAct


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class FCNHead(keras.layers.Layer):
    """Call on the list of stage features (NHWC) -> F (B, h, w, channels) of stage `in_index`.

    Args:
        channels: width of the convs and of F.
        num_convs: 3x3 ConvModules in a row (>= 1).
        kernel_size: their kernel size (odd; mmseg pads k // 2).
        concat_input: concatenate the stage with the convs' output and fuse with `conv_cat`.
        in_index: the stage (0-based) the head reads.
    """

    def __init__(self, channels=256, num_convs=2, kernel_size=3, concat_input=True, in_index=2, **kwargs):
        super().__init__(**kwargs)
        if int(num_convs) < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs!r}")
        self.channels = int(channels)
        self.num_convs = int(num_convs)
        self.kernel_size = int(kernel_size)
        self.concat_input = bool(concat_input)
        self.in_index = int(in_index)

    def _module(self, name, input_shape):
        layer = ConvNormAct(
            self.channels, norm="batch", kernel_size=self.kernel_size, dtype=self.dtype_policy, name=name
        )
        layer.build(tuple(input_shape))
        return layer

    def build(self, input_shape):
        shape = tuple(input_shape[self.in_index])
        inner = shape[:-1] + (self.channels,)
        self.convs = [self._module(f"convs_{i}", shape if i == 0 else inner) for i in range(self.num_convs)]
        if self.concat_input:
            self.conv_cat = self._module("conv_cat", shape[:-1] + (shape[-1] + self.channels,))
        self.built = True

    def call(self, features, training=False):
        stage = features[self.in_index]
        x = stage
        for conv in self.convs:
            x = conv(x, training=training)
        if self.concat_input:
            x = self.conv_cat(ops.concatenate([stage, x], axis=-1), training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[self.in_index][:-1]) + (self.channels,)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "num_convs": self.num_convs,
            "kernel_size": self.kernel_size,
            "concat_input": self.concat_input,
            "in_index": self.in_index,
        }
