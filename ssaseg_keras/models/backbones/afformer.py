"""AFFormer (Adaptive Frequency Filters as efficient global token mixers, Huang et al., 2023), the
reference's AFFormer backbone, keras.ops only, channels-last.

    images (B, H, W, 3) --stem (2 x conv3x3 s2 + BN + Hardswish)--> x (1/4)
    stage i (0..3):
      p0 = PatchEmbed_0(x)          dw3x3 (stride s0) + pw1x1 + BN + Hardswish
      p1 = PatchEmbed_1(p0)         the same on p0 (stride s1): the two paths run in sequence
      stage 0:   y = Restore(p0 + p1)                                  (no attention)
      stage > 0: y = Restore(p0) + resize_ac(Encoder(p1), size(p0))    (bilinear, align_corners=True)
      x = aggregate(y)              conv1x1 + BN + Hardswish to the next stage's width -> output i

    strides (s0, s1): stage 0 (1, 1), stage 1 (2, 1), stage 2 (1, 2), stage 3 (1, 4);
    outputs at 1/4, 1/8, 1/8, 1/8 with widths embed_dims[1], embed_dims[2], embed_dims[3], embed_dims[3].

    Restore(x) = x + conv1x1+BN(Hardswish(BN(dw3x3(Hardswish(conv1x1+BN(x))))))   (hidden width C / 2)

    Encoder (one per stage > 0; its `cpe` and `crpe` are shared by all its blocks):
      for each block:  x = x + cpe(x)                                  (dw3x3 with bias)
                       x = x + drop_path(proj(FFA(LN(x))))
                       x = x + drop_path(Mlp(LN(x)))                   Mlp: fc2(GELU(h + dw3x3(h))), h = fc1(x)
      FFA (the "frequency filter" attention), heads h of width Ch, q, k, v = qkv(x):
          scale * q (softmax_N(k)^T v) + q * HP(v) + LP(v)
          HP: depthwise convs 3x3 / 5x5 / 7x7 (with bias) over 2 / 3 / 3 heads' channels of v
          LP: v's channel quarters adaptive-average-pooled to 1, 2, 3, 6 bins, resized back (bilinear,
              align_corners=False), concatenated, ReLU

Reference quirks reproduced:
- the stride quirk: stage 1 downsamples both paths (its first patch embed has stride 2), stages 2 and 3
  downsample only the attention path (stride 2, 4) and resize its output back to the first path's size
  (bilinear, align_corners=True) before adding it to Restore(first path): stages 2-4 all come out at 1/8;
- stage 0 has no attention: aggregate(Restore(p0 + p1)); its `num_layers` entry builds nothing but still
  counts in the drop-path schedule (rates rise linearly over sum(num_layers) blocks);
- an encoder's `cpe` and `crpe` are one module shared by all its blocks (held once here; the reference's
  state dict repeats them under every block, see `ssaseg_keras.convert.afformer`);
- the low-pass branch pools to 1, 2, 3, 6 bins even when the map is smaller (torch's overlapping bins),
  then resizes back (a downsampling resize when the map is smaller than 6);
- the k softmax runs over tokens (factorised attention); the scale Ch^-0.5 multiplies only that term;
- the Mlp's GELU (exact erf) acts on fc1(x) + dwconv(fc1(x)); LayerNorm eps 1e-6; BN eps 1e-5;
- only num_path 1 runs in the reference (its forward adds two paths, its aggregate expects num_path);
- the reference's `strides` argument (configs: [4, 2, 2, 2]) is accepted there and ignored: not an argument here.

Layer names follow the reference modules: `stem_{i}` (`stem.{i}`), `stage{i}` holding `patch_embed_{j}`
(`patch_embed_stages.{i}.patch_embeds.{j}.patch_conv`), `restore`, `encoder` (`mhca_stages.{i}.mhca_blks.0`)
and `aggregate` (`mhca_stages.{i}.*`); see `ssaseg_keras.convert.afformer`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ssaseg_keras.layers.batch_norm import SyncBatchNormalization
from ssaseg_keras.layers.drop_path import DropPath
from ssaseg_keras.models.backbones.base import Backbone
from ssaseg_keras.models.backbones.resnet import torch_pad
from ssaseg_keras.models.heads.uper_head import adaptive_average_pool
from ssaseg_keras.ops.resize import resize_bilinear

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # torch momentum 0.1
LN_EPS = 1e-6
# The encoders' crpe windows: kernel size -> heads (MHCAEncoder's default; AFFormer never changes it).
CRPE_WINDOW = ((3, 2), (5, 3), (7, 3))
LOW_PASS_BINS = (1, 2, 3, 6)
# The patch embeds' strides (path 0, path 1) per stage: isPool in stage 1, the attention path in 2 and 3.
PATH_STRIDES = ((1, 1), (2, 1), (1, 2), (1, 4))

# The reference's named models (models/backbones/afformer.py: afformer_base / _small / _tiny); only
# AFFormer-B has segmentation configs (configs/afformer/afformer_base_*.py).
AFFORMER_LAYOUTS = {
    "b": {"num_layers": [1, 2, 6, 2], "embed_dims": [32, 96, 176, 216], "mlp_ratios": [2, 2, 2, 2],
          "num_heads": [8, 8, 8, 8], "num_path": [1, 1, 1, 1], "drop_path_rate": 0.0},
    "s": {"num_layers": [1, 2, 4, 2], "embed_dims": [32, 64, 176, 216], "mlp_ratios": [2, 2, 2, 2],
          "num_heads": [8, 8, 8, 8], "num_path": [1, 1, 1, 1], "drop_path_rate": 0.0},
    "t": {"num_layers": [1, 2, 4, 2], "embed_dims": [32, 64, 160, 216], "mlp_ratios": [2, 2, 2, 2],
          "num_heads": [8, 8, 8, 8], "num_path": [1, 1, 1, 1], "drop_path_rate": 0.0},
}  # fmt: skip


def conv_initializer():
    """The reference's conv init: normal(0, sqrt(2 / fan_out)), fan_out = k * k * out / groups
    (Keras' fan_out of a depthwise kernel is k * k * multiplier, the same number)."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def dense_layer(units, name, policy, use_bias=True):
    """A torch Linear: trunc-normal(0.02) weight, zero bias."""
    return keras.layers.Dense(
        units, use_bias=use_bias, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        dtype=policy, name=name,
    )  # fmt: skip


def depthwise_layer(kernel, name, policy, strides=1, use_bias=True):
    return keras.layers.DepthwiseConv2D(
        kernel, strides=strides, padding="valid", use_bias=use_bias, depthwise_initializer=conv_initializer(),
        dtype=policy, name=name,
    )  # fmt: skip


def bn_layer(name, policy):
    return SyncBatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, dtype=policy, name=name)


