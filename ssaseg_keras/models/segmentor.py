"""The segmentor: backbone -> decode head -> classifier (plain 1x1 or SSA-Seg), one `keras.Model`.

    images (B, H, W, 3) --backbone--> [4 stage features] --decode_head--> F (B, h, w, C)
        --classifier--> logits (B, h, w, K) --bilinear, half-pixel--> (B, H, W, K) float32

Outputs:
- inference (`training=False`, `predict`): logits resized to the input image, (B, H, W, K) float32.
- training (`training=True`, what `fit` feeds `compute_loss`): a dict with `logits` (the main logits
  at feature resolution, float32) and `features` F; an SSA model adds the student intermediates of
  `SSAClassifier.forward_student` (`coarse_logits`, `refined_logits`, `feat_pos`,
  `spatial_prototypes`, `semantic_prototypes`), so the student runs once per step.

`compute_loss` (Keras 3's portable hook, the same on TensorFlow, JAX and PyTorch) returns the sum of
the loss terms -- the eight of `ssa_loss_terms` for SSA, `main_ce` for the baseline -- and reports
each term as a metric of the same name. Called on inference outputs (`evaluate`) it reports
`main_ce` of the image-size logits.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.layers.ssa import SSAClassifier
from ssaseg_keras.losses.ssa import LOSS_TERMS, baseline_loss_terms, ssa_loss_terms
from ssaseg_keras.ops.resize import resize_bilinear


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class PixelClassifier(keras.layers.Layer):
    """The baseline classifier: 2-D channel dropout (training only) + 1x1 conv.

    (B, H, W, C) -> logits (B, H, W, K) float32. Its weights are the reference's `conv_seg`.
    """

    def __init__(self, num_classes, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)

    def build(self, input_shape):
        policy = self.dtype_policy
        self.channel_dropout = keras.layers.SpatialDropout2D(self.dropout, name="channel_dropout")
        self.conv_seg = keras.layers.Dense(self.num_classes, dtype=policy, name="conv_seg")
        self.conv_seg.build(input_shape)
        self.built = True

    def call(self, features, training=False):
        if training and self.dropout > 0:
            features = self.channel_dropout(features, training=True)
        return ops.cast(self.conv_seg(features), "float32")

    def compute_output_spec(self, features, training=False):
        return keras.KerasTensor(tuple(features.shape[:-1]) + (self.num_classes,), dtype="float32")

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class Segmentor(keras.Model):
    """Semantic segmentation model: `backbone`, `decode_head` and `classifier` joined.

    Args:
        backbone: a functional model from images to the list of 4 stage features (NHWC).
        decode_head: a layer from that list to the features F (B, h, w, C).
        classifier: `PixelClassifier` (baseline) or `SSAClassifier`.

    Call:
        `model(images, training=False)`: images (B, H, W, 3), normalised, H and W multiples of 32
        -> logits (B, H, W, K) float32. With `training=True` a dict (see the module docstring).

    `compute_loss(x, y, y_pred)`: y = integer labels (B, H, W) (or (B, H, W, 1)), 255 = ignore.
    """

    def __init__(self, backbone, decode_head, classifier, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.decode_head = decode_head
        self.classifier = classifier
        self.loss_term_names = list(LOSS_TERMS) if self.is_ssa else ["main_ce"]
        # The losses' upsampling (`resize_bilinear`'s method): a speed choice, same numbers; set by
        # `build_training_model` from the recipe's `train.loss_resize`.
        self.loss_resize_method = "matmul"
        self.loss_trackers = [keras.metrics.Mean(name=name) for name in self.loss_term_names]

    @property
    def is_ssa(self):
        return isinstance(self.classifier, SSAClassifier)

    @property
    def num_classes(self):
        return self.classifier.num_classes

    def build(self, input_shape=(None, None, None, 3)):
        feature_shapes = [tuple(t.shape) for t in self.backbone.outputs]
        if not self.decode_head.built:
            self.decode_head.build(feature_shapes)
        if not self.classifier.built:
            self.classifier.build(self.decode_head.compute_output_shape(feature_shapes))
        self.built = True

    # ----------------------------------------------------------------- forward
    def features(self, images, training=False):
        """The decode head's features F (B, h, w, C) for images (B, H, W, 3)."""
        return self.decode_head(self.backbone(images, training=training), training=training)

    def call(self, images, training=False):
        features = self.features(images, training=training)
        if training:
            if self.is_ssa:
                student = self.classifier.forward_student(features, training=True)
                return {"logits": student["refined_logits"], "features": features, **student}
            return {"logits": self.classifier(features, training=True), "features": features}
        logits = self.classifier(features, training=False)
        return resize_bilinear(ops.cast(logits, "float32"), ops.shape(images)[1:3], align_corners=False)

    # -------------------------------------------------------------------- loss
    def loss_terms(self, y, y_pred):
        """The named loss terms (float32 scalars) for labels y and the model's output y_pred."""
        labels = y
        if len(labels.shape) == 4:
            labels = labels[..., 0]
        method = self.loss_resize_method
        if not isinstance(y_pred, dict):  # inference output: image-size logits
            return baseline_loss_terms(y_pred, labels, resize_method=method)
        if self.is_ssa:
            student = {k: v for k, v in y_pred.items() if k not in ("logits", "features")}
            return ssa_loss_terms(
                self.classifier, y_pred["features"], labels, student=student, resize_method=method
            )
        return baseline_loss_terms(y_pred["logits"], labels, resize_method=method)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = self.loss_terms(y, y_pred)
        total = ops.convert_to_tensor(0.0, dtype="float32")
        for name, tracker in zip(self.loss_term_names, self.loss_trackers):
            if name in terms:
                total = total + terms[name]
                tracker.update_state(terms[name])
        for extra in self.losses:  # regularisation losses of layers, if any
            total = total + ops.cast(extra, "float32")
        return total

    # ----------------------------------------------------------------- config
    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "decode_head": keras.saving.serialize_keras_object(self.decode_head),
            "classifier": keras.saving.serialize_keras_object(self.classifier),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("backbone", "decode_head", "classifier"):
            if isinstance(config[key], dict):
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return cls(**config)


