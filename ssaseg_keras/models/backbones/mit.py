"""Mix Transformer (SegFormer's backbone) from keras-cv or keras-hub, as a feature-pyramid Backbone.

The library builds the MiT and owns its layers and weights (so its presets and weight files load
as they are); `source: keras_cv` (the default) or `keras_hub`, imported only here, when a MiT is built.

`MiTFeatures` runs the library's layers itself, as the reference MiT (mmseg's
`MixVisionTransformer`, which the SSA-Seg configs train) computes them, where the libraries differ:
- the token grid (H, W) is carried explicitly instead of H = W = sqrt(N), so a SegFormer runs at any
  size whose sides are multiples of 32, non-square included;
- patch embeddings pad k // 2 on every side (torch's `padding`; keras-cv pads "same", asymmetric);
- every LayerNorm uses eps 1e-6, GELU is the exact erf form (the libraries use the tanh form);
- the sequence-reduction input is reshaped token-major (keras-cv transposes it first);
- attention has no dropout, and stochastic depth rises linearly from 0 to `drop_path_rate` over all
  blocks (mmseg's `drop_path_rate`, 0.1 in the SegFormer configs), applied to both branches.
The weights' reference (mmseg) names, and loading pretrained MiT weights, are in `ssaseg_keras.convert.segformer`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ssaseg_keras.layers.drop_path import DropPath
from ssaseg_keras.models.backbones.base import Backbone
from ssaseg_keras.utils.errors import UserError

MIT_NUM_HEADS = (1, 2, 5, 8)
MIT_SR_RATIOS = (8, 4, 2, 1)
MIT_DROP_PATH = 0.1
MIT_PATCH_SIZES = (7, 3, 3, 3)
MIT_NORM_EPS = 1e-6  # mmseg's MiT: LayerNorm(eps=1e-6) everywhere
SOURCES = ("keras_cv", "keras_hub")
BUILD_SHAPE = (64, 64, 3)  # the library graph's input; weights do not depend on it


def import_library(source):
    try:
        if source == "keras_cv":
            import keras_cv

            return keras_cv
        import keras_hub

        return keras_hub
    except ImportError as error:
        package = source.replace("_", "-")
        raise UserError(
            f"model.source is {source} but {package} is not installed: `pip install {package}`, "
            f"or choose model.source: {'keras_hub' if source == 'keras_cv' else 'keras_cv'}."
        ) from error


def library_mit(source, embed_dims, depths):
    """The library's MiT model (built at `BUILD_SHAPE`), B0..B5 set by `embed_dims` and `depths`."""
    if source not in SOURCES:
        raise UserError(f"model.source must be one of {', '.join(SOURCES)}, got {source!r}")
    library = import_library(source)
    if source == "keras_cv":
        return library.models.MiTBackbone(
            include_rescaling=False,
            depths=list(depths),
            embedding_dims=list(embed_dims),
            input_shape=BUILD_SHAPE,
            name="mit",
        )
    return library.models.MiTBackbone(
        layerwise_depths=list(depths),
        num_layers=4,
        layerwise_num_heads=list(MIT_NUM_HEADS),
        layerwise_sr_ratios=list(MIT_SR_RATIOS),
        max_drop_path_rate=MIT_DROP_PATH,
        layerwise_patch_sizes=list(MIT_PATCH_SIZES),
        layerwise_strides=[4, 2, 2, 2],
        image_shape=BUILD_SHAPE,
        hidden_dims=list(embed_dims),
        name="mit",
    )


def _stage_norms(mit):
    """The 4 per-stage output LayerNormalizations: the library model's top-level ones, in order."""
    norms = [layer for layer in mit.layers if isinstance(layer, keras.layers.LayerNormalization)]
    if len(norms) != 4:
        raise UserError(f"unsupported MiT layout: expected 4 stage norms, found {len(norms)}")
    return norms


def library_stages(mit, depths):
    """[(patch embedding, [transformer blocks], stage norm)] of a library MiT, stage by stage."""
    norms = _stage_norms(mit)
    return [
        (
            mit.get_layer(f"patch_and_embed_{i}"),
            [mit.get_layer(f"hierarchical_encoder_{i}_{k}") for k in range(depth)],
            norms[i],
        )
        for i, depth in enumerate(depths)
    ]


def _attention(attn, x, height, width):
    """Efficient self-attention of one block on tokens x (B, N, C), N = height * width."""
    batch, tokens, channels = ops.shape(x)[0], ops.shape(x)[1], x.shape[-1]
    heads = attn.num_heads
    head_dim = channels // heads
    q = ops.transpose(ops.reshape(attn.q(x), (batch, tokens, heads, head_dim)), (0, 2, 1, 3))
    if attn.sr_ratio > 1:
        grid = ops.reshape(x, (batch, height, width, channels))
        x = attn.norm(ops.reshape(attn.sr(grid), (batch, -1, channels)))
    k = ops.transpose(ops.reshape(attn.k(x), (batch, -1, heads, head_dim)), (0, 2, 1, 3))
    v = ops.transpose(ops.reshape(attn.v(x), (batch, -1, heads, head_dim)), (0, 2, 1, 3))
    scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * attn.scale
    weights = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), v.dtype)  # float32 softmax
    out = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (batch, tokens, channels))
    return attn.proj(out)


