"""SeaFormer (Squeeze-enhanced Axial Transformer, Wan et al., ICLR 2023), the reference's lightweight
backbone, keras.ops only, channels-last.

    images (B, H, W, 3) --smb1 (stem conv3x3 s2 + BN + ReLU, MV2 blocks)--> smb2 --> [1/8 map]
      --> smb3 --> smb4 --> smb5 (MV2 blocks: "stacked MobileNetV2 blocks", ReLU)
    the last `len(depths)` smb stages are each followed by a transformer stage trans_j (ReLU6):
      smb(i) --> trans(j) --> [output] --> smb(i + 1) ...

    outputs: [smb2 (1/8)] + [trans_j outputs]
      SeaFormer-B (2 transformer stages): smb2 1/8, trans1 after smb4 1/32, trans2 after smb5 1/64
      SeaFormer-L (3 transformer stages): smb2 1/8, trans1 after smb3 1/16, 1/32, 1/64

A stage's MV2 block (`InvertedResidual`): [1x1 expand + BN + ReLU when t != 1], kxk depthwise (stride s)
+ BN + ReLU, 1x1 project + BN, + input when s == 1 and the width is unchanged. Hidden width
`round(inp * t)`; the output width is `c` rounded to a multiple of 8 (`make_divisible`).

A transformer block: x = x + drop_path(SeaAttention(x)); x = x + drop_path(Mlp(x)), where

    q, k, v = conv1x1+BN (key_dim x heads, key_dim x heads, 2 key_dim x heads)
    detail  = pwconv+BN(ReLU6(dw3x3+BN(concat(q, k, v))))               (B, H, W, C)
    row     = axial attention over H of the W-means of q, k, v (+ axial position embeddings)
    column  = axial attention over W of the H-means
    out     = ops.hard_sigmoid(proj(ReLU6(v + conv+BN(ReLU6(row)) + conv+BN(ReLU6(column))))) * detail
    Mlp     = conv1x1+BN (ratio x C) -> dw3x3 (bias) -> ReLU6 -> conv1x1+BN (C)

Reference quirks reproduced:
- the MV2 blocks use ReLU, the transformer blocks ReLU6; the hard sigmoid is relu6(x + 3) / 6 (`ops.hard_sigmoid`);
- the axial position embeddings are (16, C) tables linearly interpolated to H or W (torch `F.interpolate`
  mode "linear", align_corners=False, so a length below 16 samples the middle of the table);
- the attention's depthwise conv is 2 x (2 key_dim x heads) wide, the q + k + v width only for
  attn_ratio 2 (the only ratio the reference accepts at run time; checked here);
- drop-path rates rise linearly from 0 within *each* transformer stage (not over the whole network);
- the MV2 "exp_size" of the reference is computed and never used: widths are `round(inp * t)`;
- convs have no bias except the Mlp's depthwise conv; BN eps 1e-5, torch momentum 0.1; the BNs that
  close the attention's projections start with a zero scale (`bn_weight_init=0`); convs start
  normal(0, sqrt(2 / fan_out)) as the reference's `init_weights`;
- stride-2 convs pad k // 2 on every side explicitly (torch), not Keras' asymmetric "same".

Layer names follow the reference modules: `smb{i}_stem` (`smb1.stem_block.0`), `smb{i}_layer{j}`
(`smb{i}.layer{j}`), `trans{i}_{j}` (`trans{i}.transformer_blocks.{j}`), so the reference-name mapping
(`ssaseg_keras.convert.seaformer`) is one to one.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ssaseg_keras.layers.batch_norm import SyncBatchNormalization
from ssaseg_keras.layers.drop_path import DropPath
from ssaseg_keras.models.backbones.base import Backbone
from ssaseg_keras.models.backbones.resnet import torch_pad
from ssaseg_keras.ops.resize import resize_bilinear

NORM_EPS = 1e-5
BN_MOMENTUM = 0.9  # torch momentum 0.1
POS_EMBED_LENGTH = 16  # the reference's axial position tables have 16 entries

# The reference configs (configs/seaformer/seaformer_{base,large}.py): SeaFormerBackbone arguments.
# cfgs: per smb stage, a list of MV2 blocks [kernel k, expansion t, width c, stride s].
SEAFORMER_LAYOUTS = {
    "b": {
        "cfgs": [
            [[3, 1, 16, 1], [3, 4, 32, 2], [3, 3, 32, 1]],
            [[5, 3, 64, 2], [5, 3, 64, 1]],
            [[3, 3, 128, 2], [3, 3, 128, 1]],
            [[5, 4, 192, 2]],
            [[3, 6, 256, 2]],
        ],
        "channels": [16, 32, 64, 128, 192, 256],
        "emb_dims": [192, 256],
        "key_dims": [16, 24],
        "depths": [4, 4],
        "num_heads": 8,
        "attn_ratios": 2,
        "mlp_ratios": [2, 4],
        "drop_path_rate": 0.1,
    },
    "l": {
        "cfgs": [
            [[3, 3, 32, 1], [3, 4, 64, 2], [3, 4, 64, 1]],
            [[5, 4, 128, 2], [5, 4, 128, 1]],
            [[3, 4, 192, 2], [3, 4, 192, 1]],
            [[5, 4, 256, 2]],
            [[3, 6, 320, 2]],
        ],
        "channels": [32, 64, 128, 192, 256, 320],
        "emb_dims": [192, 256, 320],
        "key_dims": [16, 20, 24],
        "depths": [3, 3, 3],
        "num_heads": 8,
        "attn_ratios": 2,
        "mlp_ratios": [2, 4, 6],
        "drop_path_rate": 0.1,
    },
}

_B = SEAFORMER_LAYOUTS["b"]  # the constructor's defaults

ACTIVATIONS = {"relu": ops.relu, "relu6": ops.relu6}


def make_divisible(value, divisor=8, min_value=None):
    """MobileNet's channel rounding: the nearest multiple of `divisor`, never 10% below `value`."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _activation(name):
    if name is not None and name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or None, got {name!r}")
    return name


