"""Mix Transformer (SegFormer's backbone) from keras-cv or keras-hub, as a feature-pyramid Backbone.

A thin adapter: the library builds the MiT, this wraps it into our `Backbone` contract (images ->
list of 4 stage features, strides 4..32). `source: keras_cv` (the default) or `keras_hub`; both
libraries are imported only here, when a MiT is built, so the rest of the package runs without them.

Both libraries' MiT reshape tokens to a square grid (H = W = sqrt(N)), so the input size is fixed
and square (`image_shape`, e.g. the training crop); other sizes raise a clear error.
"""

from __future__ import annotations

import os

import keras

from ssaseg_keras.models.backbones.base import Backbone
from ssaseg_keras.utils.errors import CheckpointError, UserError

MIT_NUM_HEADS = (1, 2, 5, 8)
MIT_SR_RATIOS = (8, 4, 2, 1)
MIT_DROP_PATH = 0.1
SOURCES = ("keras_cv", "keras_hub")


def _import(source):
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


def library_mit(source, embed_dims, depths, image_shape):
    """The library's MiT model and the list of its 4 stage-output tensors."""
    if source not in SOURCES:
        raise UserError(f"model.source must be one of {', '.join(SOURCES)}, got {source!r}")
    library = _import(source)
    if source == "keras_cv":
        mit = library.models.MiTBackbone(
            include_rescaling=False,
            depths=list(depths),
            embedding_dims=list(embed_dims),
            input_shape=tuple(image_shape),
        )
        stages = [mit.get_layer(name).output for name in mit.pyramid_level_inputs.values()]
    else:
        mit = library.models.MiTBackbone(
            layerwise_depths=list(depths),
            num_layers=4,
            layerwise_num_heads=list(MIT_NUM_HEADS),
            layerwise_sr_ratios=list(MIT_SR_RATIOS),
            max_drop_path_rate=MIT_DROP_PATH,
            layerwise_patch_sizes=[7, 3, 3, 3],
            layerwise_strides=[4, 2, 2, 2],
            image_shape=tuple(image_shape),
            hidden_dims=list(embed_dims),
        )
        stages = list(mit.pyramid_outputs.values())
    return mit, stages


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class MiTBackbone(Backbone):
    """MiT B0..B5 from keras-cv / keras-hub: images (B, S, S, 3) -> [stage1 .. stage4], NHWC.

    Args:
        embed_dims, depths: the MiT size (see `presets.SEGFORMER_PRESETS`).
        source: "keras_cv" or "keras_hub".
        image_shape: (S, S, 3), S a multiple of 32 (the libraries' MiT needs a fixed square size).
    """

    def __init__(self, embed_dims, depths, source="keras_cv", image_shape=(512, 512, 3), dtype=None, **kwargs):
        image_shape = tuple(image_shape)
        height, width = image_shape[0], image_shape[1]
        if height is None or width is None or height != width or height % 32:
            raise UserError(
                f"SegFormer's MiT ({source}) needs a fixed square input whose side is a multiple of "
                f"32, got {image_shape[:2]}; set model.image_size to e.g. [512, 512]."
            )
        mit, stages = library_mit(source, embed_dims, depths, image_shape)
        extractor = keras.Model(mit.inputs, stages, name="mit")
        inputs = keras.Input(shape=image_shape, name="images")
        outputs = list(extractor(inputs))
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.mit = extractor
        self.embed_dims = [int(d) for d in embed_dims]
        self.depths = [int(d) for d in depths]
        self.source = source
        self.image_shape = image_shape

    def get_config(self):
        return {
            **super().get_config(),
            "embed_dims": self.embed_dims,
            "depths": self.depths,
            "source": self.source,
            "image_shape": self.image_shape,
        }


def build_mit_backbone(embed_dims, depths, source="keras_cv", image_shape=(512, 512, 3), name="backbone"):
    return MiTBackbone(embed_dims, depths, source=source, image_shape=image_shape, name=name)


def load_mit_weights(backbone, weights):
    """Pretrained MiT weights: a local `.weights.h5` of the MiT, or a keras-cv preset name.

    A preset (e.g. `mit_b0_imagenet`) is downloaded by keras-cv once; offline, use a local file
    (save one on a connected machine with `backbone.mit.save_weights("mit_b0.weights.h5")`).
    """
    if os.path.splitext(weights)[1]:
        if not os.path.isfile(weights):
            raise CheckpointError(f"model.pretrained {weights!r} does not exist.")
        try:
            backbone.mit.load_weights(weights)
        except Exception as error:
            raise CheckpointError(
                f"model.pretrained {weights!r} does not fit the MiT backbone ({error})."
            ) from error
        return None
    if backbone.source != "keras_cv":
        raise UserError(
            f"model.pretrained {weights!r}: presets are read through keras-cv; with source "
            "keras_hub give a local .weights.h5 file."
        )
    library = _import("keras_cv")
    try:
        pretrained = library.models.MiTBackbone.from_preset(weights, input_shape=backbone.image_shape)
    except Exception as error:
        raise UserError(
            f"model.pretrained {weights!r}: the keras-cv preset could not be loaded ({type(error).__name__}: "
            f"{error}). Presets need network access once; offline, point model.pretrained to a local "
            ".weights.h5 file of the MiT backbone."
        ) from error
    source_weights = pretrained.get_weights()
    if len(source_weights) != len(backbone.mit.weights):
        raise CheckpointError(f"preset {weights!r} does not match this MiT size.")
    backbone.mit.set_weights(source_weights)
    return None