def strided_size(size, strides):
    """torch's output size of a 3x3 conv with padding 1 (or a 1x1 conv with padding 0)."""
    return None if size is None else (size - 1) // strides + 1


def resize_aligned(x, size):
    """torch's `F.interpolate(x, size, mode="bilinear", align_corners=True)` on NHWC x; sizes may be
    dynamic (then two gathered taps per axis; the scale (in - 1) / (out - 1) in float32 as torch)."""
    static = all(isinstance(v, (int, np.integer)) for v in (x.shape[1], x.shape[2], size[0], size[1]))
    if static:
        return resize_bilinear(x, (int(size[0]), int(size[1])), align_corners=True)
    shape = ops.shape(x)
    for axis, (in_size, out_size) in enumerate(zip(shape[1:3], size), start=1):
        in_f = ops.cast(in_size, "float32")
        out_f = ops.cast(out_size, "float32")
        scale = ops.where(out_f > 1.0, (in_f - 1.0) / ops.maximum(out_f - 1.0, 1.0), 0.0)
        src = ops.cast(ops.arange(out_size), "float32") * scale
        lo = ops.minimum(ops.cast(ops.floor(src), "int32"), ops.cast(in_size, "int32") - 1)
        hi = ops.minimum(lo + 1, ops.cast(in_size, "int32") - 1)
        frac = ops.cast(src - ops.cast(lo, "float32"), x.dtype)
        frac = frac[None, :, None, None] if axis == 1 else frac[None, None, :, None]
        x = ops.take(x, lo, axis=axis) * (1.0 - frac) + ops.take(x, hi, axis=axis) * frac
    return x