def _strided(size, stride):
    """Output size of a conv with odd kernel k, padding k // 2 and `stride`."""
    return None if size is None else (size - 1) // stride + 1


def _conv_initializer():
    # The reference's init_weights: normal(0, sqrt(2 / n)), n = k * k * out / groups (fan-out).
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SeaFormerConvBN(keras.layers.Layer):
    """The reference's `Conv2d_BN` (+ optional activation): a kxk conv without bias (padding k // 2,
    dense or depthwise) and a BatchNorm. (B, H, W, Cin) -> (B, H/s, W/s, filters).

    Args:
        filters: output width (for `depthwise`, the input width).
        kernel_size: odd k.
        strides: 1 or 2.
        depthwise: a depthwise conv (torch groups = channels).
        activation: None, "relu" or "relu6", applied after the BN.
        zero_gamma: the BN scale starts at 0 (the reference's `bn_weight_init=0`).
        bn_momentum: BN moving-average momentum (Keras convention; 0.9 = torch's 0.1).
    """

    def __init__(self, filters, kernel_size=1, strides=1, depthwise=False, activation=None, zero_gamma=False,
                 bn_momentum=BN_MOMENTUM, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        if int(kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size!r}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.depthwise = bool(depthwise)
        self.activation = _activation(activation)
        self.zero_gamma = bool(zero_gamma)
        self.bn_momentum = float(bn_momentum)

    def build(self, input_shape):
        policy = self.dtype_policy
        if self.depthwise:
            if int(input_shape[-1]) != self.filters:
                raise ValueError(f"{self.name}: a depthwise conv keeps the width ({input_shape[-1]} != {self.filters})")
            self.c = keras.layers.DepthwiseConv2D(
                self.kernel_size, strides=self.strides, use_bias=False, depthwise_initializer=_conv_initializer(),
                dtype=policy, name="c",
            )  # fmt: skip
        else:
            self.c = keras.layers.Conv2D(
                self.filters, self.kernel_size, strides=self.strides, use_bias=False,
                kernel_initializer=_conv_initializer(), dtype=policy, name="c",
            )  # fmt: skip
        self.bn = SyncBatchNormalization(
            epsilon=NORM_EPS, momentum=self.bn_momentum, gamma_initializer="zeros" if self.zero_gamma else "ones",
            dtype=policy, name="bn",
        )  # fmt: skip
        self.c.build(tuple(input_shape))
        self.bn.build(tuple(input_shape[:-1]) + (self.filters,))
        self.built = True

    def call(self, x, training=False):
        x = self.bn(self.c(torch_pad(x, self.kernel_size // 2)), training=training)
        return x if self.activation is None else ACTIVATIONS[self.activation](x)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, _strided(height, self.strides), _strided(width, self.strides), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "depthwise": self.depthwise,
            "activation": self.activation,
            "zero_gamma": self.zero_gamma,
            "bn_momentum": self.bn_momentum,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SeaFormerInvertedResidual(keras.layers.Layer):
    """MobileNetV2 block (`InvertedResidual`): [1x1 expand + BN + act when expand_ratio != 1] ->
    kxk depthwise (stride) + BN + act -> 1x1 project + BN, plus the input when the stride is 1 and
    the width is unchanged. (B, H, W, Cin) -> (B, H/s, W/s, filters); hidden width round(Cin * t)."""

    def __init__(self, filters, kernel_size=3, strides=1, expand_ratio=1, activation="relu", bn_momentum=BN_MOMENTUM,
                 **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        if int(strides) not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.expand_ratio = expand_ratio
        self.activation = _activation(activation)
        self.bn_momentum = float(bn_momentum)

    def build(self, input_shape):
        policy = self.dtype_policy
        shape = tuple(input_shape)
        channels = int(shape[-1])
        hidden = int(round(channels * self.expand_ratio))
        self.has_expand = self.expand_ratio != 1
        self.use_residual = self.strides == 1 and channels == self.filters

        def conv_bn(filters, kernel, strides, depthwise, activation, name, in_shape):
            layer = SeaFormerConvBN(
                filters, kernel, strides, depthwise=depthwise, activation=activation, bn_momentum=self.bn_momentum,
                dtype=policy, name=name,
            )  # fmt: skip
            layer.build(in_shape)
            return layer

        inner = shape[:-1] + (hidden,)
        self.expand = conv_bn(hidden, 1, 1, False, self.activation, "expand", shape) if self.has_expand else None
        self.depthwise = conv_bn(hidden, self.kernel_size, self.strides, True, self.activation, "depthwise", inner)
        self.project = conv_bn(self.filters, 1, 1, False, None, "project", inner)
        self.built = True

    def call(self, x, training=False):
        y = self.expand(x, training=training) if self.has_expand else x
        y = self.project(self.depthwise(y, training=training), training=training)
        return x + y if self.use_residual else y

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, _strided(height, self.strides), _strided(width, self.strides), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "expand_ratio": self.expand_ratio,
            "activation": self.activation,
            "bn_momentum": self.bn_momentum,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SeaAttention(keras.layers.Layer):
    """Squeeze-enhanced axial attention (`Sea_Attention`). (B, H, W, C) -> (B, H, W, C).

    Heads split channels head-major (channel = head * width + j), as the reference's reshapes. The
    axial attentions (means, position embeddings, softmax, products) run in float32.

    Args:
        key_dim: query/key width per head.
        num_heads: heads.
        attn_ratio: value width per head / key_dim (must be 2, see the module notes).
        activation: "relu6" in SeaFormer (the activation before the projections and after dwconv).
        bn_momentum: BN moving-average momentum (Keras convention).
    """

    def __init__(self, key_dim, num_heads, attn_ratio=2, activation="relu6", bn_momentum=BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.key_dim = int(key_dim)
        self.num_heads = int(num_heads)
        self.attn_ratio = attn_ratio
        self.activation = _activation(activation)
        self.bn_momentum = float(bn_momentum)
        self.value_dim = int(attn_ratio * self.key_dim)  # d
        self.qk_width = self.key_dim * self.num_heads  # nh_kd
        self.v_width = self.value_dim * self.num_heads  # dh
        if 2 * self.qk_width + self.v_width != 2 * self.v_width:
            raise ValueError(
                "SeaAttention: the reference's detail-enhancement dwconv is 2 x value width wide, which "
                f"fits concat(q, k, v) only when attn_ratio * key_dim == 2 * key_dim; got attn_ratio {attn_ratio}"
            )

    def build(self, input_shape):
        policy = self.dtype_policy
        shape = tuple(input_shape)
        dim = int(shape[-1])
        self.dim = dim

        def conv_bn(filters, name, in_width, kernel=1, depthwise=False, zero_gamma=False):
            layer = SeaFormerConvBN(
                filters, kernel, depthwise=depthwise, zero_gamma=zero_gamma, bn_momentum=self.bn_momentum,
                dtype=policy, name=name,
            )  # fmt: skip
            layer.build(shape[:-1] + (in_width,))
            return layer

        self.to_q = conv_bn(self.qk_width, "to_q", dim)
        self.to_k = conv_bn(self.qk_width, "to_k", dim)
        self.to_v = conv_bn(self.v_width, "to_v", dim)
        self.proj = conv_bn(dim, "proj", self.v_width, zero_gamma=True)
        self.proj_encode_row = conv_bn(self.v_width, "proj_encode_row", self.v_width, zero_gamma=True)
        self.proj_encode_column = conv_bn(self.v_width, "proj_encode_column", self.v_width, zero_gamma=True)
        self.dwconv = conv_bn(2 * self.v_width, "dwconv", 2 * self.v_width, kernel=3, depthwise=True)
        self.pwconv = conv_bn(dim, "pwconv", 2 * self.v_width)
        init = keras.initializers.RandomNormal(stddev=1.0)  # torch.randn
        table = (POS_EMBED_LENGTH, self.qk_width)
        self.pos_emb_rowq = self.add_weight(shape=table, initializer=init, name="pos_emb_rowq", dtype="float32")
        self.pos_emb_rowk = self.add_weight(shape=table, initializer=init, name="pos_emb_rowk", dtype="float32")
        self.pos_emb_columnq = self.add_weight(shape=table, initializer=init, name="pos_emb_columnq", dtype="float32")
        self.pos_emb_columnk = self.add_weight(shape=table, initializer=init, name="pos_emb_columnk", dtype="float32")
        self.built = True

    @staticmethod
    def position_embedding(table, length):
        """(16, C) table -> (1, length, C): torch's 1-D linear interpolation, align_corners=False."""
        channels = table.shape[-1]
        # float32 even where a mixed policy autocasts variables read in `call`.
        line = ops.reshape(ops.cast(table, "float32"), (1, 1, POS_EMBED_LENGTH, channels))
        line = resize_bilinear(line, (1, length), align_corners=False)
        return ops.reshape(line, (1, -1, channels))

    def axial_attention(self, q, k, v, pos_q, pos_k):
        """Attention along one axis of the squeezed (mean) tokens: q, k (B, N, heads * kd), v (B, N, heads * d),
        float32 -> (B, N, heads * d) float32."""
        length = ops.shape(q)[1]
        batch = ops.shape(q)[0]
        q = q + self.position_embedding(pos_q, length)
        k = k + self.position_embedding(pos_k, length)
        q = ops.transpose(ops.reshape(q, (batch, -1, self.num_heads, self.key_dim)), (0, 2, 1, 3))
        k = ops.transpose(ops.reshape(k, (batch, -1, self.num_heads, self.key_dim)), (0, 2, 3, 1))
        v = ops.transpose(ops.reshape(v, (batch, -1, self.num_heads, self.value_dim)), (0, 2, 1, 3))
        attention = ops.softmax(ops.matmul(q, k) * (self.key_dim**-0.5), axis=-1)  # (B, heads, N, N)
        out = ops.transpose(ops.matmul(attention, v), (0, 2, 1, 3))  # (B, N, heads, d)
        return ops.reshape(out, (batch, -1, self.v_width))

    def call(self, x, training=False):
        act = ACTIVATIONS[self.activation]
        q = self.to_q(x, training=training)
        k = self.to_k(x, training=training)
        v = self.to_v(x, training=training)
        # Detail enhancement: a depthwise + pointwise conv over concat(q, k, v).
        detail = self.dwconv(ops.concatenate([q, k, v], axis=-1), training=training)
        detail = self.pwconv(act(detail), training=training)

        q32, k32, v32 = (ops.cast(t, "float32") for t in (q, k, v))
        # Row: tokens are the H rows (means over W); column: the W columns (means over H).
        row = self.axial_attention(
            ops.mean(q32, axis=2), ops.mean(k32, axis=2), ops.mean(v32, axis=2), self.pos_emb_rowq, self.pos_emb_rowk
        )
        column = self.axial_attention(
            ops.mean(q32, axis=1), ops.mean(k32, axis=1), ops.mean(v32, axis=1),
            self.pos_emb_columnq, self.pos_emb_columnk,
        )  # fmt: skip
        row = ops.expand_dims(ops.cast(row, x.dtype), 2)  # (B, H, 1, dh)
        column = ops.expand_dims(ops.cast(column, x.dtype), 1)  # (B, 1, W, dh)
        row = self.proj_encode_row(act(row), training=training)
        column = self.proj_encode_column(act(column), training=training)
        out = self.proj(act(v + (row + column)), training=training)
        return ops.hard_sigmoid(out) * detail

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "key_dim": self.key_dim,
            "num_heads": self.num_heads,
            "attn_ratio": self.attn_ratio,
            "activation": self.activation,
            "bn_momentum": self.bn_momentum,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SeaFormerMlp(keras.layers.Layer):
    """`fc2(act(dwconv(fc1(x))))`: conv1x1 + BN (hidden), dw3x3 with bias, act, conv1x1 + BN (C).
    (B, H, W, C) -> same."""

    def __init__(self, hidden_dim, activation="relu6", bn_momentum=BN_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.activation = _activation(activation)
        self.bn_momentum = float(bn_momentum)

    def build(self, input_shape):
        policy = self.dtype_policy
        shape = tuple(input_shape)
        hidden = shape[:-1] + (self.hidden_dim,)
        self.fc1 = SeaFormerConvBN(self.hidden_dim, bn_momentum=self.bn_momentum, dtype=policy, name="fc1")
        self.dwconv = keras.layers.DepthwiseConv2D(
            3, padding="same", use_bias=True, depthwise_initializer=_conv_initializer(), dtype=policy, name="dwconv"
        )
        self.fc2 = SeaFormerConvBN(int(shape[-1]), bn_momentum=self.bn_momentum, dtype=policy, name="fc2")
        self.fc1.build(shape)
        self.dwconv.build(hidden)
        self.fc2.build(hidden)
        self.built = True

    def call(self, x, training=False):
        x = self.dwconv(self.fc1(x, training=training))
        return self.fc2(ACTIVATIONS[self.activation](x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "activation": self.activation,
            "bn_momentum": self.bn_momentum,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SeaFormerBlock(keras.layers.Layer):
    """Transformer block: x + drop_path(SeaAttention(x)), then + drop_path(Mlp(x)) (no norms: the
    convs carry BNs). (B, H, W, C) -> same.

    Args:
        key_dim, num_heads, attn_ratio: the attention's (see SeaAttention).
        mlp_ratio: the Mlp's hidden width is int(C * mlp_ratio).
        drop_path: stochastic-depth rate of both branches.
        activation: "relu6" in SeaFormer.
        seed: the drop-path generator's seed.
    """

    def __init__(self, key_dim, num_heads, mlp_ratio=4.0, attn_ratio=2, drop_path=0.0, activation="relu6",
                 bn_momentum=BN_MOMENTUM, seed=None, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.key_dim = int(key_dim)
        self.num_heads = int(num_heads)
        self.mlp_ratio = mlp_ratio
        self.attn_ratio = attn_ratio
        self.drop_path = float(drop_path)
        self.activation = _activation(activation)
        self.bn_momentum = float(bn_momentum)
        self.seed = seed

    def build(self, input_shape):
        policy = self.dtype_policy
        shape = tuple(input_shape)
        self.attn = SeaAttention(
            self.key_dim, self.num_heads, self.attn_ratio, activation=self.activation, bn_momentum=self.bn_momentum,
            dtype=policy, name="attn",
        )  # fmt: skip
        self.mlp = SeaFormerMlp(
            int(int(shape[-1]) * self.mlp_ratio), activation=self.activation, bn_momentum=self.bn_momentum,
            dtype=policy, name="mlp",
        )  # fmt: skip
        self.attn.build(shape)
        self.mlp.build(shape)
        self.drop = DropPath(self.drop_path, seed=self.seed, dtype=policy, name="drop_path")
        self.built = True

    def call(self, x, training=False):
        x = x + self.drop(self.attn(x, training=training), training=training)
        return x + self.drop(self.mlp(x, training=training), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "key_dim": self.key_dim,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "attn_ratio": self.attn_ratio,
            "drop_path": self.drop_path,
            "activation": self.activation,
            "bn_momentum": self.bn_momentum,
            "seed": self.seed,
        }


def _number(value):
    value = float(value)
    return int(value) if value.is_integer() else value


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SeaFormerBackbone(Backbone):
    """SeaFormer as a functional model: images (B, H, W, 3) -> [smb2 (1/8), trans_1 .. trans_n], NHWC.

    The outputs are the reference's, in its order: 3 maps for SeaFormer-B (1/8, 1/32, 1/64), 4 for
    SeaFormer-L (1/8, 1/16, 1/32, 1/64). `pyramid_outputs` names them by stride (`P3` = 1/8 ...
    `P6` = 1/64). H and W may be any multiples of 64 for the strides to be exact; other sizes give
    torch's ceil-divided maps (64 x 96 -> 8 x 12, 2 x 3, 1 x 2).

    The defaults are SeaFormer-B's (`SEAFORMER_LAYOUTS["b"]`, drop-path 0.1 as its config).

    Args:
        cfgs: per smb stage, its MV2 blocks as [kernel, expand_ratio, width, stride].
        channels: the stem's width, then each smb stage's output width (checked).
        emb_dims: the transformer stages' widths (= the widths of the smb stages they follow; checked).
        key_dims: the transformer stages' key widths per head.
        depths: transformer blocks per stage (its length = number of transformer stages).
        num_heads: attention heads (all stages).
        attn_ratios: value width / key width (2).
        mlp_ratios: per transformer stage, the Mlp expansion.
        drop_path_rate: the last block's drop-path rate in each transformer stage (rising from 0).
        image_shape: input shape (H, W, 3); H and W may be None.
        seed: seed of the drop-path generators (None: random).
    """

    def __init__(self, cfgs=_B["cfgs"], channels=_B["channels"], emb_dims=_B["emb_dims"], key_dims=_B["key_dims"],
                 depths=_B["depths"], num_heads=_B["num_heads"], attn_ratios=_B["attn_ratios"],
                 mlp_ratios=_B["mlp_ratios"], drop_path_rate=_B["drop_path_rate"], image_shape=(None, None, 3),
                 seed=None, dtype=None, **kwargs):  # fmt: skip
        cfgs = [[[_number(v) for v in block] for block in stage] for stage in cfgs]
        channels = [int(c) for c in channels]
        emb_dims = [int(d) for d in emb_dims]
        key_dims = [int(d) for d in key_dims]
        depths = [int(d) for d in depths]
        mlp_ratios = [_number(r) for r in mlp_ratios]
        num_stages, num_trans = len(cfgs), len(depths)
        if len(channels) != num_stages + 1:
            raise ValueError(f"SeaFormer: channels needs {num_stages + 1} entries (stem + stages), got {channels}")
        if not (len(emb_dims) == len(key_dims) == len(mlp_ratios) == num_trans) or not 1 <= num_trans < num_stages:
            raise ValueError(
                f"SeaFormer: emb_dims {emb_dims}, key_dims {key_dims}, mlp_ratios {mlp_ratios} need one entry per "
                f"transformer stage (depths {depths}), fewer than the {num_stages} smb stages"
            )
        widths = [make_divisible(stage[-1][2], 8) for stage in cfgs]
        if widths != channels[1:]:
            raise ValueError(f"SeaFormer: the smb stages end with widths {widths}, but channels[1:] is {channels[1:]}")
        if emb_dims != widths[num_stages - num_trans :]:
            raise ValueError(f"SeaFormer: emb_dims {emb_dims} must be the last smb widths {widths[-num_trans:]}")

        inputs = keras.Input(shape=tuple(image_shape), name="images")
        x = SeaFormerConvBN(channels[0], 3, 2, activation="relu", dtype=dtype, name="smb1_stem")(inputs)
        stride, outputs, strides = 2, [], []
        for i, stage in enumerate(cfgs):
            for j, (kernel, ratio, width, step) in enumerate(stage, start=1):
                x = SeaFormerInvertedResidual(
                    make_divisible(width, 8), int(kernel), int(step), ratio, activation="relu", dtype=dtype,
                    name=f"smb{i + 1}_layer{j}",
                )(x)  # fmt: skip
                stride *= int(step)
            if i == 1:  # the shared 1/8 map
                outputs.append(x)
                strides.append(stride)
            t = i + num_trans - num_stages  # the transformer stage after this smb stage, if any
            if t >= 0:
                rates = np.linspace(0.0, float(drop_path_rate), depths[t]).tolist()
                for b in range(depths[t]):
                    x = SeaFormerBlock(
                        key_dims[t], num_heads, mlp_ratio=mlp_ratios[t], attn_ratio=attn_ratios, drop_path=rates[b],
                        activation="relu6", seed=None if seed is None else int(seed) + 100 * t + b, dtype=dtype,
                        name=f"trans{t + 1}_{b}",
                    )(x)  # fmt: skip
                outputs.append(x)
                strides.append(stride)
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.pyramid_outputs = {f"P{int(np.log2(s))}": t for s, t in zip(strides, self.outputs)}
        self.output_strides = strides
        self.cfgs = cfgs
        self.channels = channels
        self.emb_dims = emb_dims
        self.key_dims = key_dims
        self.depths = depths
        self.num_heads = int(num_heads)
        self.attn_ratios = attn_ratios
        self.mlp_ratios = mlp_ratios
        self.drop_path_rate = float(drop_path_rate)
        self.image_shape = tuple(image_shape)
        self.seed = seed

    def get_config(self):
        return {
            **super().get_config(),
            "cfgs": self.cfgs,
            "channels": self.channels,
            "emb_dims": self.emb_dims,
            "key_dims": self.key_dims,
            "depths": self.depths,
            "num_heads": self.num_heads,
            "attn_ratios": self.attn_ratios,
            "mlp_ratios": self.mlp_ratios,
            "drop_path_rate": self.drop_path_rate,
            "image_shape": self.image_shape,
            "seed": self.seed,
        }
