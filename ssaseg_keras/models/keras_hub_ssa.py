"""`with_ssa`: SSA-Seg into a keras-hub image segmenter (SegFormer, DeepLabV3, ...) in one line.

keras-hub's segmenters are `backbone` (images -> features F, decoder included) -> a 1x1 conv to the
classes (SegFormer: dropout first; DeepLabV3: optional activation) -> a resize. SSA-Seg replaces
exactly that 1x1 classifier: `with_ssa` keeps the keras-hub backbone (the same layers and weights)
and its preprocessor, and puts an `SSAClassifier` (with its training teacher and SSA-Seg's loss) on
F. The result is an `ImageSegmenter`: `fit` / `evaluate` / `predict` / `save_to_preset` as ours,
`inference_model` drops the teacher.
"""

from __future__ import annotations

import keras

from ssaseg_keras.layers.ssa import SSAClassifier
from ssaseg_keras.utils.errors import UserError


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SelectFeature(keras.layers.Layer):
    """The decode head of a backbone that already returns F: picks `features[index]`."""

    def __init__(self, index=0, **kwargs):
        super().__init__(**kwargs)
        self.index = int(index)

    def build(self, input_shape):
        self.built = True

    def call(self, features, training=False):
        # A functional model with one output may hand back the tensor itself rather than [tensor].
        return features[self.index] if isinstance(features, list | tuple) else features

    def compute_output_shape(self, input_shape):
        if input_shape and isinstance(input_shape[0], list | tuple):
            return tuple(input_shape[self.index])
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "index": self.index}


def with_ssa(segmenter, dropout=0.1, ssa_loss_weights=None, loss_resize_method="matmul", training=True):
    """An `ImageSegmenter` with SSA-Seg's classifier in place of a keras-hub segmenter's 1x1 one.

    Args:
        segmenter: a keras-hub `ImageSegmenter` with `backbone` (images -> F) and `num_classes`
            (`SegFormerImageSegmenter`, `DeepLabV3ImageSegmenter`).
        dropout: the SSA classifier's channel dropout (keras-hub SegFormer's head uses 0.1).
        ssa_loss_weights: {term: weight} overrides of SSA-Seg's loss weights (ablations).
        training: with the teacher (to train); False builds the deployed form directly.

    Returns:
        A built `ImageSegmenter` sharing `segmenter.backbone`'s layers (weights kept) and its
        preprocessor. Its predictions are logits of SSA's refined classifier; a DeepLabV3
        segmenter's output `activation`, if any, is not applied (logits, like every classifier here).
    """
    from ssaseg_keras.models.task import ImageSegmenter

    backbone = getattr(segmenter, "backbone", None)
    num_classes = getattr(segmenter, "num_classes", None)
    if not isinstance(backbone, keras.Model) or num_classes is None:
        raise UserError(
            f"with_ssa takes a keras-hub ImageSegmenter (SegFormerImageSegmenter, DeepLabV3ImageSegmenter, ...) "
            f"with `backbone` and `num_classes`; got {type(segmenter).__name__}"
        )
    shape = tuple(backbone.inputs[0].shape[1:])
    inputs = keras.Input(shape=shape, name="images")
    features = backbone(inputs)
    if isinstance(features, dict | list | tuple):
        raise UserError(
            f"with_ssa: {type(backbone).__name__} returns several outputs; it needs a backbone that returns "
            "the features its classifier reads (keras-hub's SegFormerBackbone, DeepLabV3Backbone)"
        )
    feature_model = keras.Model(inputs, [features], name="backbone")
    classifier = SSAClassifier(int(num_classes), dropout=float(dropout), with_teacher=training, name="classifier")
    task = ImageSegmenter(
        feature_model,
        SelectFeature(0, name="decode_head"),
        classifier,
        preprocessor=getattr(segmenter, "preprocessor", None),
        loss_resize_method=loss_resize_method,
        ssa_loss_weights=ssa_loss_weights,
        name=f"{segmenter.name}_ssa",
    )
    task.build()
    return task
