"""EfficientFormerV2 (Li et al., ICCV 2023), CGRSeg's backbone, keras.ops only, channels-last.

    images (B, H, W, 3) --patch_embed (2 x conv3x3 s2 + BN + GELU)--> 1/4
      network_0: FFN blocks                                         --> [stage 1, 1/4]
      network_1: conv3x3 s2 + BN                                    --> 1/8
      network_2: FFN blocks                                         --> [stage 2, 1/8]
      network_3: conv3x3 s2 + BN                                    --> 1/16
      network_4: FFN blocks, then `vit_num` AttnFFN blocks whose attention is strided (x2)
                                                                    --> [stage 3, 1/16]
      network_5: Attention4DDownsample(x) + BN(conv3x3 s2(x))      --> 1/32
      network_6: FFN blocks, then `vit_num` AttnFFN blocks          --> [stage 4, 1/32]

    FFN:      x = x + drop_path(ls2 * Mlp(x))
    AttnFFN:  x = x + drop_path(ls1 * Attention4D(x)); x = x + drop_path(ls2 * Mlp(x))
    Mlp:      fc1 1x1 + BN + GELU -> dw3x3 + BN + GELU -> fc2 1x1 + BN      (hidden = int(C * ratio))
    Attention4D (heads h, key_dim d, value dim r*d):
      [stride 2: x = BN(dw3x3 s2(x))]; q, k = 1x1 + BN (h*d), v = 1x1 + BN (h*r*d)
      logits = q k^T / sqrt(d) + bicubic(bias table)            (B, h, N, N)
      attn = talking_head2(softmax_keys(talking_head1(logits)))   (1x1 convs across heads)
      out = attn v + BN(dw3x3(v)) [stride: bilinear x2] -> GELU -> 1x1 + BN (C)
    Attention4DDownsample: the same without talking heads, queries at half resolution from
      LGQuery (dw3x3 s2(x) + x[::2, ::2] -> 1x1 + BN), the local term BN(dw3x3 s2(v)).

Reference quirks reproduced (`xwmaxwma/SSAClassifier` models/backbones/efficientformer_v2.py):
- the outputs are the raw stage maps (network indices 0, 2, 4, 6): no output norms;
- attention biases: a learned table over the relative offsets of a `resolution x resolution` grid
  (`attention_biases_seg[:, attention_bias_idxs_seg]`, (h, N0, N0'), N0 = the grid's token count at
  the stage's design resolution, `resolution` = 512 / stride by default) is resized **bicubically
  (A = -0.75, half-pixel, align_corners=False) over the two flattened token axes** to the actual
  (queries, keys) counts, whatever the image's aspect ratio; here as 4 gathered taps per axis, the same
  sampling as torch's `F.interpolate(mode="bicubic")` (the identity at the design size: 512 x 512
  images); gradients reach the table;
- the downsampling attention's table indexes offsets |ceil(r / r2) * i - j| between the half-resolution
  query grid (r2 = ceil(r / 2)) and the key grid;
- the strided attention convolves with stride 2 (torch padding 1), attends at half resolution and
  upsamples x2 (bilinear, align_corners=False) before `proj`; the reference reshapes with H // 2, so H
  and W must be even at 1/16 (image sides multiples of 32);
- LGQuery's pooling is `AvgPool2d(1, 2)`, i.e. every other pixel;
- talking heads: 1x1 convs (with bias) across the heads before and after the key softmax;
- GELU (exact erf) everywhere (stem, Mlp, before the attention projections); the Mlp's hidden width is
  `int(C * e_ratio)` per block (`e_ratios`), its depthwise conv has a bias; BN eps 1e-5;
- layer scales start at 1e-5; attention bias tables at 0; the Mlp's 1x1 convs trunc-normal(0.02);
- drop-path rate of block j overall (0-based over all stages) is `drop_path_rate * j / (sum(layers) - 1)`;
- the reference's unused buffers `attention_biases` / `attention_bias_idxs` (a 7x7 ImageNet table) have
  no counterpart here;
- training: the reference's `train()` keeps plain `BatchNorm2d` in eval mode, but the real configs
  (pretrained `init_cfg`) convert every BN to SyncBatchNorm first, which that check does not match, so
  BN trains normally: our BNs always do.

Layer names follow the reference modules (`patch_embed`, `network_{i}` for `network.{i}`,
`network_{i}_{j}` for `network.{i}.{j}`), so `ssaseg_keras.convert.cgrseg` maps one to one.
"""

