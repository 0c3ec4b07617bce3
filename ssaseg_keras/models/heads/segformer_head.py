"""SegFormer's all-MLP decode head, as the reference trains it (mmseg's `SegformerHead`).

    stage i --1x1 conv + BN + ReLU (`convs.i`) to `channels`--> resize to stage 1's size (bilinear,
    half-pixel) --> concat (stage 1 first) --> 1x1 conv + BN + ReLU (`fusion_conv`) = F

F is at stride 4: (B, H/4, W/4, channels); SSA reads it (the reference's `SegformerHead_ssa` feeds
`fusion_conv`'s output to the classifier). The layer names are mmseg's, so an mmseg SegFormer
checkpoint's `decode_head.convs.*` / `decode_head.fusion_conv.*` load by name.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.models.heads.common import ConvNormAct
from ssaseg_keras.ops.resize import resize_bilinear


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SegFormerHead(keras.layers.Layer):
    """All-MLP head. Call on the list of 4 stage features -> F (B, H_1, W_1, channels).

    Args:
        channels: projection and output width (256 for B0/B1, 768 for B2-B5).
        in_index: the backbone stages (0-based) the head reads; the first sets the output size.
    """

    def __init__(self, channels=256, in_index=(0, 1, 2, 3), **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.in_index = tuple(int(i) for i in in_index)

    def build(self, input_shape):
        policy = self.dtype_policy
        convs = []
        for position, index in enumerate(self.in_index):
            layer = ConvNormAct(self.channels, norm="batch", dtype=policy, name=f"convs_{position}")
            layer.build(input_shape[index])
            convs.append(layer)
        self.convs = convs
        self.fusion_conv = ConvNormAct(self.channels, norm="batch", dtype=policy, name="fusion_conv")
        base = tuple(input_shape[self.in_index[0]][:-1])
        self.fusion_conv.build(base + (self.channels * len(self.in_index),))
        self.built = True

    def call(self, features, training=False):
        selected = [features[i] for i in self.in_index]
        size = ops.shape(selected[0])[1:3]  # Python ints, or dynamic in a graph of unknown size
        projected = [
            resize_bilinear(conv(level, training=training), size, align_corners=False)
            for conv, level in zip(self.convs, selected)
        ]
        return self.fusion_conv(ops.concatenate(projected, axis=-1), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[self.in_index[0]][:-1]) + (self.channels,)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "in_index": list(self.in_index)}
