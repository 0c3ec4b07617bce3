"""mmseg's `FCNHead`: a few 3x3 ConvModules on one backbone stage (UperNet's auxiliary head), or on
the resized concatenation of several (OCRNet's soft-object-region stage).

    stage[in_index] (or the resize_concat of stages in_index) --num_convs x (3x3 conv + BN + ReLU)
    (`convs.i`)--> [concat with the stage,
    3x3 ConvModule (`conv_cat`) when concat_input] = F (B, h, w, channels)

UperNet trains it on stage 3 (256 channels, one conv, no concat) with a plain classifier and a
cross-entropy of weight 0.4; it exists only for training. Layer names follow mmseg's modules
(`convs_i`, `conv_cat`), so a checkpoint's `auxiliary_head.*` tensors map one to one.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.models.heads.common import ConvNormAct, resize_concat, resize_concat_shape


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class FCNHead(keras.layers.Layer):
    """Call on the list of stage features (NHWC) -> F (B, h, w, channels) of stage `in_index`.

    Args:
        channels: width of the convs and of F.
        num_convs: 3x3 ConvModules in a row (>= 1).
        kernel_size: their kernel size (odd; mmseg pads k // 2).
        concat_input: concatenate the stage with the convs' output and fuse with `conv_cat`.
        in_index: the stage (0-based) the head reads, or a list of stages: mmseg's "resize_concat"
            input (each resized to the first one's size, half-pixel, and concatenated).
        bn_momentum: the BatchNorms' moving-average momentum (Keras convention; 0.9 = torch's 0.1).
    """

    def __init__(self, channels=256, num_convs=2, kernel_size=3, concat_input=True, in_index=2, bn_momentum=0.9,
                 **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        if int(num_convs) < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs!r}")
        self.channels = int(channels)
        self.num_convs = int(num_convs)
        self.kernel_size = int(kernel_size)
        self.concat_input = bool(concat_input)
        self.in_index = [int(i) for i in in_index] if isinstance(in_index, list | tuple) else int(in_index)
        self.bn_momentum = float(bn_momentum)

    def _module(self, name, input_shape):
        layer = ConvNormAct(
            self.channels, norm="batch", kernel_size=self.kernel_size, momentum=self.bn_momentum,
            dtype=self.dtype_policy, name=name,
        )  # fmt: skip
        layer.build(tuple(input_shape))
        return layer

    def _input_shape(self, input_shape):
        if isinstance(self.in_index, list):
            return resize_concat_shape(input_shape, self.in_index)
        return tuple(input_shape[self.in_index])

    def build(self, input_shape):
        shape = self._input_shape(input_shape)
        inner = shape[:-1] + (self.channels,)
        self.convs = [self._module(f"convs_{i}", shape if i == 0 else inner) for i in range(self.num_convs)]
        if self.concat_input:
            self.conv_cat = self._module("conv_cat", shape[:-1] + (shape[-1] + self.channels,))
        self.built = True

    def call(self, features, training=False):
        stage = resize_concat(features, self.in_index) if isinstance(self.in_index, list) else features[self.in_index]
        x = stage
        for conv in self.convs:
            x = conv(x, training=training)
        if self.concat_input:
            x = self.conv_cat(ops.concatenate([stage, x], axis=-1), training=training)
        return x

    def compute_output_shape(self, input_shape):
        return self._input_shape(input_shape)[:-1] + (self.channels,)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "num_convs": self.num_convs,
            "kernel_size": self.kernel_size,
            "concat_input": self.concat_input,
            "in_index": self.in_index,
            "bn_momentum": self.bn_momentum,
        }
