"""UPerNet's decode head (mmseg's `UPerHead`): pyramid pooling on the last stage + a top-down FPN.

    stage 4 --PPM: adaptive average pool to 1x1, 2x2, 3x3, 6x6, each 1x1 conv + BN + ReLU, resized
              back (bilinear, half-pixel); concat with stage 4 --3x3 ConvModule (`bottleneck`)--> P4
    stage i < 4 --1x1 ConvModule (`lateral_convs.i`)--> L_i;  top-down: L_i += resize(L_{i+1})
    fpn_outs = [3x3 ConvModule (`fpn_convs.i`)(L_i) for i < 4] + [P4], each resized to stage 1's size,
    concat --3x3 ConvModule (`fpn_bottleneck`)--> F (B, H/4, W/4, channels)

F is what the classifier reads (the reference's `UPerHead_ssa` puts SSA exactly there). Layer names
follow mmseg's module names (`psp_modules_i` for `psp_modules.i.1`), so an mmseg checkpoint's
`decode_head.*` tensors map one to one.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.models.heads.common import ConvNormAct
from ssaseg_keras.ops.resize import resize_bilinear


def adaptive_average_pool(x, output_size):
    """torch's `AdaptiveAvgPool2d(output_size)` on NHWC x: output cell i of a side of length L
    averages [floor(i L / s), ceil((i + 1) L / s)) (bins overlap when s does not divide L).

    (B, H, W, C) -> (B, s, s, C); sizes may be dynamic.
    """
    height, width = ops.shape(x)[1], ops.shape(x)[2]

    def bins(length):
        cells = ops.arange(output_size, dtype="int32")
        start = (cells * length) // output_size
        end = ((cells + 1) * length + output_size - 1) // output_size
        positions = ops.arange(length, dtype="int32")
        inside = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
        weights = ops.cast(inside, "float32") / ops.cast(end - start, "float32")[:, None]
        return ops.cast(weights, x.dtype)  # (s, L)

    return ops.einsum("ih,bhwc,jw->bijc", bins(height), x, bins(width))


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class UPerHead(keras.layers.Layer):
    """Call on the list of 4 stage features (NHWC) -> F (B, H_1, W_1, channels).

    Args:
        channels: width of every ConvModule and of F (512 in UperNet-Swin).
        pool_scales: the pyramid pooling output sizes.
        in_index: the backbone stages (0-based) the head reads; the first sets the output size.
    """

    def __init__(self, channels=512, pool_scales=(1, 2, 3, 6), in_index=(0, 1, 2, 3), **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.in_index = tuple(int(i) for i in in_index)

    def _module(self, name, kernel_size, input_shape):
        layer = ConvNormAct(self.channels, norm="batch", kernel_size=kernel_size, dtype=self.dtype_policy, name=name)
        layer.build(tuple(input_shape))
        return layer

    def build(self, input_shape):
        shapes = [tuple(input_shape[i]) for i in self.in_index]
        top = shapes[-1]
        self.psp_modules = [
            self._module(f"psp_modules_{i}", 1, top) for i in range(len(self.pool_scales))
        ]
        self.bottleneck = self._module(
            "bottleneck", 3, top[:-1] + (top[-1] + len(self.pool_scales) * self.channels,)
        )
        self.lateral_convs = [self._module(f"lateral_convs_{i}", 1, s) for i, s in enumerate(shapes[:-1])]
        self.fpn_convs = [
            self._module(f"fpn_convs_{i}", 3, s[:-1] + (self.channels,)) for i, s in enumerate(shapes[:-1])
        ]
        self.fpn_bottleneck = self._module(
            "fpn_bottleneck", 3, shapes[0][:-1] + (len(shapes) * self.channels,)
        )
        self.built = True

    def pyramid_pooling(self, top, training=False):
        """The PPM branch on the last stage: its bottleneck's output (B, h, w, channels)."""
        size = ops.shape(top)[1:3]
        pooled = [
            resize_bilinear(module(adaptive_average_pool(top, scale), training=training), size, align_corners=False)
            for module, scale in zip(self.psp_modules, self.pool_scales)
        ]
        return self.bottleneck(ops.concatenate([top, *pooled], axis=-1), training=training)

    def call(self, features, training=False):
        inputs = [features[i] for i in self.in_index]
        laterals = [conv(x, training=training) for conv, x in zip(self.lateral_convs, inputs[:-1])]
        laterals.append(self.pyramid_pooling(inputs[-1], training=training))
        for i in range(len(laterals) - 1, 0, -1):  # top-down, over the 4 levels (not pixels)
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(
                laterals[i], ops.shape(laterals[i - 1])[1:3], align_corners=False
            )
        outputs = [conv(lateral, training=training) for conv, lateral in zip(self.fpn_convs, laterals[:-1])]
        outputs.append(laterals[-1])
        size = ops.shape(outputs[0])[1:3]
        outputs = [outputs[0]] + [resize_bilinear(x, size, align_corners=False) for x in outputs[1:]]
        return self.fpn_bottleneck(ops.concatenate(outputs, axis=-1), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[self.in_index[0]][:-1]) + (self.channels,)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "pool_scales": list(self.pool_scales),
            "in_index": list(self.in_index),
        }
