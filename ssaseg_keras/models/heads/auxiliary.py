"""Auxiliary heads: a decode head + plain classifier trained beside the main head, then dropped.

mmseg's `auxiliary_head` (UperNet: an `FCNHead` on stage 3 with a cross-entropy of weight 0.4) adds
a deep-supervision loss on an intermediate stage. It never takes SSA (the reference's SSA heads
replace only the main classifier) and it exists only in the training model: `inference_model`,
export and the deployed parameter count leave it out.

    stage features --head (e.g. FCNHead)--> F_aux (B, h, w, C) --PixelClassifier--> logits (B, h, w, K)

The loss, `loss_weight` x the baseline cross-entropy of the logits upsampled (half-pixel) to the
labels, is summed over the auxiliary heads and logged as `aux_ce` (`Segmentor.compute_loss`).
"""

from __future__ import annotations

import keras

from ssaseg_keras.models.segmentor import PixelClassifier


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AuxiliaryHead(keras.layers.Layer):
    """Call on the list of stage features -> logits (B, h, w, K) float32 (dropout when training).

    Args:
        head: a decode-head layer called on the stage-feature list (e.g. `FCNHead`).
        num_classes: K.
        dropout: the classifier's 2-D channel dropout (mmseg's `dropout_ratio`, 0.1).
        loss_weight: weight of its cross-entropy in the total loss (UperNet: 0.4).
    """

    def __init__(self, head, num_classes, dropout=0.1, loss_weight=0.4, **kwargs):
        super().__init__(**kwargs)
        if isinstance(head, dict):
            head = keras.saving.deserialize_keras_object(head)
        self.head = head
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)
        self.loss_weight = float(loss_weight)
        self.classifier = PixelClassifier(self.num_classes, dropout=self.dropout, dtype=self.dtype_policy, name="classifier")

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if not self.head.built:
            self.head.build(shapes)
        if not self.classifier.built:
            self.classifier.build(self.head.compute_output_shape(shapes))
        self.built = True

    def call(self, features, training=False):
        return self.classifier(self.head(features, training=training), training=training)

    def compute_output_spec(self, features, training=False):
        shape = self.head.compute_output_shape([tuple(f.shape) for f in features])
        return keras.KerasTensor(tuple(shape[:-1]) + (self.num_classes,), dtype="float32")

    def get_config(self):
        return {
            **super().get_config(),
            "head": keras.saving.serialize_keras_object(self.head),
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "loss_weight": self.loss_weight,
        }