from __future__ import annotations

import itertools
import math

import keras
import numpy as np
from keras import ops

from ssaseg_keras.layers.batch_norm import SyncBatchNormalization
from ssaseg_keras.layers.building import built as _built
from ssaseg_keras.layers.building import with_channels as _with_channels
from ssaseg_keras.layers.drop_path import DropPath
from ssaseg_keras.models.backbones.base import Backbone
from ssaseg_keras.models.backbones.resnet import torch_pad
from ssaseg_keras.ops.resize import resize_bilinear

NORM_EPS = 1e-5
BN_MOMENTUM = 0.9  # torch momentum 0.1
CUBIC_A = -0.75  # torch's bicubic coefficient

# The reference's S2 and L variants (efficientformerv2_s2_feat / _l_feat; CGRSeg-B and -L):
# EfficientFormerV2Backbone constructor arguments.
EFFICIENTFORMER_V2_LAYOUTS = {
    "b": {
        "layers": [4, 4, 12, 8],
        "embed_dims": [32, 64, 144, 288],
        "e_ratios": [[4, 4, 4, 4], [4, 4, 4, 4], [4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4], [4, 4, 3, 3, 3, 3, 4, 4]],
        "vit_num": 4,
        "drop_path_rate": 0.02,
    },
    "l": {
        "layers": [5, 5, 15, 10],
        "embed_dims": [40, 80, 192, 384],
        "e_ratios": [
            [4, 4, 4, 4, 4],
            [4, 4, 4, 4, 4],
            [4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4],
            [4, 4, 4, 3, 3, 3, 3, 4, 4, 4],
        ],
        "vit_num": 6,
        "drop_path_rate": 0.1,
    },
}


def gelu(x):
    return ops.gelu(x, approximate=False)


def batch_norm(name, policy):
    return SyncBatchNormalization(epsilon=NORM_EPS, momentum=BN_MOMENTUM, dtype=policy, name=name)


def _halved(shape, channels):
    def half(size):
        return None if size is None else (size - 1) // 2 + 1

    return (shape[0], half(shape[1]), half(shape[2]), int(channels))


# ------------------------------------------------------------------ attention biases
def square_bias_index(resolution):
    """Attention4D's `attention_bias_idxs_seg`: (N, N) int32, N = r^2, entry = the number of the offset
    (|dy|, |dx|) between two cells of an r x r grid (numbered in order of first appearance); and the
    number of distinct offsets (the table's width)."""
    points = list(itertools.product(range(resolution), range(resolution)))
    offsets, index = {}, []
    for p1 in points:
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            index.append(offsets.setdefault(offset, len(offsets)))
    return np.asarray(index, "int32").reshape(len(points), len(points)), len(offsets)


def downsample_bias_index(resolution):
    """Attention4DDownsample's `attention_bias_idxs_seg`: (N2, N) int32 between the query grid
    r2 = ceil(r / 2) and the key grid r, offsets |ceil(r / r2) * i - j| per axis; and the table width."""
    half = math.ceil(resolution / 2)
    step = math.ceil(resolution / half)
    queries = list(itertools.product(range(half), range(half)))
    keys = list(itertools.product(range(resolution), range(resolution)))
    offsets, index = {}, []
    for p1 in queries:
        for p2 in keys:
            offset = (abs(p1[0] * step - p2[0]), abs(p1[1] * step - p2[1]))
            index.append(offsets.setdefault(offset, len(offsets)))
    return np.asarray(index, "int32").reshape(len(queries), len(keys)), len(offsets)


