"""Swin Transformer backbone (Liu et al., ICCV 2021) as mmseg 1.2.2's `SwinTransformer` computes it.

Channels-last throughout. A patch embedding (conv k = s = `patch_size`, LayerNorm) is followed by 4
stages of Swin blocks; stage i ends with an output LayerNorm `norm{i}` (its feature, stride 4 * 2^i,
`embed_dims * 2^i` channels) and, for i < 3, a patch merging to the next stage. A block is pre-norm:

    x = x + drop_path(W-MSA(LN(x)))        windows of `window_size`, shifted by window // 2 on odd blocks
    x = x + drop_path(fc2(GELU(fc1(LN(x)))))

Where mmseg differs from the official Swin, this follows mmseg:
- any input size: the patch embedding and patch merging pad the bottom/right ("corner" padding) so
  the sides divide their stride, and each block pads its map to window multiples (bottom/right),
  attends, and crops; the window is never shrunk for maps smaller than it;
- the shifted-window mask is -100 between the 9 regions of the padded map (the padding included);
- patch merging gathers each 2x2 neighbourhood in `nn.Unfold` order: channel index c * 4 + kh * 2 + kw
  (the official repo concatenates [0::2, 0::2], [1::2, 0::2], [0::2, 1::2], [1::2, 1::2] instead;
  `ssaseg_keras.convert.swin.official_to_mmseg` reorders official weights);
- stochastic depth rises linearly from 0 to `drop_path_rate` over all blocks, on both branches.
GELU is the exact erf form; every LayerNorm has eps 1e-5; attention has no dropout; the softmax runs in
float32 (mixed precision). The weights' mmseg names are in `ssaseg_keras.convert.swin`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ssaseg_keras.layers.drop_path import DropPath
from ssaseg_keras.models.backbones.base import Backbone
from ssaseg_keras.utils.errors import UserError

NORM_EPS = 1e-5
MASK_VALUE = -100.0  # mmseg's attention mask between regions of a shifted window


def layer_norm(name, dtype=None):
    return keras.layers.LayerNormalization(epsilon=NORM_EPS, dtype=dtype, name=name)


def pad_bottom_right(x, multiple):
    """Zero-pad an NHWC tensor at the bottom and right so H and W divide `multiple` (mmseg's "corner")."""
    height, width = ops.shape(x)[1], ops.shape(x)[2]
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    return ops.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def ceil_div(size, divisor):
    return None if size is None else -(-int(size) // divisor)


def relative_position_index(window_size):
    """(w*w, w*w) int32: the row of the bias table for each (query, key) pair in a window, as mmseg.

    Equals (dy + w - 1) * (2w - 1) + (dx + w - 1) with (dy, dx) = query - key position.
    """
    coords = (
        np.arange(window_size)[:, None] * (2 * window_size - 1) + np.arange(window_size)[None, :]
    ).reshape(1, -1)
    return np.flip(coords + coords.T, axis=1).astype("int32")


def window_partition(x, window_size):
    """(B, Hp, Wp, C) with Hp, Wp multiples of w -> (B, nW, w*w, C), windows in row-major order."""
    batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
    channels = x.shape[-1]
    x = ops.reshape(
        x, (batch, height // window_size, window_size, width // window_size, window_size, channels)
    )
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (batch, -1, window_size * window_size, channels))


def window_reverse(windows, batch, height, width, window_size):
    """Inverse of `window_partition`: (B, nW, w*w, C) -> (B, Hp, Wp, C)."""
    channels = windows.shape[-1]
    x = ops.reshape(
        windows,
        (batch, height // window_size, width // window_size, window_size, window_size, channels),
    )
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (batch, height, width, channels))


def shifted_window_mask(height, width, window_size, shift):
    """(nW, 1, w*w, w*w) float32: 0 within a region, -100 across regions (mmseg's mask).

    The padded (height, width) map, rolled by -shift, is cut into 3 x 3 regions: rows [0, H - w),
    [H - w, H - shift), [H - shift, H) (likewise for columns). Computed with ops for any size.
    """

    def regions(size):
        index = ops.arange(size)
        return ops.where(index < size - window_size, 0, ops.where(index < size - shift, 1, 2))

    label = ops.cast(regions(height)[:, None] * 3 + regions(width)[None, :], "float32")
    label_windows = window_partition(label[None, :, :, None], window_size)[0, :, :, 0]  # (nW, w*w)
    differs = ops.not_equal(label_windows[:, None, :], label_windows[:, :, None])
    return ops.where(differs, MASK_VALUE, 0.0)[:, None, :, :]


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SwinPatchEmbed(keras.layers.Layer):
    """Conv k = s = patch_size (bias) after corner padding, then LayerNorm.

    (B, H, W, Cin) -> (B, ceil(H / p), ceil(W / p), embed_dims).
    """

    def __init__(self, embed_dims, patch_size=4, **kwargs):
        super().__init__(**kwargs)
        self.embed_dims = int(embed_dims)
        self.patch_size = int(patch_size)

    def build(self, input_shape):
        policy = self.dtype_policy
        self.projection = keras.layers.Conv2D(
            self.embed_dims,
            self.patch_size,
            strides=self.patch_size,
            dtype=policy,
            name="projection",
        )
        self.norm = layer_norm("norm", policy)
        self.projection.build((None, None, None, input_shape[-1]))
        self.norm.build((None, None, None, self.embed_dims))
        self.built = True

    def call(self, x):
        return self.norm(self.projection(pad_bottom_right(x, self.patch_size)))

    def compute_output_shape(self, input_shape):
        size = self.patch_size
        return (
            input_shape[0],
            ceil_div(input_shape[1], size),
            ceil_div(input_shape[2], size),
            self.embed_dims,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "embed_dims": self.embed_dims,
            "patch_size": self.patch_size,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SwinPatchMerging(keras.layers.Layer):
    """mmseg's PatchMerging: corner-pad to even sides, gather 2x2 neighbourhoods in unfold order
    (channel c * 4 + kh * 2 + kw), LayerNorm(4C), Linear(4C -> out_channels, no bias).

    (B, H, W, C) -> (B, ceil(H / 2), ceil(W / 2), out_channels).
    """

    def __init__(self, out_channels, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = int(out_channels)

    def build(self, input_shape):
        policy = self.dtype_policy
        merged = 4 * int(input_shape[-1])
        self.norm = layer_norm("norm", policy)
        self.reduction = keras.layers.Dense(
            self.out_channels, use_bias=False, dtype=policy, name="reduction"
        )
        self.norm.build((None, None, None, merged))
        self.reduction.build((None, None, None, merged))
        self.built = True

    def call(self, x):
        x = pad_bottom_right(x, 2)
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        channels = x.shape[-1]
        x = ops.reshape(x, (batch, height // 2, 2, width // 2, 2, channels))
        x = ops.transpose(x, (0, 1, 3, 5, 2, 4))  # (B, H/2, W/2, C, kh, kw)
        x = ops.reshape(x, (batch, height // 2, width // 2, 4 * channels))
        return self.reduction(self.norm(x))

    def compute_output_shape(self, input_shape):
        return (
            input_shape[0],
            ceil_div(input_shape[1], 2),
            ceil_div(input_shape[2], 2),
            self.out_channels,
        )

    def get_config(self):
        return {**super().get_config(), "out_channels": self.out_channels}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SwinWindowAttention(keras.layers.Layer):
    """Multi-head self-attention inside windows with a relative position bias (mmseg's WindowMSA).

    Windows (B, nW, N, C), N = w*w, and an optional additive `attention_mask` (nW, 1, N, N)
    -> (B, nW, N, C).
    The bias table ((2w - 1)^2, heads) is indexed by `relative_position_index(w)`.
    """

    def __init__(self, num_heads, window_size=7, qkv_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.window_size = int(window_size)
        self.qkv_bias = bool(qkv_bias)
        self.bias_index = relative_position_index(self.window_size).reshape(-1)

    def build(self, input_shape):
        policy = self.dtype_policy
        channels = int(input_shape[-1])
        if channels % self.num_heads:
            raise ValueError(
                f"{self.name}: {channels} channels do not split into {self.num_heads} heads."
            )
        self.qkv = keras.layers.Dense(
            3 * channels, use_bias=self.qkv_bias, dtype=policy, name="qkv"
        )
        self.proj = keras.layers.Dense(channels, dtype=policy, name="proj")
        self.qkv.build((None, None, None, channels))
        self.proj.build((None, None, None, channels))
        self.relative_position_bias_table = self.add_weight(
            shape=((2 * self.window_size - 1) ** 2, self.num_heads),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="relative_position_bias_table",
            autocast=False,  # read in float32 under mixed precision: the bias joins float32 scores
        )
        self.built = True

    def call(self, windows, attention_mask=None):
        shape = ops.shape(windows)
        batch, num_windows, tokens, channels = shape[0], shape[1], shape[2], windows.shape[-1]
        heads, head_dim = self.num_heads, channels // self.num_heads
        qkv = ops.reshape(self.qkv(windows), (batch, num_windows, tokens, 3, heads, head_dim))
        qkv = ops.transpose(qkv, (3, 0, 1, 4, 2, 5))  # (3, B, nW, heads, N, head_dim)
        query, key, value = qkv[0] * ops.cast(head_dim**-0.5, qkv.dtype), qkv[1], qkv[2]
        scores = ops.cast(ops.matmul(query, ops.transpose(key, (0, 1, 2, 4, 3))), "float32")
        area = self.window_size * self.window_size
        bias = ops.take(
            ops.cast(self.relative_position_bias_table, "float32"), self.bias_index, axis=0
        )
        scores = scores + ops.transpose(ops.reshape(bias, (area, area, heads)), (2, 0, 1))
        if attention_mask is not None:  # 0 / -100: exact in any float dtype
            scores = scores + ops.cast(attention_mask, "float32")
        weights = ops.cast(ops.softmax(scores, axis=-1), value.dtype)
        # (B, nW, heads, N, head_dim) -> (B, nW, N, heads, head_dim)
        out = ops.transpose(ops.matmul(weights, value), (0, 1, 3, 2, 4))
        return self.proj(ops.reshape(out, (batch, num_windows, tokens, channels)))

    def compute_output_shape(self, input_shape, attention_mask_shape=None):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "window_size": self.window_size,
            "qkv_bias": self.qkv_bias,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SwinBlock(keras.layers.Layer):
    """One Swin block (mmseg's SwinBlock), pre-norm, on an NHWC map. (B, H, W, C) -> same.

    Args:
        num_heads: attention heads.
        window_size: side w of the attention windows.
        shift: shift the windows by w // 2 (torch.roll by -w // 2 before, +w // 2 after).
        mlp_ratio: hidden width of the FFN as a multiple of C.
        qkv_bias: bias in the qkv projection.
        drop_path: stochastic-depth rate of both residual branches.
        seed: seed of the drop-path generator (None: random).
    """

    def __init__(self, num_heads, window_size=7, shift=False, mlp_ratio=4, qkv_bias=True, drop_path=0.0, seed=None,
                 **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.window_size = int(window_size)
        self.shift = bool(shift)
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = bool(qkv_bias)
        self.drop_path = float(drop_path)
        self.seed = seed

    @property
    def shift_size(self):
        return self.window_size // 2 if self.shift else 0

    def build(self, input_shape):
        policy = self.dtype_policy
        channels = int(input_shape[-1])
        hidden = int(self.mlp_ratio * channels)
        self.norm1 = layer_norm("norm1", policy)
        self.attn = SwinWindowAttention(
            self.num_heads, self.window_size, qkv_bias=self.qkv_bias, dtype=policy, name="attn"
        )
        self.norm2 = layer_norm("norm2", policy)
        self.fc1 = keras.layers.Dense(hidden, dtype=policy, name="fc1")
        self.fc2 = keras.layers.Dense(channels, dtype=policy, name="fc2")
        self.drop = DropPath(self.drop_path, seed=self.seed, dtype=policy, name="drop_path")
        feature = (None, None, None, channels)
        self.norm1.build(feature)
        self.attn.build((None, None, self.window_size**2, channels))
        self.norm2.build(feature)
        self.fc1.build(feature)
        self.fc2.build((None, None, None, hidden))
        self.built = True

    def shifted_window_attention(self, x):
        """mmseg's ShiftWindowMSA on (B, H, W, C): pad to window multiples, roll, attend, unroll, crop."""
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        window, shift = self.window_size, self.shift_size
        x = pad_bottom_right(x, window)
        padded_height, padded_width = ops.shape(x)[1], ops.shape(x)[2]
        mask = None
        if shift:
            x = ops.roll(x, shift=(-shift, -shift), axis=(1, 2))
            mask = shifted_window_mask(padded_height, padded_width, window, shift)
        windows = self.attn(window_partition(x, window), attention_mask=mask)
        x = window_reverse(windows, batch, padded_height, padded_width, window)
        if shift:
            x = ops.roll(x, shift=(shift, shift), axis=(1, 2))
        return x[:, :height, :width, :]

    def call(self, x, training=False):
        x = x + self.drop(self.shifted_window_attention(self.norm1(x)), training=training)
        ffn = self.fc2(ops.gelu(self.fc1(self.norm2(x)), approximate=False))
        return x + self.drop(ffn, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "window_size": self.window_size,
            "shift": self.shift,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "drop_path": self.drop_path,
            "seed": self.seed,
        }


def drop_path_rates(depths, drop_path_rate):
    """Per-block stochastic depth, linear from 0 to `drop_path_rate` over all blocks (mmseg's dpr)."""
    return np.linspace(0.0, float(drop_path_rate), sum(depths)).tolist()


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SwinBackbone(Backbone):
    """Swin Transformer (mmseg's `SwinTransformer`): images (B, H, W, 3) -> [stage1 .. stage4], NHWC.

    Stage i (1-based) has stride 2^(i+1) (4, 8, 16, 32; sides rounded up) and `embed_dims * 2^(i-1)`
    channels. Any H, W (odd and non-square included). Swin-T: the defaults; Swin-B: embed_dims 128,
    depths (2, 2, 18, 2), num_heads (4, 8, 16, 32); Swin-L: 192, (2, 2, 18, 2), (6, 12, 24, 48).

    Layer names follow mmseg (0-based): `patch_embed`, `stage{i}_block{j}`, `stage{i}_downsample`,
    `norm{i}`.

    Args:
        embed_dims: channels of stage 1 (doubled at every stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window side.
        mlp_ratio: FFN hidden width as a multiple of the stage width.
        qkv_bias: bias in the qkv projections.
        drop_path_rate: stochastic depth of the last block (0 for the first, linear in between).
        patch_size: patch embedding kernel and stride.
        image_shape: (H, W, 3); H and W None (any size, the default) or fixed.
        seed: seed of the drop-path generators (None: random).
    """

    def __init__(
        self,
        embed_dims=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        drop_path_rate=0.3,
        patch_size=4,
        image_shape=(None, None, 3),
        seed=None,
        dtype=None,
        **kwargs,
    ):
        embed_dims = int(embed_dims)
        depths = [int(d) for d in depths]
        num_heads = [int(h) for h in num_heads]
        if len(depths) != 4 or len(num_heads) != 4:
            raise UserError(
                f"Swin needs 4 stages: depths and num_heads must have 4 entries, got {depths}, {num_heads}."
            )
        for stage, heads in enumerate(num_heads):
            if (embed_dims * 2**stage) % heads:
                raise UserError(
                    f"Swin stage {stage}: {embed_dims * 2**stage} channels do not split into {heads} heads; "
                    "choose embed_dims and num_heads so that each stage's width divides by its heads."
                )
        rates = drop_path_rates(depths, drop_path_rate)

        inputs = keras.Input(shape=tuple(image_shape), name="images")
        x = SwinPatchEmbed(embed_dims, patch_size, dtype=dtype, name="patch_embed")(inputs)
        outputs = []
        block_index = 0
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            for j in range(depth):
                x = SwinBlock(
                    heads,
                    window_size=window_size,
                    shift=j % 2 == 1,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=rates[block_index],
                    seed=None if seed is None else int(seed) + block_index,
                    dtype=dtype,
                    name=f"stage{stage}_block{j}",
                )(x)
                block_index += 1
            outputs.append(layer_norm(f"norm{stage}", dtype)(x))
            if stage < len(depths) - 1:
                x = SwinPatchMerging(
                    2 * embed_dims * 2**stage, dtype=dtype, name=f"stage{stage}_downsample"
                )(x)

        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.embed_dims = embed_dims
        self.depths = depths
        self.num_heads = num_heads
        self.window_size = int(window_size)
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = bool(qkv_bias)
        self.drop_path_rate = float(drop_path_rate)
        self.patch_size = int(patch_size)
        self.image_shape = tuple(image_shape)
        self.seed = seed

    def get_config(self):
        return {
            **super().get_config(),
            "embed_dims": self.embed_dims,
            "depths": self.depths,
            "num_heads": self.num_heads,
            "window_size": self.window_size,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "drop_path_rate": self.drop_path_rate,
            "patch_size": self.patch_size,
            "image_shape": self.image_shape,
            "seed": self.seed,
        }
