"""MSCAN, SegNeXt's convolutional backbone (Guo et al., NeurIPS 2022), channels-last.

Four stages; stage i downsamples (stage 1: a two-conv stem, stride 4; others: conv3x3 stride 2 + BN),
runs `depths[i]` MSCA blocks and ends with a LayerNorm over channels. A block is pre-norm with
layer scale and drop-path on both branches:

    x = x + drop_path(ls1 * Attention(BN(x)))      Attention: 1x1, GELU, gating unit, 1x1, + input
    x = x + drop_path(ls2 * Mlp(BN(x)))            Mlp: 1x1 (ratio*C), dw3x3, GELU, 1x1 (C)

The gating unit multiplies its input by a 1x1 conv of the sum of multi-scale strip convolutions
(5x5, then 1xk/kx1 pairs for k = 7, 11, 21; all depthwise with bias). GELU is the exact erf form;
BatchNorm and LayerNorm use eps 1e-5 like the reference.

Convolutions with stride 2 pad one pixel on every side (torch's `padding=1`), which differs from
Keras' asymmetric "same" padding, so they pad explicitly and convolve "valid".
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ssaseg_keras.layers.batch_norm import SyncBatchNormalization
from ssaseg_keras.layers.drop_path import DropPath
from ssaseg_keras.models.backbones.base import Backbone

NORM_EPS = 1e-5
BN_MOMENTUM = 0.9  # torch momentum 0.1
GATING_STRIP_SIZES = (7, 11, 21)


def gelu(x):
    return ops.gelu(x, approximate=False)


def batch_norm(name, dtype=None):
    return SyncBatchNormalization(
        epsilon=NORM_EPS, momentum=BN_MOMENTUM, dtype=dtype, name=name
    )


def pad1(x):
    """Zero-pad one pixel on each spatial side of an NHWC tensor (torch Conv2d padding=1)."""
    return ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class MSCANStem(keras.layers.Layer):
    """Stage-1 stem: conv3x3 s2 (C/2) + BN + GELU + conv3x3 s2 (C) + BN. (B, H, W, 3) -> (B, H/4, W/4, C)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)

    def build(self, input_shape):
        policy = self.dtype_policy
        half = (None, None, None, self.filters // 2)
        self.conv1 = keras.layers.Conv2D(self.filters // 2, 3, strides=2, dtype=policy, name="conv1")
        self.norm1 = batch_norm("norm1", policy)
        self.conv2 = keras.layers.Conv2D(self.filters, 3, strides=2, dtype=policy, name="conv2")
        self.norm2 = batch_norm("norm2", policy)
        self.conv1.build(input_shape)
        self.norm1.build(half)
        self.conv2.build(half)
        self.norm2.build((None, None, None, self.filters))
        self.built = True

    def call(self, x, training=False):
        x = gelu(self.norm1(self.conv1(pad1(x)), training=training))
        return self.norm2(self.conv2(pad1(x)), training=training)

    def compute_output_shape(self, input_shape):
        return _downsampled(input_shape, 4, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class MSCANDownsample(keras.layers.Layer):
    """Stages 2-4 patch embedding: conv3x3 s2 + BN. (B, H, W, Cin) -> (B, H/2, W/2, C)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)

    def build(self, input_shape):
        policy = self.dtype_policy
        self.conv = keras.layers.Conv2D(self.filters, 3, strides=2, dtype=policy, name="proj")
        self.norm = batch_norm("norm", policy)
        self.conv.build(input_shape)
        self.norm.build((None, None, None, self.filters))
        self.built = True

    def call(self, x, training=False):
        return self.norm(self.conv(pad1(x)), training=training)

    def compute_output_shape(self, input_shape):
        return _downsampled(input_shape, 2, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SpatialGatingUnit(keras.layers.Layer):
    """Multi-scale convolutional attention: `conv1x1(a + sum_k strip_k(a)) * u`, a = dw5x5(u).

    (B, H, W, C) -> (B, H, W, C).
    """

    def build(self, input_shape):
        policy = self.dtype_policy
        dim = int(input_shape[-1])

        def dw(kernel, name):
            layer = keras.layers.DepthwiseConv2D(kernel, padding="same", dtype=policy, name=name)
            layer.build(input_shape)
            return layer

        self.conv0 = dw(5, "conv0")
        # Flat list [conv0_1, conv0_2, conv1_1, ...]: (1 x k) then (k x 1) for each strip size k.
        strips = []
        for i, k in enumerate(GATING_STRIP_SIZES):
            strips += [dw((1, k), f"conv{i}_1"), dw((k, 1), f"conv{i}_2")]
        self.strip_convs = strips
        self.conv3 = keras.layers.Conv2D(dim, 1, dtype=policy, name="conv3")
        self.conv3.build(input_shape)
        self.built = True

    def call(self, u):
        attn = self.conv0(u)
        total = attn
        for i in range(0, len(self.strip_convs), 2):
            total = total + self.strip_convs[i + 1](self.strip_convs[i](attn))
        return self.conv3(total) * u

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class MSCAttention(keras.layers.Layer):
    """`proj_2(gating(GELU(proj_1(x)))) + x`, all 1x1 convs with bias. (B, H, W, C) -> same."""

    def build(self, input_shape):
        policy = self.dtype_policy
        dim = int(input_shape[-1])
        self.proj_1 = keras.layers.Conv2D(dim, 1, dtype=policy, name="proj_1")
        self.gating = SpatialGatingUnit(dtype=policy, name="spatial_gating_unit")
        self.proj_2 = keras.layers.Conv2D(dim, 1, dtype=policy, name="proj_2")
        for layer in (self.proj_1, self.gating, self.proj_2):
            layer.build(input_shape)
        self.built = True

    def call(self, x):
        return self.proj_2(self.gating(gelu(self.proj_1(x)))) + x

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class MSCANMlp(keras.layers.Layer):
    """`fc2(GELU(dw3x3(fc1(x))))` with hidden width `hidden_dim`. (B, H, W, C) -> same."""

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)

    def build(self, input_shape):
        policy = self.dtype_policy
        dim = int(input_shape[-1])
        hidden = (None, None, None, self.hidden_dim)
        self.fc1 = keras.layers.Conv2D(self.hidden_dim, 1, dtype=policy, name="fc1")
        self.dwconv = keras.layers.DepthwiseConv2D(3, padding="same", dtype=policy, name="dwconv")
        self.fc2 = keras.layers.Conv2D(dim, 1, dtype=policy, name="fc2")
        self.fc1.build(input_shape)
        self.dwconv.build(hidden)
        self.fc2.build(hidden)
        self.built = True

    def call(self, x):
        return self.fc2(gelu(self.dwconv(self.fc1(x))))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class MSCANBlock(keras.layers.Layer):
    """One MSCA block (pre-norm BN, layer scale 1e-2, drop-path). (B, H, W, C) -> same.

    Args:
        mlp_ratio: hidden width of the MLP as a multiple of C.
        drop_path: stochastic-depth rate of both branches.
        layer_scale_init: initial value of the per-channel layer scales.
    """

    def __init__(self, mlp_ratio=4, drop_path=0.0, layer_scale_init=1e-2, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.mlp_ratio = mlp_ratio
        self.drop_path = float(drop_path)
        self.layer_scale_init = float(layer_scale_init)
        self.seed = seed

    def build(self, input_shape):
        policy = self.dtype_policy
        dim = int(input_shape[-1])
        self.norm1 = batch_norm("norm1", policy)
        self.attn = MSCAttention(dtype=policy, name="attn")
        self.norm2 = batch_norm("norm2", policy)
        self.mlp = MSCANMlp(int(dim * self.mlp_ratio), dtype=policy, name="mlp")
        for layer in (self.norm1, self.attn, self.norm2, self.mlp):
            layer.build(input_shape)
        self.drop = DropPath(self.drop_path, seed=self.seed, dtype=policy, name="drop_path")
        init = keras.initializers.Constant(self.layer_scale_init)
        self.layer_scale_1 = self.add_weight(shape=(dim,), initializer=init, name="layer_scale_1")
        self.layer_scale_2 = self.add_weight(shape=(dim,), initializer=init, name="layer_scale_2")
        self.built = True

    def call(self, x, training=False):
        ls1 = ops.cast(self.layer_scale_1, x.dtype)
        ls2 = ops.cast(self.layer_scale_2, x.dtype)
        x = x + self.drop(ls1 * self.attn(self.norm1(x, training=training)), training=training)
        return x + self.drop(ls2 * self.mlp(self.norm2(x, training=training)), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "mlp_ratio": self.mlp_ratio,
            "drop_path": self.drop_path,
            "layer_scale_init": self.layer_scale_init,
            "seed": self.seed,
        }


def _downsampled(input_shape, factor, channels):
    def div(size):
        return None if size is None else size // factor

    return (input_shape[0], div(input_shape[1]), div(input_shape[2]), channels)


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class MSCANBackbone(Backbone):
    """MSCAN as a functional model: images (B, H, W, 3) -> [stage1 .. stage4], NHWC.

    Stage i has stride 2^(i+1) (4, 8, 16, 32) and `embed_dims[i]` channels. H and W may be any
    multiples of 32 (the input shape is left open unless `image_shape` fixes it).

    Layer names follow the reference: `patch_embed{i}`, `block{i}_{j}`, `norm{i}` (1-based i).

    Args:
        embed_dims: widths of the 4 stages.
        mlp_ratios: MLP expansion of each stage.
        depths: number of blocks per stage.
        drop_path_rate: stochastic depth of the last block; it rises linearly from 0 over all blocks.
        image_shape: input shape (H, W, 3), H/W may be None.
        seed: seed of the drop-path generators (None: random).
    """

    def __init__(
        self,
        embed_dims=(32, 64, 160, 256),
        mlp_ratios=(8, 8, 4, 4),
        depths=(3, 3, 5, 2),
        drop_path_rate=0.1,
        image_shape=(None, None, 3),
        seed=None,
        dtype=None,
        **kwargs,
    ):
        embed_dims = [int(d) for d in embed_dims]
        mlp_ratios = [int(r) if float(r).is_integer() else float(r) for r in mlp_ratios]
        depths = [int(d) for d in depths]
        if not (len(embed_dims) == len(mlp_ratios) == len(depths) == 4):
            raise ValueError(
                "MSCAN needs 4 stages: embed_dims, mlp_ratios and depths must each have 4 entries, "
                f"got {embed_dims}, {mlp_ratios}, {depths}."
            )
        rates = np.linspace(0.0, float(drop_path_rate), sum(depths)).tolist()

        inputs = keras.Input(shape=tuple(image_shape), name="images")
        x = inputs
        outputs = []
        block_index = 0
        for stage, (dim, ratio, depth) in enumerate(zip(embed_dims, mlp_ratios, depths), start=1):
            if stage == 1:
                x = MSCANStem(dim, dtype=dtype, name="patch_embed1")(x)
            else:
                x = MSCANDownsample(dim, dtype=dtype, name=f"patch_embed{stage}")(x)
            for j in range(depth):
                block_seed = None if seed is None else int(seed) + block_index
                x = MSCANBlock(
                    mlp_ratio=ratio,
                    drop_path=rates[block_index],
                    seed=block_seed,
                    dtype=dtype,
                    name=f"block{stage}_{j}",
                )(x)
                block_index += 1
            x = keras.layers.LayerNormalization(epsilon=NORM_EPS, dtype=dtype, name=f"norm{stage}")(x)
            outputs.append(x)

        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.embed_dims = embed_dims
        self.mlp_ratios = mlp_ratios
        self.depths = depths
        self.drop_path_rate = float(drop_path_rate)
        self.image_shape = tuple(image_shape)
        self.seed = seed

    def get_config(self):
        return {
            **super().get_config(),
            "embed_dims": self.embed_dims,
            "mlp_ratios": self.mlp_ratios,
            "depths": self.depths,
            "drop_path_rate": self.drop_path_rate,
            "image_shape": self.image_shape,
            "seed": self.seed,
        }
