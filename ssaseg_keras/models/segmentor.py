"""The segmentor: backbone -> decode head -> classifier (plain 1x1 or SSA-Seg), one `keras.Model`.

    images (B, H, W, 3) --backbone--> [4 stage features] --decode_head--> F (B, h, w, C)
        --classifier--> logits (B, h, w, K) --bilinear, half-pixel--> (B, H, W, K) float32

A decode head may also return [F, *extra] when its baseline classifier reads more than F (CGRSeg's
second, DPG stage reads the map before linear_fuse): the classifier is then called on all of them.

Outputs:
- inference (`training=False`, `predict`): logits resized to the input image, (B, H, W, K) float32.
- training (`training=True`, what `fit` feeds `compute_loss`): a dict with `logits` (the main logits
  at feature resolution, float32) and `features` F; an SSA model adds the student intermediates of
  `SSAClassifier.forward_student` (`coarse_logits`, `refined_logits`, `feat_pos`,
  `spatial_prototypes`, `semantic_prototypes`), so the student runs once per step.

  With auxiliary heads (`models.heads.AuxiliaryHead`, e.g. UperNet's FCNHead) it also holds
  `aux_logits_<i>` (B, h_i, w_i, K) float32; the backbone runs once for all heads.

A cascade decode head (mmseg's `CascadeEncoderDecoder`, OCRNet) has a `region_head`: a first stage
(an `AuxiliaryHead`: FCNHead + plain classifier + loss weight) whose logits R, the soft object
regions, the decode head reads beside the stages (`decode_head(stages, R)`). Unlike an auxiliary head
it is part of the deployed model; in training its output is `region_logits` and its weighted
cross-entropy the loss term `region_ce`. (The reference runs the first stage twice per training
step, once for its loss and once for the second stage: the same numbers, and the same gradients, as
running it once; see `models.presets` for its BatchNorm statistics.)

`compute_loss` (Keras 3's portable hook, the same on TensorFlow, JAX and PyTorch) returns the sum of
the loss terms (divided by the replica count inside a TensorFlow MirroredStrategy replica, whose
gradients Keras sums) -- the eight of `ssa_loss_terms` (weighted by `ssa_loss_weights`) for SSA, `main_ce`
for the baseline, plus `aux_ce` (the auxiliary heads' weighted cross-entropies) when there are
auxiliary heads and `region_ce` with a region head -- and reports each term as a metric of the same
name. Called on inference outputs (`evaluate`, `test_on_batch`) it computes and reports only `main_ce` of the image-size
logits.
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from ssaseg_keras.layers.ssa import SSAClassifier
from ssaseg_keras.losses.ssa import (
    LOSS_TERMS,
    baseline_loss_terms,
    full_loss_weights,
    ssa_loss_terms,
)
from ssaseg_keras.ops.resize import RESIZE_METHODS, resize_bilinear
from ssaseg_keras.utils.distribution import scale_loss_for_replicas
from ssaseg_keras.utils.errors import UserError
from ssaseg_keras.utils.variables import variable_keys

AUX_PREFIX = "aux_logits_"  # training outputs of the auxiliary heads: aux_logits_0, aux_logits_1, ...
REGION_LOGITS = "region_logits"  # training output of a cascade's first stage


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
        loss_resize_method: how the losses upsample logits to label size ("matmul", "banded" or
            "gather": the same numbers, a speed and memory choice per device; the recipe's `train.loss_resize`).
        ssa_loss_weights: SSA only, {term: weight} for the eight terms (missing terms take
            `ssaseg_keras.losses.DEFAULT_SSA_LOSS_WEIGHTS`, the reference's: 10 for `semantic_distill`, 0.4 for
            `spatial_distill`, 1 for the rest).
        auxiliary_heads: training-only `AuxiliaryHead`s on the stage features (mmseg's
            `auxiliary_head`); `inference_model` drops them.
        region_head: the first stage of a cascade decode head (an `AuxiliaryHead` whose logits the
            decode head reads: `decode_head(stages, region_logits)`), or None.

    Call:
        `model(images, training=False)`: images (B, H, W, 3), normalised, H and W multiples of 32
        -> logits (B, H, W, K) float32. With `training=True` a dict (see the module docstring).

    `compute_loss(x, y, y_pred)`: y = integer labels (B, H, W) (or (B, H, W, 1)), 255 = ignore.
    """

    def __init__(self, backbone, decode_head, classifier, loss_resize_method="matmul", ssa_loss_weights=None,
                 auxiliary_heads=None, region_head=None, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.backbone = backbone
        self.decode_head = decode_head
        self.classifier = classifier
        self.auxiliary_heads = list(auxiliary_heads or [])
        self.region_head = region_head
        if loss_resize_method not in RESIZE_METHODS:
            raise ValueError(f"loss_resize_method must be one of {RESIZE_METHODS}, got {loss_resize_method!r}")
        self.loss_resize_method = loss_resize_method
        # An execution option, not part of the model (not saved): the trainer sets it from the
        # recipe's train.compile_loss (`ops.compile.compiled_for_backend`).
        self.compile_pixel_losses = False
        if self.is_ssa:
            try:
                self.ssa_loss_weights = full_loss_weights(ssa_loss_weights)
            except ValueError as error:
                raise UserError(f"ssa_loss_weights: {error}") from error
        elif ssa_loss_weights:
            raise UserError("ssa_loss_weights: only an SSA model (an SSAClassifier) has these loss terms")
        else:
            self.ssa_loss_weights = None
        self.loss_term_names = (
            (list(LOSS_TERMS) if self.is_ssa else ["main_ce"])
            + (["aux_ce"] if self.auxiliary_heads else [])
            + (["region_ce"] if self.region_head is not None else [])
        )
        self.loss_trackers = [keras.metrics.Mean(name=name) for name in self.loss_term_names]
        self._reported_terms = None  # None: every term; else the names `evaluate` computes

    @property
    def is_ssa(self):
        return isinstance(self.classifier, SSAClassifier)

    @property
    def num_classes(self):
        return self.classifier.num_classes

    def build(self, input_shape=(None, None, None, 3)):
        feature_shapes = [tuple(t.shape) for t in self.backbone.outputs]
        if self.region_head is not None and not self.region_head.built:
            self.region_head.build(feature_shapes)
        if not self.decode_head.built:
            self.decode_head.build(feature_shapes)
        if not self.classifier.built:
            head_shapes = self.decode_head.compute_output_shape(feature_shapes)
            if isinstance(head_shapes, list):  # F and the classifier's extra inputs (CGRSeg's baseline)
                self.classifier.build(*head_shapes)
            else:
                self.classifier.build(head_shapes)
        for head in self.auxiliary_heads:
            if not head.built:
                head.build(feature_shapes)
        self.built = True

    # ----------------------------------------------------------------- forward
    def features(self, images, training=False):
        """The decode head's features F (B, h, w, C) for images (B, H, W, 3)."""
        return _split_head_output(self.decode(self.backbone(images, training=training), training=training)[0])[0]

    def feature_logits(self, images, training=False):
        """The classifier's logits (B, h, w, K) at the features' resolution for images (B, H, W, 3)."""
        decoded, _ = self.decode(self.backbone(images, training=training), training=training)
        return self.classify(decoded, training=training)

    def decode(self, stages, training=False):
        """(head output, region logits or None): the decode head's output for the stage features,
        through the region head first when the decode head is a cascade. The head output is F, or a
        list [F, *extra] when the classifier reads more than F (CGRSeg's baseline: the map before
        linear_fuse)."""
        if self.region_head is None:
            return self.decode_head(stages, training=training), None
        regions = self.region_head(stages, training=training)
        return self.decode_head(stages, regions, training=training), regions

    def classify(self, decoded, training=False):
        """The classifier's logits for a head output of `decode` (F, or [F, *extra])."""
        features, extra = _split_head_output(decoded)
        return self.classifier(features, *extra, training=training)

    def call(self, images, training=False):
        wrapper = self.__dict__.get("_training_forward")
        if training and wrapper is not None and not wrapper.active:
            # A data-parallel wrapper that must see the training forward (PyTorch's
            # DistributedDataParallel: `training.distribute.attach_ddp`); it calls back in here.
            return wrapper(images)
        stages = self.backbone(images, training=training)
        decoded, regions = self.decode(stages, training=training)
        if training:
            outputs = {"features": _split_head_output(decoded)[0]}
            if regions is not None:
                outputs[REGION_LOGITS] = regions
            if self.is_ssa:
                student = self.classifier.forward_student(outputs["features"], training=True)
                outputs.update(logits=student["refined_logits"], **student)
            else:
                outputs["logits"] = self.classify(decoded, training=True)
            for index, head in enumerate(self.auxiliary_heads):
                outputs[f"aux_logits_{index}"] = head(stages, training=True)
            return outputs
        logits = self.classify(decoded, training=False)
        return resize_bilinear(ops.cast(logits, "float32"), ops.shape(images)[1:3], align_corners=False)

    # -------------------------------------------------------------------- loss
    def loss_terms(self, y, y_pred):
        """The named loss terms (float32 scalars) for labels y and the model's output y_pred."""
        labels = y
        if len(labels.shape) == 4:
            labels = labels[..., 0]
        method = self.loss_resize_method
        options = {"resize_method": method, "compile_pixel_terms": self.compile_pixel_losses}
        if not isinstance(y_pred, dict):  # inference output: image-size logits
            return baseline_loss_terms(y_pred, labels, **options)
        if self.is_ssa:
            student = {
                k: v
                for k, v in y_pred.items()
                if k not in ("logits", "features", REGION_LOGITS) and not k.startswith(AUX_PREFIX)
            }
            terms = ssa_loss_terms(
                self.classifier,
                y_pred["features"],
                labels,
                student=student,
                weights=self.ssa_loss_weights,
                **options,
            )
        else:
            terms = baseline_loss_terms(y_pred["logits"], labels, **options)
        if self.auxiliary_heads:  # mmseg: loss_weight x the plain decode-head cross-entropy, per head
            terms["aux_ce"] = sum(
                head.loss_weight
                * baseline_loss_terms(y_pred[f"{AUX_PREFIX}{index}"], labels, **options)["main_ce"]
                for index, head in enumerate(self.auxiliary_heads)
            )
        if self.region_head is not None:  # mmseg: the first cascade stage's loss_weight x its CE
            ce = baseline_loss_terms(y_pred[REGION_LOGITS], labels, **options)["main_ce"]
            terms["region_ce"] = self.region_head.loss_weight * ce
        return terms

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:
            raise UserError(
                "Segmentor.compute_loss takes no sample_weight: SSA-Seg's terms (dice, distillations) "
                "are not per-pixel sums. Mark pixels to leave out with the label 255, or use "
                "model.ssa_loss_weights to weight whole terms."
            )
        terms = self.loss_terms(y, y_pred)
        total = ops.convert_to_tensor(0.0, dtype="float32")
        for name, tracker in zip(self.loss_term_names, self.loss_trackers):
            if name in terms:
                total = total + terms[name]
                tracker.update_state(terms[name])
        for extra in self.losses:  # regularisation losses of layers, if any
            total = total + ops.cast(extra, "float32")
        # Under a TensorFlow MirroredStrategy: / replicas, as Keras does for its own losses (the
        # replicas' gradients are summed). Identity on one device, JAX and PyTorch DDP.
        return scale_loss_for_replicas(total)

    # ------------------------------------------------------------- metrics
    @property
    def metrics(self):
        # While `evaluate` runs only `main_ce` is computed (inference outputs hold no SSA
        # intermediates): the other trackers are left out of its logs instead of reading 0.
        metrics = super().metrics
        if self._reported_terms is None:
            return metrics
        hidden = {id(t) for t, n in zip(self.loss_trackers, self.loss_term_names) if n not in self._reported_terms}
        return [m for m in metrics if id(m) not in hidden]

    @contextlib.contextmanager
    def _reporting_only(self, names):
        previous, self._reported_terms = self._reported_terms, tuple(names)
        try:
            yield
        finally:
            self._reported_terms = previous

    # ------------------------------------------------------------- training
    def fit(self, *args, **kwargs):
        self._build_optimizer_before_tracing()
        self._keep_values_if_the_first_step_fails()
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._build_optimizer_before_tracing()
        return super().train_on_batch(*args, **kwargs)

    def _build_optimizer_before_tracing(self):
        """Create the optimizer's variables now, eagerly, as Keras does itself on JAX and PyTorch and
        under a TensorFlow strategy. Without a strategy, Keras' TensorFlow trainer leaves them to the
        first trace of the training step, and tf.function then traces the whole step a second time
        (variables were created on its first call): twice the time to the first step."""
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or optimizer.built or getattr(self, "_distribute_strategy", None) is not None:
            return
        if all(layer.built for layer in self._flatten_layers()):  # else Keras builds both from a batch
            optimizer.build(self.trainable_variables)

    def _keep_values_if_the_first_step_fails(self):
        """JAX: Keras' `fit` detaches the variables' values while it trains and reattaches them, in a
        `finally`, from the state of the last finished step. When the first step fails (a label out of
        range found in the data, Ctrl-C) there is none, and the model is left without any values. The
        current values are given as that state (the arrays themselves, no copy); the first step
        replaces them."""
        if keras.backend.backend() != "jax" or getattr(self, "optimizer", None) is None or not self.optimizer.built:
            return
        self._jax_state = {
            "trainable_variables": [v.value for v in self.trainable_variables],
            "non_trainable_variables": [v.value for v in self.non_trainable_variables],
            "optimizer_variables": [v.value for v in self.optimizer.variables],
            "metrics_variables": [v.value for v in self.metrics_variables],
        }

    def evaluate(self, *args, **kwargs):
        with self._reporting_only(["main_ce"]):
            return super().evaluate(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        with self._reporting_only(["main_ce"]):
            return super().test_on_batch(*args, **kwargs)

    def task_kwargs(self):
        """Constructor arguments a subclass adds (kept by `inference_model`)."""
        return {}

    # ----------------------------------------------------------------- config
    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "decode_head": keras.saving.serialize_keras_object(self.decode_head),
            "classifier": keras.saving.serialize_keras_object(self.classifier),
            "loss_resize_method": self.loss_resize_method,
            "ssa_loss_weights": self.ssa_loss_weights,
            "auxiliary_heads": [keras.saving.serialize_keras_object(h) for h in self.auxiliary_heads],
            "region_head": None if self.region_head is None else keras.saving.serialize_keras_object(self.region_head),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("backbone", "decode_head", "classifier", "region_head"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        config["auxiliary_heads"] = [
            keras.saving.deserialize_keras_object(h, custom_objects=custom_objects) if isinstance(h, dict) else h
            for h in config.get("auxiliary_heads") or []
        ]
        return cls(**config)


def _split_head_output(decoded):
    """(F, [extra classifier inputs]) of a decode head's output (F, or a list [F, *extra])."""
    if isinstance(decoded, (list, tuple)):
        return decoded[0], list(decoded[1:])
    return decoded, []


def fixed_input_size(model):
    """(H, W) when the model only runs at one size (SegFormer's MiT backbone), else None."""
    backbone = getattr(model, "backbone", None)  # None: not a Segmentor (e.g. a test's stand-in)
    shape = tuple(backbone.inputs[0].shape) if getattr(backbone, "inputs", None) else ()
    if len(shape) == 4 and shape[1] is not None and shape[2] is not None:
        return int(shape[1]), int(shape[2])
    return None


def has_auxiliary_heads(model):
    """True when the model carries training-only auxiliary heads."""
    return bool(getattr(model, "auxiliary_heads", None))


def has_teacher(model):
    """True when the model carries SSA-Seg's training-only teacher weights."""
    return isinstance(model.classifier, SSAClassifier) and model.classifier.with_teacher


def inference_model(model):
    """The deployed model: a new model of the same class (`Segmentor`, `ImageSegmenter` with its
    preprocessor) without the teacher and the auxiliary heads (training-only
    parts), with copies of every other weight.

    A model that has neither is returned unchanged. The result predicts exactly like `model` and its
    trainable parameter count is the deployed "inference" count (the spec's for SegNeXt; for UperNet
    the paper's "inference" column also counts the auxiliary head: see BENCHMARKS.md).
    """
    if not has_teacher(model) and not has_auxiliary_heads(model):
        return model
    old_classifier = model.classifier
    if has_teacher(model):
        classifier = SSAClassifier.from_config({**old_classifier.get_config(), "with_teacher": False})
    else:
        classifier = _copy_layer(old_classifier)
    region_head = None if model.region_head is None else _copy_layer(model.region_head)
    new = type(model)(
        _copy_layer(model.backbone),
        _copy_layer(model.decode_head),
        classifier,
        loss_resize_method=model.loss_resize_method,
        ssa_loss_weights=model.ssa_loss_weights,
        region_head=region_head,
        name=model.name,
        **model.task_kwargs(),
    )
    if "recipe" in model.__dict__:
        object.__setattr__(new, "recipe", model.__dict__["recipe"])
    new.build()
    copy_variables(model.backbone, new.backbone)
    copy_variables(model.decode_head, new.decode_head)
    if region_head is not None:
        copy_variables(model.region_head, region_head)
    copy_variables(old_classifier, classifier, allow_extra_source=True)
    return new


def _copy_layer(layer):
    """A new, unbuilt layer (or functional backbone) with `layer`'s configuration."""
    return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))


def copy_variables(source, target, allow_extra_source=False):
    """Assign source's variables (weights, statistics, random-generator states) to target's, matched
    by `variable_keys`; copying the generator states makes both draw the same NMF bases / dropout
    masks next. `allow_extra_source`: source may hold more (the teacher an inference model drops).
    """
    sources = variable_keys(source)
    targets = variable_keys(target)
    missing = sorted(set(targets) - set(sources))
    extra = sorted(set(sources) - set(targets))
    mis_shaped = sorted(k for k in set(sources) & set(targets) if tuple(sources[k].shape) != tuple(targets[k].shape))
    if missing or mis_shaped or (extra and not allow_extra_source):
        raise ValueError(
            f"Cannot copy the variables of {source.name} into {target.name}: "
            f"missing {missing}, unexpected {extra}, shapes differ {mis_shaped}."
        )
    for key, variable in targets.items():
        # A copy, not the source's buffer: JAX's compiled steps donate their state buffers, so a
        # shared one would be deleted under the other model.
        variable.assign(ops.copy(sources[key].value))