# --------------------------------------------------------------------------------------------- conv blocks
@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AFFormerConvBN(keras.layers.Layer):
    """The reference's `Conv2d_BN`: conv k x k (stride, torch padding k // 2, no bias) + BN (+ Hardswish).
    (B, H, W, Cin) -> (B, H', W', filters)."""

    def __init__(self, filters, kernel_size=1, strides=1, activation=None, **kwargs):
        super().__init__(**kwargs)
        if activation not in (None, "hardswish"):
            raise ValueError(f"AFFormerConvBN: activation must be None or 'hardswish', got {activation!r}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.activation = activation

    def build(self, input_shape):
        policy = self.dtype_policy
        self.conv = keras.layers.Conv2D(
            self.filters, self.kernel_size, strides=self.strides, use_bias=False,
            kernel_initializer=conv_initializer(), dtype=policy, name="conv",
        )  # fmt: skip
        self.conv.build(tuple(input_shape))
        self.bn = bn_layer("bn", policy)
        self.bn.build((None, None, None, self.filters))
        self.built = True

    def call(self, x, training=False):
        x = self.bn(self.conv(torch_pad(x, self.kernel_size // 2)), training=training)
        return ops.hard_silu(x) if self.activation == "hardswish" else x

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, strided_size(height, self.strides), strided_size(width, self.strides), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "activation": self.activation,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AFFormerPatchEmbed(keras.layers.Layer):
    """The reference's `DWCPatchEmbed` (`DWConv2d_BN`): depthwise 3x3 (stride, padding 1, no bias),
    pointwise 1x1 (no bias), BN, Hardswish. (B, H, W, C) -> (B, H', W', C)."""

    def __init__(self, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.strides = int(strides)

    def build(self, input_shape):
        policy = self.dtype_policy
        channels = int(input_shape[-1])
        self.dwconv = depthwise_layer(3, "dwconv", policy, strides=self.strides, use_bias=False)
        self.dwconv.build(tuple(input_shape))
        self.pwconv = keras.layers.Conv2D(
            channels, 1, use_bias=False, kernel_initializer=conv_initializer(), dtype=policy, name="pwconv"
        )
        self.pwconv.build((None, None, None, channels))
        self.bn = bn_layer("bn", policy)
        self.bn.build((None, None, None, channels))
        self.built = True

    def call(self, x, training=False):
        x = self.pwconv(self.dwconv(torch_pad(x, 1)))
        return ops.hard_silu(self.bn(x, training=training))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, strided_size(height, self.strides), strided_size(width, self.strides), channels)

    def get_config(self):
        return {**super().get_config(), "strides": self.strides}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AFFormerRestore(keras.layers.Layer):
    """The reference's `Restore`, a residual bottleneck on the first path:
    x + conv2(Hardswish(BN(dw3x3(conv1(x))))), conv1 = 1x1+BN+Hardswish to C / 2, conv2 = 1x1+BN to C.
    (B, H, W, C) -> same."""

    def build(self, input_shape):
        policy = self.dtype_policy
        channels = int(input_shape[-1])
        hidden = channels // 2
        self.conv1 = AFFormerConvBN(hidden, activation="hardswish", dtype=policy, name="conv1")
        self.conv1.build(tuple(input_shape))
        self.dwconv = depthwise_layer(3, "dwconv", policy, use_bias=False)
        self.dwconv.build((None, None, None, hidden))
        self.norm = bn_layer("norm", policy)
        self.norm.build((None, None, None, hidden))
        self.conv2 = AFFormerConvBN(channels, dtype=policy, name="conv2")
        self.conv2.build((None, None, None, hidden))
        self.built = True

    def call(self, x, training=False):
        feat = self.conv1(x, training=training)
        feat = ops.hard_silu(self.norm(self.dwconv(torch_pad(feat, 1)), training=training))
        return x + self.conv2(feat, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


# ---------------------------------------------------------------------------------------------- attention
@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AFFormerFrequencyFilter(keras.layers.Layer):
    """The reference's `FilterModule` (an encoder's shared `crpe`): call on (q, v), both (B, H, W, C)
    with channels ordered (head, Ch), -> q * HP(v) + LP(v), (B, H, W, C).

    HP: depthwise convs (with bias, "same" padding) of the window sizes over consecutive groups of
    heads' channels (3x3 over 2 heads, 5x5 over 3, 7x7 over 3). LP: `low_pass(v)`.

    Args:
        num_heads: h (must equal the windows' head total, 8).
    """

    def __init__(self, num_heads=8, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        if self.num_heads != sum(heads for _, heads in CRPE_WINDOW):
            raise ValueError(
                f"AFFormer: the crpe windows {dict(CRPE_WINDOW)} split {sum(h for _, h in CRPE_WINDOW)} heads; "
                f"num_heads must be that, got {num_heads}"
            )

    def build(self, input_shape):
        q_shape = tuple(input_shape[0])
        channels = int(q_shape[-1])
        if channels % self.num_heads or channels % len(LOW_PASS_BINS):
            raise ValueError(
                f"AFFormer: width {channels} must be divisible by num_heads {self.num_heads} and by "
                f"{len(LOW_PASS_BINS)} (the low-pass channel quarters)"
            )
        head_dim = channels // self.num_heads
        self.splits = [heads * head_dim for _, heads in CRPE_WINDOW]
        self.conv_list = []
        for index, ((kernel, _), width) in enumerate(zip(CRPE_WINDOW, self.splits)):
            conv = keras.layers.DepthwiseConv2D(
                kernel, padding="same", depthwise_initializer=conv_initializer(), dtype=self.dtype_policy,
                name=f"conv_list_{index}",
            )  # fmt: skip
            conv.build((None, None, None, width))
            self.conv_list.append(conv)
        self.built = True

    @staticmethod
    def low_pass(v):
        """LowPassModule: channel quarter i of v adaptive-average-pooled to LOW_PASS_BINS[i] bins a side
        (torch's bins, also when the map is smaller), resized back bilinearly (align_corners=False),
        concatenated, ReLU. (B, H, W, C) -> same."""
        quarter = int(v.shape[-1]) // len(LOW_PASS_BINS)
        size = ops.shape(v)[1:3]
        priors = []
        for index, bins in enumerate(LOW_PASS_BINS):
            part = v[..., index * quarter : (index + 1) * quarter]
            priors.append(resize_bilinear(adaptive_average_pool(part, bins), size, align_corners=False))
        return ops.relu(ops.concatenate(priors, axis=-1))

    def call(self, q, v):
        high, start = [], 0
        for conv, width in zip(self.conv_list, self.splits):
            high.append(conv(v[..., start : start + width]))
            start += width
        return q * ops.concatenate(high, axis=-1) + self.low_pass(v)

    def compute_output_shape(self, q_shape, v_shape=None):
        return tuple(q_shape)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AFFormerMlp(keras.layers.Layer):
    """The reference's `Mlp`: fc2(GELU(h + dw3x3(h))), h = fc1(x) of width `hidden_dim` (the depthwise
    conv has a bias; GELU is exact erf). (B, H, W, C) -> same."""

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)

    def build(self, input_shape):
        policy = self.dtype_policy
        dim = int(input_shape[-1])
        hidden = (None, None, None, self.hidden_dim)
        self.fc1 = dense_layer(self.hidden_dim, "fc1", policy)
        self.fc1.build(tuple(input_shape))
        self.dwconv = keras.layers.DepthwiseConv2D(
            3, padding="same", depthwise_initializer=conv_initializer(), dtype=policy, name="dwconv"
        )
        self.dwconv.build(hidden)
        self.fc2 = dense_layer(dim, "fc2", policy)
        self.fc2.build(hidden)
        self.built = True

    def call(self, x):
        x = self.fc1(x)
        return self.fc2(ops.gelu(x + self.dwconv(x), approximate=False))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AFFormerBlock(keras.layers.Layer):
    """The reference's `MHCABlock` without its shared parts: call `block(x, crpe=encoder.crpe)` on x
    (B, H, W, C) *after* the shared cpe -> x + FFA(LN(x)), then + Mlp(LN(x)) (each through drop-path).

    FFA (`factoratt_crpe`): q, k, v = qkv(x) (channels (head, Ch) each);
    proj(Ch^-0.5 * q (softmax over tokens of k)^T v + crpe(q, v)). The softmax and the two attention
    products run in float32.

    Args:
        num_heads: h.
        mlp_ratio: the Mlp's hidden width / C.
        drop_path: stochastic-depth rate of both branches.
    """

    def __init__(self, num_heads=8, mlp_ratio=2, drop_path=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.mlp_ratio = int(mlp_ratio)
        self.drop_path = float(drop_path)
        self.seed = seed

    def build(self, input_shape):
        policy = self.dtype_policy
        dim = int(input_shape[-1])
        self.dim = dim
        self.head_dim = dim // self.num_heads
        shape = tuple(input_shape)
        self.norm1 = keras.layers.LayerNormalization(epsilon=LN_EPS, dtype=policy, name="norm1")
        self.norm1.build(shape)
        self.qkv = dense_layer(3 * dim, "qkv", policy)
        self.qkv.build(shape)
        self.proj = dense_layer(dim, "proj", policy)
        self.proj.build(shape)
        self.norm2 = keras.layers.LayerNormalization(epsilon=LN_EPS, dtype=policy, name="norm2")
        self.norm2.build(shape)
        self.mlp = AFFormerMlp(dim * self.mlp_ratio, dtype=policy, name="mlp")
        self.mlp.build(shape)
        self.drop = DropPath(self.drop_path, seed=self.seed, dtype=policy, name="drop_path")
        self.built = True

    def attention(self, x, crpe):
        """FFA of x (B, H, W, C) -> (B, H, W, C), before `proj`."""
        dim = self.dim
        qkv = self.qkv(x)
        q, k, v = qkv[..., :dim], qkv[..., dim : 2 * dim], qkv[..., 2 * dim :]
        tokens = (ops.shape(x)[0], -1, self.num_heads, self.head_dim)
        q32 = ops.reshape(ops.cast(q, "float32"), tokens)
        k32 = ops.reshape(ops.cast(k, "float32"), tokens)
        v32 = ops.reshape(ops.cast(v, "float32"), tokens)
        context = ops.einsum("bnhk,bnhv->bhkv", ops.softmax(k32, axis=1), v32)
        factor = ops.einsum("bnhk,bhkv->bnhv", q32, context) * (self.head_dim**-0.5)
        factor = ops.cast(ops.reshape(factor, ops.shape(x)), x.dtype)
        return factor + crpe(q, v)

    def call(self, x, crpe, training=False):
        x = x + self.drop(self.proj(self.attention(self.norm1(x), crpe)), training=training)
        return x + self.drop(self.mlp(self.norm2(x)), training=training)

    def compute_output_shape(self, input_shape, crpe=None):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "drop_path": self.drop_path,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AFFormerEncoder(keras.layers.Layer):
    """The reference's `MHCAEncoder`: `num_layers` blocks sharing one `cpe` (x + dw3x3(x), with bias) and
    one `crpe` (`AFFormerFrequencyFilter`), each held once here. (B, H, W, C) -> same.

    Args:
        num_layers: blocks.
        num_heads: h (8).
        mlp_ratio: the blocks' Mlp expansion.
        drop_path_rates: one stochastic-depth rate per block (default 0).
        seed: seed of the drop-path generators (None: random).
    """

    def __init__(self, num_layers=1, num_heads=8, mlp_ratio=2, drop_path_rates=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_ratio = int(mlp_ratio)
        rates = [0.0] * self.num_layers if drop_path_rates is None else [float(r) for r in drop_path_rates]
        if len(rates) != self.num_layers:
            raise ValueError(f"AFFormerEncoder: {self.num_layers} layers but drop_path_rates {rates}")
        self.drop_path_rates = rates
        self.seed = seed

    def build(self, input_shape):
        policy = self.dtype_policy
        shape = tuple(input_shape)
        dim = int(shape[-1])
        if dim % self.num_heads:
            raise ValueError(f"AFFormer: width {dim} is not divisible by num_heads {self.num_heads}")
        self.cpe = keras.layers.DepthwiseConv2D(
            3, padding="same", depthwise_initializer=conv_initializer(), dtype=policy, name="cpe"
        )
        self.cpe.build(shape)
        self.crpe = AFFormerFrequencyFilter(self.num_heads, dtype=policy, name="crpe")
        self.crpe.build((shape, shape))
        self.blocks = []
        for index, rate in enumerate(self.drop_path_rates):
            block = AFFormerBlock(
                self.num_heads, self.mlp_ratio, drop_path=rate, seed=None if self.seed is None else self.seed + index,
                dtype=policy, name=f"layer_{index}",
            )  # fmt: skip
            block.build(shape)
            self.blocks.append(block)
        self.built = True

    def call(self, x, training=False):
        for block in self.blocks:
            x = x + self.cpe(x)
            x = block(x, crpe=self.crpe, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "drop_path_rates": self.drop_path_rates,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AFFormerStage(keras.layers.Layer):
    """One stage (the reference's `patch_embed_stages[i]` and `mhca_stages[i]`):
    p0 = patch_embed_0(x) (stride s0), p1 = patch_embed_1(p0) (stride s1), then
    aggregate(Restore(p0 + p1)) without attention, or
    aggregate(Restore(p0) + resize_aligned(encoder(p1), size(p0))) with it. (B, H, W, C) -> (B, H / s0,
    W / s0, out_dim).

    Args:
        out_dim: the aggregate's width (the next stage's embed dim).
        path_strides: (s0, s1).
        attention: build the encoder (stages > 0).
        num_layers, num_heads, mlp_ratio, drop_path_rates, seed: the encoder's.
    """

    def __init__(self, out_dim, path_strides=(1, 1), attention=True, num_layers=1, num_heads=8, mlp_ratio=2,
                 drop_path_rates=None, seed=None, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.out_dim = int(out_dim)
        self.path_strides = tuple(int(s) for s in path_strides)
        self.attention = bool(attention)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_ratio = int(mlp_ratio)
        self.drop_path_rates = None if drop_path_rates is None else [float(r) for r in drop_path_rates]
        self.seed = seed

    def build(self, input_shape):
        policy = self.dtype_policy
        shape = tuple(input_shape)
        channels = int(shape[-1])
        self.patch_embeds = []
        for index, stride in enumerate(self.path_strides):
            embed = AFFormerPatchEmbed(stride, dtype=policy, name=f"patch_embed_{index}")
            embed.build(shape)
            self.patch_embeds.append(embed)
        inner = (None, None, None, channels)
        self.restore = AFFormerRestore(dtype=policy, name="restore")
        self.restore.build(inner)
        if self.attention:
            self.encoder = AFFormerEncoder(
                self.num_layers, self.num_heads, self.mlp_ratio, drop_path_rates=self.drop_path_rates,
                seed=self.seed, dtype=policy, name="encoder",
            )  # fmt: skip
            self.encoder.build(inner)
        self.aggregate = AFFormerConvBN(self.out_dim, activation="hardswish", dtype=policy, name="aggregate")
        self.aggregate.build(inner)
        self.built = True

    def call(self, x, training=False):
        first = self.patch_embeds[0](x, training=training)
        second = self.patch_embeds[1](first, training=training)
        if not self.attention:
            return self.aggregate(self.restore(first + second, training=training), training=training)
        attended = self.encoder(second, training=training)
        if self.path_strides[1] != 1:  # the attention path was downsampled: back to the first path's size
            attended = resize_aligned(attended, ops.shape(first)[1:3])
        return self.aggregate(self.restore(first, training=training) + attended, training=training)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        stride = self.path_strides[0]
        return (batch, strided_size(height, stride), strided_size(width, stride), self.out_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "out_dim": self.out_dim,
            "path_strides": self.path_strides,
            "attention": self.attention,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "drop_path_rates": self.drop_path_rates,
            "seed": self.seed,
        }


def _per_stage(value, name):
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * 4
    if len(values) != 4:
        raise ValueError(f"AFFormer: {name} needs 4 entries (one per stage), got {value}")
    return values


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AFFormerBackbone(Backbone):
    """AFFormer as a functional model: images (B, H, W, 3) -> 4 maps, NHWC, at 1/4, 1/8, 1/8, 1/8 with
    widths embed_dims[1], embed_dims[2], embed_dims[3], embed_dims[3] (the reference's outputs, in its
    order). H and W may be any multiples of 32 (None in the graph).

    `output_strides` is [4, 8, 8, 8]; `pyramid_outputs` names the deepest map of each stride
    (`P2` = stage 1, `P3` = stage 4).

    Args:
        num_layers: encoder blocks per stage (stage 0 has no encoder; its entry only shifts the
            drop-path schedule).
        embed_dims: each stage's width (the stem outputs embed_dims[0]).
        mlp_ratios: the encoders' Mlp expansion per stage.
        num_heads: attention heads per stage (8: the crpe windows split 8 heads).
        num_path: attention paths per stage; only 1 runs in the reference.
        drop_path_rate: the last block's rate; rates rise linearly over sum(num_layers) blocks.
        image_shape: input shape (H, W, 3); H and W may be None.
        seed: seed of the drop-path generators (None: random).
    """

    def __init__(self, num_layers=(1, 2, 6, 2), embed_dims=(32, 96, 176, 216), mlp_ratios=(2, 2, 2, 2),
                 num_heads=(8, 8, 8, 8), num_path=(1, 1, 1, 1), drop_path_rate=0.0, image_shape=(None, None, 3),
                 seed=None, dtype=None, **kwargs):  # fmt: skip
        num_layers = _per_stage(num_layers, "num_layers")
        embed_dims = _per_stage(embed_dims, "embed_dims")
        mlp_ratios = _per_stage(mlp_ratios, "mlp_ratios")
        num_heads = _per_stage(num_heads, "num_heads")
        num_path = _per_stage(num_path, "num_path")
        if num_path != [1, 1, 1, 1]:
            raise ValueError(
                f"AFFormer: num_path must be 1 in every stage (the reference's forward adds exactly two paths, "
                f"its aggregate expects embed_dim x num_path channels), got {num_path}"
            )
        rates = np.linspace(0.0, float(drop_path_rate), sum(num_layers)).tolist()
        starts = np.cumsum([0] + num_layers).tolist()

        inputs = keras.Input(shape=tuple(image_shape), name="images")
        x = AFFormerConvBN(embed_dims[0] // 2, 3, 2, activation="hardswish", dtype=dtype, name="stem_0")(inputs)
        x = AFFormerConvBN(embed_dims[0], 3, 2, activation="hardswish", dtype=dtype, name="stem_1")(x)
        outputs = []
        for index in range(4):
            x = AFFormerStage(
                embed_dims[min(index + 1, 3)], path_strides=PATH_STRIDES[index], attention=index > 0,
                num_layers=num_layers[index], num_heads=num_heads[index], mlp_ratio=mlp_ratios[index],
                drop_path_rates=rates[starts[index] : starts[index + 1]],
                seed=None if seed is None else int(seed) + 100 * index, dtype=dtype, name=f"stage{index}",
            )(x)  # fmt: skip
            outputs.append(x)
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.output_strides = [4, 8, 8, 8]
        self.pyramid_outputs = {"P2": self.outputs[0], "P3": self.outputs[3]}
        self.num_layers = num_layers
        self.embed_dims = embed_dims
        self.mlp_ratios = mlp_ratios
        self.num_heads = num_heads
        self.num_path = num_path
        self.drop_path_rate = float(drop_path_rate)
        self.image_shape = tuple(image_shape)
        self.seed = seed

    def get_config(self):
        return {
            **super().get_config(),
            "num_layers": self.num_layers,
            "embed_dims": self.embed_dims,
            "mlp_ratios": self.mlp_ratios,
            "num_heads": self.num_heads,
            "num_path": self.num_path,
            "drop_path_rate": self.drop_path_rate,
            "image_shape": self.image_shape,
            "seed": self.seed,
        }
