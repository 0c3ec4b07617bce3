"""mmseg's `OCRHead` (OCRNet's second cascade stage): object-contextual representations.

    stages --resize_concat--> (B, h, w, sum C_i) --3x3 ConvModule (`bottleneck`)--> X (B, h, w, C)
    soft regions R (B, h, w, K) (the FCN stage's logits) --SpatialGather: softmax over pixels of R,
        region features = softmax(R)^T X--> (B, K, C)
    ObjectAttentionBlock(X, regions): query = 2 x 1x1 ConvModule(X) (B, hw, C'), key = 2 x 1x1
        ConvModule(regions), value = 1x1 ConvModule(regions) (B, K, C'); attention softmax(q k^T / sqrt(C'))
        over the K regions; context = 1x1 ConvModule(attention v) (B, h, w, C); F = 1x1 ConvModule
        ([context, X]) (`bottleneck`) (B, h, w, C)

F, the object-context features (512 channels in OCRNet), is what the classifier reads: the plain 1x1
`conv_seg` of the baseline, or the SSA classifier where the reference's `OCRHead_ssa` puts it. The
FCN stage (`models.heads.FCNHead` + a plain classifier, `Segmentor`'s `region_head`) supplies R.
The attention's products and softmaxes run in float32. Layer names follow mmseg's modules.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.models.heads.common import ConvNormAct, resize_concat, resize_concat_shape


def spatial_gather(features, region_logits, scale=1.0):
    """mmseg's SpatialGatherModule: per region k, the average of the pixel features weighted by the
    softmax over pixels of scale x region logit k. (B, h, w, C), (B, h, w, K) -> (B, K, C) float32."""
    batch = ops.shape(features)[0]
    channels, classes = features.shape[-1], region_logits.shape[-1]
    probabilities = ops.softmax(
        ops.reshape(ops.cast(region_logits, "float32") * scale, (batch, -1, classes)), axis=1
    )
    pixels = ops.reshape(ops.cast(features, "float32"), (batch, -1, channels))
    return ops.einsum("bpk,bpc->bkc", probabilities, pixels)


def _projection(widths, name, policy, input_shape):
    """1x1 ConvModules (conv + BN + ReLU) in a row: mmseg's `build_project` with `use_conv_module`."""
    modules, shape = [], tuple(input_shape)
    for index, width in enumerate(widths):
        module = ConvNormAct(
            width, norm="batch", kernel_size=1, dtype=policy, name=f"{name}_{index}"
        )
        module.build(shape)
        modules.append(module)
        shape = shape[:-1] + (width,)
    return modules


def _apply(modules, x, training):
    for module in modules:
        x = module(x, training=training)
    return x


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class ObjectAttentionBlock(keras.layers.Layer):
    """Call(pixels (B, h, w, C), regions (B, K, C)) -> (B, h, w, C): mmseg's `ObjectAttentionBlock`
    (a SelfAttentionBlock with 2-conv key / query projections, 1-conv value / out projections, all
    ConvModules, scaled dot products, then a 1x1 ConvModule on [context, pixels]).

    Args:
        key_channels: C' of the key / query / value projections (OCRNet's `ocr_channels`, 256).
    """

    def __init__(self, key_channels=256, **kwargs):
        super().__init__(**kwargs)
        self.key_channels = int(key_channels)

    def build(self, input_shape):
        pixel_shape = tuple(input_shape)
        channels, policy, inner = pixel_shape[-1], self.dtype_policy, self.key_channels
        region_shape = (None, None, 1, channels)  # regions run as a (B, K, 1, C) image, as mmseg's
        self.query_project = _projection([inner, inner], "query_project", policy, pixel_shape)
        self.key_project = _projection([inner, inner], "key_project", policy, region_shape)
        self.value_project = _projection([inner], "value_project", policy, region_shape)
        self.out_project = _projection(
            [channels], "out_project", policy, pixel_shape[:-1] + (inner,)
        )
        self.bottleneck = _projection(
            [channels], "bottleneck", policy, pixel_shape[:-1] + (2 * channels,)
        )
        self.built = True

    def call(self, pixels, regions, training=False):
        batch, height, width = ops.shape(pixels)[0], ops.shape(pixels)[1], ops.shape(pixels)[2]
        regions = ops.cast(regions, self.compute_dtype)[:, :, None, :]  # (B, K, 1, C)
        query = ops.reshape(
            _apply(self.query_project, pixels, training), (batch, -1, self.key_channels)
        )
        key = _apply(self.key_project, regions, training)[:, :, 0, :]  # (B, K, C')
        value = _apply(self.value_project, regions, training)[:, :, 0, :]
        similarity = ops.einsum(
            "bpc,bkc->bpk", ops.cast(query, "float32"), ops.cast(key, "float32")
        )
        attention = ops.softmax(similarity * self.key_channels**-0.5, axis=-1)
        context = ops.einsum("bpk,bkc->bpc", attention, ops.cast(value, "float32"))
        context = ops.reshape(
            ops.cast(context, self.compute_dtype), (batch, height, width, self.key_channels)
        )
        context = _apply(self.out_project, context, training)
        return _apply(self.bottleneck, ops.concatenate([context, pixels], axis=-1), training)

    def compute_output_shape(self, input_shape, regions_shape=None):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "key_channels": self.key_channels}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class OCRHead(keras.layers.Layer):
    """Call(stage features list, region logits (B, h, w, K)) -> F (B, h, w, channels).

    Args:
        channels: width of the bottleneck and of F (512).
        ocr_channels: the attention's key / query / value width (256).
        in_index: the stages read (resize_concat: resized to the first one's size and concatenated).
        scale: the region logits' multiplier before the spatial softmax (mmseg's `scale`, 1).
    """

    def __init__(self, channels=512, ocr_channels=256, in_index=(0, 1, 2, 3), scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.ocr_channels = int(ocr_channels)
        self.in_index = [int(i) for i in in_index]
        self.scale = float(scale)

    def build(self, input_shape, region_shape=None):
        policy = self.dtype_policy
        shape = resize_concat_shape([tuple(s) for s in input_shape], self.in_index)
        self.bottleneck = ConvNormAct(
            self.channels, norm="batch", kernel_size=3, dtype=policy, name="bottleneck"
        )
        self.bottleneck.build(shape)
        self.object_context_block = ObjectAttentionBlock(
            self.ocr_channels, dtype=policy, name="object_context_block"
        )
        self.object_context_block.build(shape[:-1] + (self.channels,))
        self.built = True

    def call(self, features, region_logits, training=False):
        pixels = self.bottleneck(resize_concat(features, self.in_index), training=training)
        regions = spatial_gather(pixels, region_logits, self.scale)
        return self.object_context_block(pixels, regions, training=training)

    def compute_output_shape(self, input_shape, region_shape=None):
        return resize_concat_shape([tuple(s) for s in input_shape], self.in_index)[:-1] + (
            self.channels,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "ocr_channels": self.ocr_channels,
            "in_index": self.in_index,
            "scale": self.scale,
        }