def has_teacher(model):
    """True when the model carries SSA-Seg's training-only teacher weights."""
    return isinstance(model.classifier, SSAClassifier) and model.classifier.with_teacher


def inference_model(model):
    """The model without the teacher: a new `Segmentor` with copies of every other weight.

    A baseline or an already teacher-free model is returned unchanged. The result predicts exactly
    like `model` and its trainable parameter count is the spec's "inference" count.
    """
    if not has_teacher(model):
        return model
    old_classifier = model.classifier
    classifier = SSAClassifier.from_config({**old_classifier.get_config(), "with_teacher": False})
    backbone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model.backbone))
    decode_head = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(model.decode_head)
    )
    new = Segmentor(backbone, decode_head, classifier, name=model.name)
    new.build()
    _copy_variables(model.backbone, new.backbone)
    _copy_variables(model.decode_head, new.decode_head)
    _copy_variables(old_classifier, classifier, allow_extra_source=True)
    return new


def _relative_paths(layer):
    """{variable path below `layer`: variable} for its weights (paths relative to the layer's name)."""
    out = {}
    marker = f"{layer.name}/"
    for variable in layer.variables:
        path = variable.path
        if "seed_generator" in path:  # random-generator states: matched by order instead
            continue
        path = path[path.index(marker) + len(marker) :] if marker in path else path
        out[path] = variable
    return out


def _seed_states(layer):
    return [v for v in layer.variables if "seed_generator" in v.path]


def _copy_variables(source, target, allow_extra_source=False):
    """Assign source's weights to target's (matched by path) and its random-generator states (in order).

    Copying the generator states makes both models draw the same NMF bases / dropout masks next.
    """
    sources = _relative_paths(source)
    targets = _relative_paths(target)
    missing = sorted(set(targets) - set(sources))
    extra = sorted(set(sources) - set(targets))
    if missing or (extra and not allow_extra_source):
        raise ValueError(
            f"Cannot copy the weights of {source.name} into {target.name}: "
            f"missing {missing}, unexpected {extra}."
        )
    for path, variable in targets.items():
        variable.assign(sources[path])
    for source_state, target_state in zip(_seed_states(source), _seed_states(target)):
        if tuple(source_state.shape) == tuple(target_state.shape):
            target_state.assign(source_state)