def _cubic_weights(t):
    """torch's 4 bicubic tap weights (A = -0.75) at fractional offset t, for taps floor - 1 .. floor + 2."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)


def bicubic_taps(in_size, out_size):
    """torch's 1-D bicubic interpolation (align_corners=False) from `in_size` to `out_size` samples as 4
    taps: (indices, weights), each a list of 4 (out_size,) tensors (int32 / float32); output i =
    sum_t weights[t][i] * x[indices[t][i]].

    Source position (i + 0.5) * in / out - 0.5 (the scale in float32 as torch computes it, not
    clamped), taps floor - 1 .. floor + 2 clamped to the border. `in_size` is a Python int,
    `out_size` a Python int or a scalar tensor (images of unknown size).
    """
    if isinstance(out_size, (int, np.integer)):
        scale = float(np.float32(in_size / int(out_size)))
    else:
        scale = ops.cast(in_size, "float32") / ops.cast(out_size, "float32")
    source = (ops.cast(ops.arange(out_size), "float32") + 0.5) * scale - 0.5
    floor = ops.floor(source)
    base = ops.cast(floor, "int32")
    indices = [ops.clip(base + (tap - 1), 0, in_size - 1) for tap in range(4)]
    return indices, list(_cubic_weights(source - floor))


def bicubic_resize_axis(x, out_size, axis):
    """x resized along `axis` (a static length) to `out_size` samples, torch's bicubic
    (align_corners=False); float32 x. Equal static sizes return x (torch's result is x exactly)."""
    in_size = int(x.shape[axis])
    if isinstance(out_size, (int, np.integer)) and int(out_size) == in_size:
        return x
    indices, weights = bicubic_taps(in_size, out_size)
    shape = [1] * len(x.shape)
    shape[axis] = -1
    terms = [ops.take(x, index, axis=axis) * ops.reshape(weight, shape) for index, weight in zip(indices, weights)]
    return terms[0] + terms[1] + terms[2] + terms[3]


def resized_attention_bias(table, index, queries, keys):
    """The bias of every (query, key, head): the table gathered by `index` (h, N0, M0), resized
    bicubically over the two token axes to (queries, keys), as (queries, keys, h) float32."""
    bias = ops.take(ops.cast(table, "float32"), ops.convert_to_tensor(index), axis=1)
    bias = bicubic_resize_axis(bicubic_resize_axis(bias, keys, axis=2), queries, axis=1)
    return ops.transpose(bias, (1, 2, 0))


def _attend(q, k, v, scale, bias, talking_heads=None):
    """Multi-head attention in float32: q (B, Nq, h, d), k (B, Nk, h, d), v (B, Nk, h, e), bias
    (Nq, Nk, h) -> (B, Nq, h, e). `talking_heads`: two Dense layers mixing the heads before and after
    the softmax over keys."""
    q, k, v = (ops.cast(t, "float32") for t in (q, k, v))
    logits = ops.einsum("bihd,bjhd->bijh", q, k) * scale + bias[None]
    if talking_heads is not None:
        logits = talking_heads[0](logits)
    attention = ops.softmax(logits, axis=2)
    if talking_heads is not None:
        attention = talking_heads[1](attention)
    return ops.einsum("bijh,bjhe->bihe", attention, v)


def _heads(x, heads):
    """(B, H, W, h*d) -> (B, H*W, h, d): the reference's head-major channel split."""
    return ops.reshape(x, (-1, ops.shape(x)[1] * ops.shape(x)[2], heads, x.shape[-1] // heads))


# ------------------------------------------------------------------ layers
@keras.saving.register_keras_serializable(package="ssaseg_keras")
class EfficientFormerStem(keras.layers.Layer):
    """`patch_embed`: conv3x3 s2 (C/2) + BN + GELU + conv3x3 s2 (C) + BN + GELU (torch padding 1,
    convs with bias). (B, H, W, 3) -> (B, H/4, W/4, C)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)

    def build(self, input_shape):
        policy, half = self.dtype_policy, self.filters // 2
        self.conv1 = _built(keras.layers.Conv2D(half, 3, strides=2, dtype=policy, name="conv1"), input_shape)
        self.norm1 = _built(batch_norm("norm1", policy), _with_channels(input_shape, half))
        self.conv2 = _built(
            keras.layers.Conv2D(self.filters, 3, strides=2, dtype=policy, name="conv2"),
            _with_channels(input_shape, half),
        )
        self.norm2 = _built(batch_norm("norm2", policy), _with_channels(input_shape, self.filters))
        self.built = True

    def call(self, x, training=False):
        x = gelu(self.norm1(self.conv1(torch_pad(x, 1)), training=training))
        return gelu(self.norm2(self.conv2(torch_pad(x, 1)), training=training))

    def compute_output_shape(self, input_shape):
        return _halved(_halved(input_shape, self.filters), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class EfficientFormerEmbedding(keras.layers.Layer):
    """Stages 2-3 downsampling (`network.1`, `network.3`): conv3x3 s2 (bias, torch padding 1) + BN.
    (B, H, W, Cin) -> (B, H/2, W/2, C)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)

    def build(self, input_shape):
        policy = self.dtype_policy
        self.proj = _built(keras.layers.Conv2D(self.filters, 3, strides=2, dtype=policy, name="proj"), input_shape)
        self.norm = _built(batch_norm("norm", policy), _with_channels(input_shape, self.filters))
        self.built = True

    def call(self, x, training=False):
        return self.norm(self.proj(torch_pad(x, 1)), training=training)

    def compute_output_shape(self, input_shape):
        return _halved(input_shape, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class EfficientFormerMlp(keras.layers.Layer):
    """The reference's `Mlp` with `mid_conv`: fc1 1x1 + BN + GELU -> dw3x3 (bias) + BN + GELU -> fc2 1x1
    + BN. (B, H, W, C) -> same.

    Args:
        hidden_dim: the hidden width (`int(C * e_ratio)`).
    """

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)

    def build(self, input_shape):
        policy, dim, hidden = self.dtype_policy, int(input_shape[-1]), self.hidden_dim
        hidden_shape = _with_channels(input_shape, hidden)
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.fc1 = _built(
            keras.layers.Conv2D(hidden, 1, kernel_initializer=init, dtype=policy, name="fc1"), input_shape
        )
        self.norm1 = _built(batch_norm("norm1", policy), hidden_shape)
        self.mid = _built(keras.layers.DepthwiseConv2D(3, padding="same", dtype=policy, name="mid"), hidden_shape)
        self.mid_norm = _built(batch_norm("mid_norm", policy), hidden_shape)
        self.fc2 = _built(keras.layers.Conv2D(dim, 1, kernel_initializer=init, dtype=policy, name="fc2"), hidden_shape)
        self.norm2 = _built(batch_norm("norm2", policy), input_shape)
        self.built = True

    def call(self, x, training=False):
        x = gelu(self.norm1(self.fc1(x), training=training))
        x = gelu(self.mid_norm(self.mid(x), training=training))
        return self.norm2(self.fc2(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}


def _conv_bn(filters, name, input_shape, policy):
    """A 1x1 conv (bias) + BN pair (`name.0`, `name.1` in the reference), built."""
    conv = _built(keras.layers.Conv2D(filters, 1, dtype=policy, name=f"{name}_conv"), input_shape)
    norm = _built(batch_norm(f"{name}_norm", policy), _with_channels(input_shape, filters))
    return conv, norm


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class Attention4D(keras.layers.Layer):
    """EfficientFormerV2's `Attention4D` (see the module docstring). (B, H, W, C) -> same.

    Args:
        key_dim, num_heads, attn_ratio: d, h and the value width ratio r (the reference hard-wires
            32, 8, 4).
        resolution: side of the token grid the bias table is designed for (the stage's 512 / stride;
            with `stride`, ceil(resolution / stride)).
        stride: None or 2 (attend at half resolution, upsample back).
    """

    def __init__(self, key_dim=32, num_heads=8, attn_ratio=4, resolution=7, stride=None, **kwargs):
        super().__init__(**kwargs)
        self.key_dim = int(key_dim)
        self.num_heads = int(num_heads)
        self.attn_ratio = attn_ratio
        self.resolution = int(resolution)
        self.stride = None if stride is None else int(stride)
        if self.stride not in (None, 2):
            raise ValueError(f"Attention4D: stride must be None or 2 (the reference's x2 upsampling), got {stride}")
        grid = self.resolution if self.stride is None else math.ceil(self.resolution / self.stride)
        self.bias_index, self.num_offsets = square_bias_index(grid)

    @property
    def value_dim(self):
        return int(self.attn_ratio * self.key_dim)

    def build(self, input_shape):
        policy, dim = self.dtype_policy, int(input_shape[-1])
        heads, inner, values = self.num_heads, self.num_heads * self.key_dim, self.num_heads * self.value_dim
        if self.stride is not None:
            self.stride_conv = _built(
                keras.layers.DepthwiseConv2D(3, strides=self.stride, dtype=policy, name="stride_conv"), input_shape
            )
            self.stride_norm = _built(batch_norm("stride_norm", policy), input_shape)
        self.q_conv, self.q_norm = _conv_bn(inner, "q", input_shape, policy)
        self.k_conv, self.k_norm = _conv_bn(inner, "k", input_shape, policy)
        self.v_conv, self.v_norm = _conv_bn(values, "v", input_shape, policy)
        value_shape = _with_channels(input_shape, values)
        self.v_local_conv = _built(
            keras.layers.DepthwiseConv2D(3, padding="same", dtype=policy, name="v_local_conv"), value_shape
        )
        self.v_local_norm = _built(batch_norm("v_local_norm", policy), value_shape)
        # 1x1 convs across the heads of the (float32) attention maps.
        self.talking_head1 = _built(keras.layers.Dense(heads, dtype="float32", name="talking_head1"), (None, heads))
        self.talking_head2 = _built(keras.layers.Dense(heads, dtype="float32", name="talking_head2"), (None, heads))
        self.proj_conv, self.proj_norm = _conv_bn(dim, "proj", value_shape, policy)
        self.attention_biases = self.add_weight(
            shape=(heads, self.num_offsets), initializer="zeros", dtype="float32", name="attention_biases_seg"
        )
        self.built = True

    def call(self, x, training=False):
        if self.stride is not None:
            x = self.stride_norm(self.stride_conv(torch_pad(x, 1)), training=training)
        height, width = ops.shape(x)[1], ops.shape(x)[2]
        tokens = height * width
        q = self.q_norm(self.q_conv(x), training=training)
        k = self.k_norm(self.k_conv(x), training=training)
        v = self.v_norm(self.v_conv(x), training=training)
        v_local = self.v_local_norm(self.v_local_conv(v), training=training)
        bias = resized_attention_bias(self.attention_biases, self.bias_index, tokens, tokens)
        out = _attend(
            _heads(q, self.num_heads), _heads(k, self.num_heads), _heads(v, self.num_heads),
            self.key_dim**-0.5, bias, (self.talking_head1, self.talking_head2),
        )  # fmt: skip
        out = ops.reshape(ops.cast(out, v.dtype), (-1, height, width, self.num_heads * self.value_dim)) + v_local
        if self.stride is not None:
            out = resize_bilinear(out, (height * self.stride, width * self.stride), align_corners=False)
        return self.proj_norm(self.proj_conv(gelu(out)), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "key_dim": self.key_dim,
            "num_heads": self.num_heads,
            "attn_ratio": self.attn_ratio,
            "resolution": self.resolution,
            "stride": self.stride,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class Attention4DDownsample(keras.layers.Layer):
    """EfficientFormerV2's `Attention4DDownsample` (see the module docstring).
    (B, H, W, Cin) -> (B, H/2, W/2, out_dim); H and W even.

    Args:
        out_dim: output width.
        key_dim, num_heads, attn_ratio: d, h, r (the reference hard-wires 16, 8, 4).
        resolution: side of the key grid the bias table is designed for (512 / 16 by default).
    """

    def __init__(self, out_dim, key_dim=16, num_heads=8, attn_ratio=4, resolution=7, **kwargs):
        super().__init__(**kwargs)
        self.out_dim = int(out_dim)
        self.key_dim = int(key_dim)
        self.num_heads = int(num_heads)
        self.attn_ratio = attn_ratio
        self.resolution = int(resolution)
        self.bias_index, self.num_offsets = downsample_bias_index(self.resolution)

    @property
    def value_dim(self):
        return int(self.attn_ratio * self.key_dim)

    def build(self, input_shape):
        policy = self.dtype_policy
        heads, inner, values = self.num_heads, self.num_heads * self.key_dim, self.num_heads * self.value_dim
        self.q_local = _built(
            keras.layers.DepthwiseConv2D(3, strides=2, dtype=policy, name="q_local"), input_shape
        )
        self.q_proj_conv, self.q_proj_norm = _conv_bn(inner, "q_proj", input_shape, policy)
        self.k_conv, self.k_norm = _conv_bn(inner, "k", input_shape, policy)
        self.v_conv, self.v_norm = _conv_bn(values, "v", input_shape, policy)
        value_shape = _with_channels(input_shape, values)
        self.v_local_conv = _built(
            keras.layers.DepthwiseConv2D(3, strides=2, dtype=policy, name="v_local_conv"), value_shape
        )
        self.v_local_norm = _built(batch_norm("v_local_norm", policy), value_shape)
        self.proj_conv, self.proj_norm = _conv_bn(self.out_dim, "proj", value_shape, policy)
        self.attention_biases = self.add_weight(
            shape=(heads, self.num_offsets), initializer="zeros", dtype="float32", name="attention_biases_seg"
        )
        self.built = True

    def call(self, x, training=False):
        height, width = ops.shape(x)[1], ops.shape(x)[2]
        # LGQuery: local dw3x3 s2 + AvgPool2d(1, 2) (every other pixel), then 1x1 + BN.
        q = self.q_local(torch_pad(x, 1)) + x[:, ::2, ::2, :]
        q = self.q_proj_norm(self.q_proj_conv(q), training=training)
        k = self.k_norm(self.k_conv(x), training=training)
        v = self.v_norm(self.v_conv(x), training=training)
        v_local = self.v_local_norm(self.v_local_conv(torch_pad(v, 1)), training=training)
        half_height, half_width = ops.shape(q)[1], ops.shape(q)[2]
        bias = resized_attention_bias(self.attention_biases, self.bias_index, half_height * half_width, height * width)
        out = _attend(
            _heads(q, self.num_heads), _heads(k, self.num_heads), _heads(v, self.num_heads), self.key_dim**-0.5, bias
        )
        out = ops.reshape(ops.cast(out, v.dtype), (-1, half_height, half_width, self.num_heads * self.value_dim))
        return self.proj_norm(self.proj_conv(gelu(out + v_local)), training=training)

    def compute_output_shape(self, input_shape):
        return _halved(input_shape, self.out_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "out_dim": self.out_dim,
            "key_dim": self.key_dim,
            "num_heads": self.num_heads,
            "attn_ratio": self.attn_ratio,
            "resolution": self.resolution,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class EfficientFormerAttentionEmbedding(keras.layers.Layer):
    """Stage-4 downsampling (`network.5`, the reference's Embedding with `asub`):
    Attention4DDownsample(x) + BN(conv3x3 s2(x)). (B, H, W, Cin) -> (B, H/2, W/2, C).

    Args:
        filters: C. resolution, key_dim, num_heads, attn_ratio: the attention's (see
            `Attention4DDownsample`).
    """

    def __init__(self, filters, resolution=7, key_dim=16, num_heads=8, attn_ratio=4, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.resolution = int(resolution)
        self.key_dim = int(key_dim)
        self.num_heads = int(num_heads)
        self.attn_ratio = attn_ratio

    def build(self, input_shape):
        policy = self.dtype_policy
        self.attn = _built(
            Attention4DDownsample(
                self.filters, self.key_dim, self.num_heads, self.attn_ratio, self.resolution, dtype=policy, name="attn"
            ),
            input_shape,
        )
        self.conv = _built(keras.layers.Conv2D(self.filters, 3, strides=2, dtype=policy, name="conv"), input_shape)
        self.bn = _built(batch_norm("bn", policy), _with_channels(input_shape, self.filters))
        self.built = True

    def call(self, x, training=False):
        return self.attn(x, training=training) + self.bn(self.conv(torch_pad(x, 1)), training=training)

    def compute_output_shape(self, input_shape):
        return _halved(input_shape, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "resolution": self.resolution,
            "key_dim": self.key_dim,
            "num_heads": self.num_heads,
            "attn_ratio": self.attn_ratio,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class EfficientFormerBlock(keras.layers.Layer):
    """`FFN` (attention=False): x + drop_path(ls2 * Mlp(x)); `AttnFFN` (attention=True): first
    x + drop_path(ls1 * Attention4D(x)). (B, H, W, C) -> same.

    Args:
        mlp_ratio: the Mlp's e_ratio.
        attention: AttnFFN. resolution, stride, key_dim, num_heads, attn_ratio: its Attention4D's.
        drop_path: stochastic-depth rate of the branches.
        layer_scale_init_value: initial layer scales (1e-5).
    """

    def __init__(self, mlp_ratio=4.0, attention=False, resolution=7, stride=None, key_dim=32, num_heads=8,
                 attn_ratio=4, drop_path=0.0, layer_scale_init_value=1e-5, seed=None, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.mlp_ratio = mlp_ratio
        self.attention = bool(attention)
        self.resolution = int(resolution)
        self.stride = None if stride is None else int(stride)
        self.key_dim = int(key_dim)
        self.num_heads = int(num_heads)
        self.attn_ratio = attn_ratio
        self.drop_path = float(drop_path)
        self.layer_scale_init_value = float(layer_scale_init_value)
        self.seed = seed

    def build(self, input_shape):
        policy, dim = self.dtype_policy, int(input_shape[-1])
        init = keras.initializers.Constant(self.layer_scale_init_value)
        if self.attention:
            self.token_mixer = _built(
                Attention4D(self.key_dim, self.num_heads, self.attn_ratio, self.resolution, self.stride,
                            dtype=policy, name="token_mixer"),
                input_shape,
            )  # fmt: skip
            self.layer_scale_1 = self.add_weight(shape=(dim,), initializer=init, name="layer_scale_1")
        self.mlp = _built(EfficientFormerMlp(int(dim * self.mlp_ratio), dtype=policy, name="mlp"), input_shape)
        self.layer_scale_2 = self.add_weight(shape=(dim,), initializer=init, name="layer_scale_2")
        self.drop = DropPath(self.drop_path, seed=self.seed, dtype=policy, name="drop_path")
        self.built = True

    def call(self, x, training=False):
        if self.attention:
            branch = ops.cast(self.layer_scale_1, x.dtype) * self.token_mixer(x, training=training)
            x = x + self.drop(branch, training=training)
        branch = ops.cast(self.layer_scale_2, x.dtype) * self.mlp(x, training=training)
        return x + self.drop(branch, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "mlp_ratio": self.mlp_ratio,
            "attention": self.attention,
            "resolution": self.resolution,
            "stride": self.stride,
            "key_dim": self.key_dim,
            "num_heads": self.num_heads,
            "attn_ratio": self.attn_ratio,
            "drop_path": self.drop_path,
            "layer_scale_init_value": self.layer_scale_init_value,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class EfficientFormerV2Backbone(Backbone):
    """EfficientFormerV2 (`fork_feat`) as a functional model: images (B, H, W, 3) -> [stage 1 .. 4] NHWC at
    strides 4, 8, 16, 32 with `embed_dims` channels. H and W: multiples of 32.

    Args:
        layers: blocks per stage (S2 [4, 4, 12, 8], L [5, 5, 15, 10]).
        embed_dims: stage widths.
        e_ratios: per stage, the Mlp ratio of each block (`len(e_ratios[i]) >= layers[i]`).
        vit_num: the last `vit_num` blocks of stages 3 and 4 are AttnFFN (stage 3's strided).
        resolution: the design image side (512): the bias tables are sized for resolution / stride.
        drop_path_rate: stochastic depth of the last block (linear in the block's overall index).
        layer_scale_init_value: initial layer scales.
        key_dim, num_heads, attn_ratio: the AttnFFN attentions' (the reference hard-wires 32, 8, 4).
        downsample_key_dim, downsample_num_heads, downsample_attn_ratio: the stage-4 downsampling
            attention's (hard-wired 16, 8, 4).
        image_shape: input shape (H, W, 3); H and W may be None.
        seed: seed of the drop-path generators (None: random).
    """

    def __init__(self, layers=EFFICIENTFORMER_V2_LAYOUTS["b"]["layers"],
                 embed_dims=EFFICIENTFORMER_V2_LAYOUTS["b"]["embed_dims"],
                 e_ratios=EFFICIENTFORMER_V2_LAYOUTS["b"]["e_ratios"], vit_num=4, resolution=512,
                 drop_path_rate=0.0, layer_scale_init_value=1e-5, key_dim=32, num_heads=8, attn_ratio=4,
                 downsample_key_dim=16, downsample_num_heads=8, downsample_attn_ratio=4,
                 image_shape=(None, None, 3), seed=None, dtype=None, **kwargs):  # fmt: skip
        layers = [int(n) for n in layers]
        embed_dims = [int(d) for d in embed_dims]
        e_ratios = [[int(r) if float(r).is_integer() else float(r) for r in stage] for stage in e_ratios]
        if not (len(layers) == len(embed_dims) == len(e_ratios) == 4):
            raise ValueError(
                f"EfficientFormerV2 needs 4 stages: got layers {layers}, embed_dims {embed_dims}, "
                f"{len(e_ratios)} e_ratios lists"
            )
        if any(len(r) < n for r, n in zip(e_ratios, layers)):
            raise ValueError(f"EfficientFormerV2: e_ratios {e_ratios} has fewer entries than layers {layers}")
        total = sum(layers)
        inputs = keras.Input(shape=tuple(image_shape), name="images")
        x = EfficientFormerStem(embed_dims[0], dtype=dtype, name="patch_embed")(inputs)
        outputs, block_index = [], 0
        for stage, depth in enumerate(layers):
            stage_resolution = math.ceil(resolution / 2 ** (stage + 2))
            for j in range(depth):
                attention = stage >= 2 and j > depth - 1 - int(vit_num)
                x = EfficientFormerBlock(
                    mlp_ratio=e_ratios[stage][j],
                    attention=attention,
                    resolution=stage_resolution,
                    stride=2 if stage == 2 else None,
                    key_dim=key_dim,
                    num_heads=num_heads,
                    attn_ratio=attn_ratio,
                    drop_path=float(drop_path_rate) * block_index / max(total - 1, 1),
                    layer_scale_init_value=layer_scale_init_value,
                    seed=None if seed is None else int(seed) + block_index,
                    dtype=dtype,
                    name=f"network_{2 * stage}_{j}",
                )(x)
                block_index += 1
            outputs.append(x)
            if stage == 3:
                break
            name = f"network_{2 * stage + 1}"
            if stage >= 2:
                x = EfficientFormerAttentionEmbedding(
                    embed_dims[stage + 1], resolution=stage_resolution, key_dim=downsample_key_dim,
                    num_heads=downsample_num_heads, attn_ratio=downsample_attn_ratio, dtype=dtype, name=name,
                )(x)  # fmt: skip
            else:
                x = EfficientFormerEmbedding(embed_dims[stage + 1], dtype=dtype, name=name)(x)
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.layers_per_stage = layers
        self.embed_dims = embed_dims
        self.e_ratios = e_ratios
        self.vit_num = int(vit_num)
        self.resolution = int(resolution)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_scale_init_value = float(layer_scale_init_value)
        self.key_dim = int(key_dim)
        self.num_heads = int(num_heads)
        self.attn_ratio = attn_ratio
        self.downsample_key_dim = int(downsample_key_dim)
        self.downsample_num_heads = int(downsample_num_heads)
        self.downsample_attn_ratio = downsample_attn_ratio
        self.image_shape = tuple(image_shape)
        self.seed = seed
        self.output_strides = [4, 8, 16, 32]

    def get_config(self):
        return {
            **super().get_config(),
            "layers": self.layers_per_stage,
            "embed_dims": self.embed_dims,
            "e_ratios": self.e_ratios,
            "vit_num": self.vit_num,
            "resolution": self.resolution,
            "drop_path_rate": self.drop_path_rate,
            "layer_scale_init_value": self.layer_scale_init_value,
            "key_dim": self.key_dim,
            "num_heads": self.num_heads,
            "attn_ratio": self.attn_ratio,
            "downsample_key_dim": self.downsample_key_dim,
            "downsample_num_heads": self.downsample_num_heads,
            "downsample_attn_ratio": self.downsample_attn_ratio,
            "image_shape": self.image_shape,
            "seed": self.seed,
        }