def _mix_ffn(mlp, x, height, width):
    """Mix-FFN: fc1 -> 3x3 depthwise conv on the (height, width) grid -> GELU (exact) -> fc2."""
    hidden = mlp.fc1(x)
    batch, channels = ops.shape(hidden)[0], hidden.shape[-1]
    grid = mlp.dwconv(ops.reshape(hidden, (batch, height, width, channels)))
    return mlp.fc2(ops.gelu(ops.reshape(grid, (batch, -1, channels)), approximate=False))


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class MiTFeatures(keras.layers.Layer):
    """Images (B, H, W, 3) -> the 4 stage features of a library MiT, for any H, W multiple of 32.

    Holds the library model (`self.mit`, its weights untouched) and runs its patch embeddings,
    transformer blocks and stage norms as the reference does (see the module docstring).

    Args:
        embed_dims, depths: the MiT size.
        source: "keras_cv" or "keras_hub".
        drop_path_rate: stochastic depth of the last block (0 for the first, linear in between).
        seed: seed of the drop-path generators (None: random).
    """

    def __init__(self, embed_dims, depths, source="keras_cv", drop_path_rate=MIT_DROP_PATH, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.embed_dims = [int(d) for d in embed_dims]
        self.depths = [int(d) for d in depths]
        self.source = source
        self.drop_path_rate = float(drop_path_rate)
        self.seed = seed
        self.mit = library_mit(source, self.embed_dims, self.depths)
        for layer in self.mit._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.LayerNormalization):
                layer.epsilon = MIT_NORM_EPS
        for embed, _, _ in library_stages(self.mit, self.depths):
            if getattr(embed, "padding", None) is None:  # keras-cv pads "same": pad here instead
                embed.proj.padding = "valid"
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
        self.drop_paths = [
            DropPath(rate, seed=None if seed is None else int(seed) + index, dtype=self.dtype_policy, name=f"drop_path_{index}")
            for index, rate in enumerate(rates)
        ]
        self.built = True

    def _stages(self):
        drop_paths = iter(self.drop_paths)
        for i, (embed, blocks, norm) in enumerate(library_stages(self.mit, self.depths)):
            yield embed, MIT_PATCH_SIZES[i] // 2, [(block, next(drop_paths)) for block in blocks], norm

    def call(self, images, training=False):
        x = images
        features = []
        for embed, pad, blocks, norm in self._stages():
            x = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            x = embed.proj(x)
            batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
            channels = x.shape[-1]
            x = embed.norm(ops.reshape(x, (batch, -1, channels)))
            for block, drop_path in blocks:
                x = x + drop_path(_attention(block.attn, block.norm1(x), height, width), training=training)
                x = x + drop_path(_mix_ffn(block.mlp, block.norm2(x), height, width), training=training)
            x = ops.reshape(norm(x), (batch, height, width, channels))
            features.append(x)
        return features

    def compute_output_shape(self, input_shape):
        batch, height, width = input_shape[0], input_shape[1], input_shape[2]
        shapes = []
        for i, channels in enumerate(self.embed_dims):
            stride = 4 * 2**i
            shapes.append(
                (
                    batch,
                    None if height is None else height // stride,
                    None if width is None else width // stride,
                    channels,
                )
            )
        return shapes

    def get_config(self):
        return {
            **super().get_config(),
            "embed_dims": self.embed_dims,
            "depths": self.depths,
            "source": self.source,
            "drop_path_rate": self.drop_path_rate,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class MiTBackbone(Backbone):
    """MiT B0..B5 from keras-cv / keras-hub: images (B, H, W, 3) -> [stage1 .. stage4], NHWC.

    Args:
        embed_dims, depths: the MiT size (see `presets.SEGFORMER_PRESETS`).
        source: "keras_cv" or "keras_hub".
        drop_path_rate: stochastic depth of the last block (mmseg's `drop_path_rate`).
        image_shape: (H, W, 3); H and W None (any multiple of 32, the default) or fixed.
        seed: seed of the drop-path generators (None: random).
    """

    def __init__(self, embed_dims, depths, source="keras_cv", drop_path_rate=MIT_DROP_PATH, image_shape=(None, None, 3),
                 seed=None, dtype=None, **kwargs):  # fmt: skip
        image_shape = tuple(image_shape)
        for side in image_shape[:2]:
            if side is not None and side % 32:
                raise UserError(f"SegFormer's input sides must be multiples of 32, got {image_shape[:2]}.")
        inputs = keras.Input(shape=image_shape, name="images")
        extractor = MiTFeatures(
            embed_dims, depths, source=source, drop_path_rate=drop_path_rate, seed=seed, dtype=dtype, name="mit_features"
        )
        outputs = list(extractor(inputs))
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.mit = extractor.mit
        self.embed_dims = [int(d) for d in embed_dims]
        self.depths = [int(d) for d in depths]
        self.source = source
        self.drop_path_rate = float(drop_path_rate)
        self.image_shape = image_shape
        self.seed = seed

    def get_config(self):
        return {
            **super().get_config(),
            "embed_dims": self.embed_dims,
            "depths": self.depths,
            "source": self.source,
            "drop_path_rate": self.drop_path_rate,
            "image_shape": self.image_shape,
            "seed": self.seed,
        }
