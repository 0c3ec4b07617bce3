"""`ImageSegmenter`: the image-segmentation task in keras-hub's shape, what the trainer, the CLI and
Python users all build.

    segmenter = ImageSegmenter.from_preset("segnext_t_ade20k")    # a shipped recipe's architecture
    segmenter.fit(dataset_of_uint8_images_and_labels, epochs=...)  # the preprocessor runs in tf.data
    segmenter.evaluate(dataset)  -> {"mIoU": ..., "mode": "whole", ...}
    segmenter.predict(uint8_images)  -> class maps (B, H, W) int32 at the input size
    segmenter.save_to_preset("my_preset");  ImageSegmenter.from_preset("my_preset")  # any backend

It is a `Segmentor` (backbone -> decode head -> classifier, SSA-Seg's loss in `compute_loss`) with:
- a `preprocessor` (`ImageSegmenterPreprocessor`, or a keras-hub segmenter's own for `with_ssa`)
  that `fit`, `evaluate` and `predict` apply to raw images;
- the inference settings (`whole` or `slide` with crop and stride) `predict` / `evaluate` use;
- one output structure in every mode: `model(images)` returns logits, (B, H, W, K) float32 at the
  input size at inference and the main logits at feature resolution when training; the SSA
  student's intermediates and the auxiliary heads' logits stay internal (held for the step's
  `compute_loss`, which runs in the same traced function on every backend).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time

import keras
import numpy as np

from ssaseg_keras.models.preprocessing import (
    LABEL_MESSAGE_START,
    ImageSegmenterPreprocessor,
)
from ssaseg_keras.models.segmentor import Segmentor
from ssaseg_keras.utils.errors import CheckpointError, UserError
from ssaseg_keras.utils.variables import count_parameters

PRESET_FILES = {
    "task": "task.json",
    "backbone": "config.json",
    "preprocessor": "preprocessor.json",
    "weights": "task.weights.npz",
    "metadata": "metadata.json",
    "recipe": "recipe.yaml",
}
REMOTE_PREFIXES = ("kaggle://", "hf://", "gs://", "modelscope://")
INFERENCE_DEFAULTS = {"mode": "whole", "crop_size": None, "stride": None}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class ImageSegmenter(Segmentor):
    """A semantic-segmentation task: `Segmentor` + preprocessor + presets (see the module docstring).

    Args:
        backbone, decode_head, classifier, loss_resize_method, ssa_loss_weights, auxiliary_heads,
        region_head:
            as `Segmentor`.
        preprocessor: `ImageSegmenterPreprocessor` (or a keras-hub `ImageSegmenterPreprocessor`);
            None: inputs are already normalised.
        inference: {"mode": "whole" | "slide", "crop_size": [h, w], "stride": [h, w]} for `predict`
            and `evaluate` (the recipe's `eval` section).
    """

    def __init__(self, backbone, decode_head, classifier, preprocessor=None, inference=None, **kwargs):
        super().__init__(backbone, decode_head, classifier, **kwargs)
        self.preprocessor = preprocessor
        self.inference = {**INFERENCE_DEFAULTS, **(inference or {})}
        if self.inference["mode"] not in ("whole", "slide"):
            raise UserError(f"inference mode must be 'whole' or 'slide', got {self.inference['mode']!r}")
        if self.inference["mode"] == "slide" and not (self.inference["crop_size"] and self.inference["stride"]):
            raise UserError("slide inference needs crop_size and stride, e.g. [512, 512] and [341, 341]")
        # Training intermediates of the current step, by thread (TensorFlow's MirroredStrategy traces
        # each replica in its own thread); not tracked by Keras or torch.
        object.__setattr__(self, "_step_outputs", {})

    @classmethod
    def from_segmentor(cls, segmentor, preprocessor=None, inference=None):
        """The task around a built `Segmentor`'s layers (shared, not copied: same weights)."""
        task = cls(
            segmentor.backbone,
            segmentor.decode_head,
            segmentor.classifier,
            preprocessor=preprocessor,
            inference=inference,
            loss_resize_method=segmentor.loss_resize_method,
            ssa_loss_weights=segmentor.ssa_loss_weights,
            auxiliary_heads=segmentor.auxiliary_heads,
            region_head=segmentor.region_head,
            name=segmentor.name,
        )
        task.build()
        return task

    # ---------------------------------------------------------------- forward
    def call(self, images, training=False):
        outputs = super().call(images, training=training)
        if isinstance(outputs, dict):
            self._step_outputs[threading.get_ident()] = outputs
            return outputs["logits"]
        return outputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        held = self._step_outputs.pop(threading.get_ident(), None)
        if training and held is not None and not isinstance(y_pred, dict):
            y_pred = held
        return super().compute_loss(x, y, y_pred, sample_weight=sample_weight, training=training)

    def task_kwargs(self):
        return {"preprocessor": self.preprocessor, "inference": dict(self.inference)}

    # ------------------------------------------------------------ data entry
    def _preprocessed(self, data, batch_size=None, y=None, sample_weight=None):
        """A tf.data dataset of the (images, labels[, weights]) `data` names, with the preprocessor mapped."""
        from ssaseg_keras.utils.tensorflow import import_tensorflow

        tf = import_tensorflow()
        if data is None:
            return None
        if not isinstance(data, tf.data.Dataset):
            if isinstance(data, tuple) and y is None:
                data, y = data[0], (data[1] if len(data) > 1 else None)
            slices = tuple(np.asarray(v) for v in (data, y, sample_weight) if v is not None)
            data = tf.data.Dataset.from_tensor_slices(slices).batch(batch_size or 8)
        if self.preprocessor is None:
            return data
        return data.map(self.preprocessor, num_parallel_calls=tf.data.AUTOTUNE)

    def fit(self, x=None, y=None, batch_size=None, validation_data=None, **kwargs):
        """Keras' `fit` on (images 0-255, labels) pairs: a tf.data dataset, or arrays x and y. The
        preprocessor is mapped over the data (normalisation, label check) before the model sees it."""
        data = self._preprocessed(x, batch_size, y, kwargs.pop("sample_weight", None))
        validation = self._preprocessed(validation_data, batch_size)
        with _explain_label_errors():
            return super().fit(data, validation_data=validation, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, steps=None, **kwargs):
        """Streaming mIoU / mAcc / aAcc and per-class IoU / Acc (percent) over (images 0-255, labels)
        pairs: a tf.data dataset of batches, or arrays x and y (`batch_size` images at a time); at most
        `steps` batches. By the task's inference mode (`mode` in the result names it, as every
        reported mIoU does): each image is preprocessed as `predict` does (keep-ratio resize,
        normalisation) and its logits resized back to the label's size.

        Keras' own loss evaluation is `evaluate_loss` (what `fit(validation_data=...)` reports).
        """
        if kwargs.pop("_use_cached_eval_dataset", False):  # Keras' fit(validation_data=...)
            return super().evaluate(x, y, batch_size=batch_size, steps=steps, _use_cached_eval_dataset=True, **kwargs)
        if kwargs:
            raise TypeError(
                f"ImageSegmenter.evaluate takes x, y, batch_size and steps; got {sorted(kwargs)} "
                "(Keras' loss evaluation with its options is evaluate_loss)"
            )
        from ssaseg_keras.metrics.segmentation import confusion_counts
        from ssaseg_keras.models.preprocessing import check_label_values
        from ssaseg_keras.training.evaluation import summarize_confusion

        confusion = np.zeros((self.num_classes, self.num_classes), "int64")
        count = 0
        for batch, (images, labels) in enumerate(_numpy_pairs(x, y, batch_size)):
            if steps is not None and batch >= steps:
                break
            labels = np.asarray(labels)
            if labels.ndim == 4:
                labels = labels[..., 0]
            check_label_values(labels, self.num_classes)
            for image, label in zip(images, labels):
                prediction = self._predict_one(image)
                confusion += confusion_counts(label[None].astype("int32"), prediction[None], self.num_classes)
                count += 1
        return summarize_confusion(confusion, self.class_names, self.inference_mode_name, count)

    @property
    def class_names(self):
        """The recipe's dataset class names when the task was built from a recipe, else class_<k>."""
        from ssaseg_keras.data.catalog import class_names

        recipe = self.__dict__.get("recipe")
        if recipe is not None:
            data = recipe["data"]
            names = class_names(data["source"], data.get("num_classes"), data.get("class_names"))
            if len(names) == self.num_classes:
                return list(names)
        return [f"class_{k}" for k in range(self.num_classes)]

    def evaluate_loss(self, *args, **kwargs):
        """Keras' `evaluate` (the `main_ce` of already preprocessed images and labels)."""
        return super().evaluate(*args, **kwargs)

    @property
    def inference_mode_name(self):
        from ssaseg_keras.training.evaluation import eval_mode_name

        return eval_mode_name(self.inference["mode"], self.inference["crop_size"], self.inference["stride"])

    def predict(self, x, return_scores=False):
        """Class maps of RGB images (0-255, uint8 or float): int32 (B, H, W) at the input size.

        `x`: an array (B, H, W, 3) or (H, W, 3), a list of images of any sizes (a list of maps
        comes back), or a tf.data dataset of image batches (or (image, label) batches). Each image is
        preprocessed (keep-ratio resize to the converter's scale, normalisation), predicted whole or by
        sliding windows, and its logits resized back to its size. `return_scores`: also the logits
        (B, H, W, K) float32 they are the argmax of.
        """
        single = isinstance(x, np.ndarray) and x.ndim == 3
        images = [x] if single else _images_of(x)
        maps, scores = [], []
        for image in images:
            labels, logits = self._predict_one(image, return_scores=True)
            maps.append(labels)
            if return_scores:
                scores.append(logits)
        if single:
            return (maps[0], scores[0]) if return_scores else maps[0]
        if isinstance(x, list) or len({m.shape for m in maps}) > 1:
            return (maps, scores) if return_scores else maps
        stacked = np.stack(maps) if maps else np.zeros((0, 0, 0), "int32")
        return (stacked, np.stack(scores)) if return_scores else stacked

    def _predict_one(self, image, return_scores=False):
        from ssaseg_keras.training.evaluation import predict_labels

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise UserError(f"predict takes RGB images (H, W, 3); got an array of shape {image.shape}")
        height, width = image.shape[:2]
        if isinstance(self.preprocessor, ImageSegmenterPreprocessor):
            inputs = self.preprocessor.image_converter.for_inference(image)
        elif self.preprocessor is not None:  # a keras-hub preprocessor (`with_ssa`): its own resize
            inputs = keras.ops.convert_to_numpy(self.preprocessor(image[None].astype("float32")))
        else:
            inputs = image[None].astype("float32")
        labels, scores = predict_labels(self, np.asarray(inputs, "float32"), (height, width), self.inference)
        return (labels[0], scores[0]) if return_scores else labels[0]

    # ---------------------------------------------------------------- presets
    @classmethod
    def presets(cls):
        """{name: description} of the shipped presets (every recipe's architecture and settings;
        they hold no trained weights: train one, or convert a reference checkpoint)."""
        from ssaseg_keras.recipes import packaged_recipe_names, packaged_recipe_path

        described = {}
        for name in packaged_recipe_names():
            with open(packaged_recipe_path(name), encoding="utf-8") as handle:
                first = handle.readline().strip().lstrip("# ")
            described[name] = first
        return described

    @classmethod
    def from_preset(cls, preset, load_weights=None, training=None, num_classes=None, overrides=()):
        """The task of a preset: a shipped preset name (a recipe's architecture, preprocessing and
        inference settings, random weights), a directory written by `save_to_preset` (any backend),
        or a remote handle (`kaggle://`, `hf://`: through keras-hub's downloader).

        Args:
            load_weights: a preset directory's weights (default True there); a shipped preset has
                none, so True for one is an error.
            training: True: the training form (SSA teacher, auxiliary heads); False: the deployed form
                (`inference_model`); None (default): a shipped preset's training form, a directory
                as it was saved. A directory saved deployed cannot give the training form (its teacher
                is not in it): that is an error naming the fix.
            num_classes, overrides: for a shipped preset, the recipe's `model.num_classes` and
                further `key=value` overrides (the CLI's --set syntax, e.g. "eval.mode=slide").
        """
        preset = os.fspath(preset)
        if preset.startswith(REMOTE_PREFIXES):
            preset = _download_preset(preset)
        if os.path.isdir(preset):
            if num_classes is not None or overrides:
                raise UserError(
                    f"preset directory {preset!r}: num_classes / overrides apply to shipped presets; a saved "
                    "preset loads as it was saved (fine-tune it, or start from a shipped preset name)"
                )
            task = load_preset_dir(preset, load_weights=load_weights is not False)
            if training is False:
                from ssaseg_keras.models.segmentor import inference_model

                return inference_model(task)
            if training and task.is_ssa and not task.classifier.with_teacher:
                raise UserError(
                    f"preset {preset!r} was saved deployed (no SSA teacher), so it has no training form: "
                    "fine-tune from a preset saved before inference_model, or pass training=None"
                )
            return task
        from ssaseg_keras.recipes import load_recipe, packaged_recipe_names, packaged_recipe_path

        if packaged_recipe_path(preset) is None:
            names = packaged_recipe_names()
            raise UserError(
                f"unknown preset {preset!r}: not a shipped preset ({', '.join(names[:6])}, ... {len(names)} in "
                "all: ImageSegmenter.presets()) nor a preset directory (save_to_preset / `ssaseg-keras convert "
                "--preset-dir`) nor a kaggle:// or hf:// handle"
            )
        if load_weights:
            raise UserError(
                f"preset {preset!r} ships no trained weights (only the architecture and settings): pass "
                "load_weights=False, or load a preset directory holding weights"
            )
        from ssaseg_keras.models.builder import build_image_segmenter

        recipe = load_recipe(preset, list(overrides))
        own_classes = num_classes is not None and int(num_classes) != recipe["model"]["num_classes"]
        if own_classes and recipe["data"]["source"] == "synthetic":
            recipe = load_recipe(preset, [*overrides, f"model.num_classes={num_classes}", f"data.num_classes={num_classes}"])
            own_classes = False
        elif own_classes:  # the user's own data: the recipe's dataset no longer describes the task
            recipe = {**recipe, "model": {**recipe["model"], "num_classes": int(num_classes)}}
        task = build_image_segmenter(recipe, training=training is not False)
        if own_classes:
            object.__setattr__(task, "recipe", None)  # a preset saved from it carries no recipe.yaml
        return task

    def save_to_preset(self, preset_dir):
        """Write a preset directory (keras-hub's layout): `task.json` (the whole task's Keras config),
        `config.json` (the backbone's), `preprocessor.json`, `metadata.json`, `task.weights.npz`
        (every weight as a plain array named by its place in the model: loaded strictly by name, on
        any backend, nothing unpickled) and the recipe when the task was built from one. Written
        into a temporary folder first, then renamed into place."""
        from ssaseg_keras.training.checkpoint import _write_arrays, model_variables
        from ssaseg_keras.utils.files import replace_dir
        from ssaseg_keras.version import __version__

        preset_dir = os.path.abspath(os.fspath(preset_dir))
        parent = os.path.dirname(preset_dir)
        os.makedirs(parent, exist_ok=True)
        temporary = tempfile.mkdtemp(prefix=".tmp-preset-", dir=parent)
        try:
            _write_json(os.path.join(temporary, PRESET_FILES["task"]), _serialized_without_compile(self))
            _write_json(
                os.path.join(temporary, PRESET_FILES["backbone"]), keras.saving.serialize_keras_object(self.backbone)
            )
            if self.preprocessor is not None:
                _write_json(
                    os.path.join(temporary, PRESET_FILES["preprocessor"]),
                    keras.saving.serialize_keras_object(self.preprocessor),
                )
            keyed = model_variables(self)
            _write_arrays(os.path.join(temporary, PRESET_FILES["weights"]), keyed)
            recipe = self.__dict__.get("recipe")
            if recipe is not None:
                import yaml

                with open(os.path.join(temporary, PRESET_FILES["recipe"]), "w", encoding="utf-8") as handle:
                    yaml.safe_dump(recipe, handle, sort_keys=False)
            _write_json(
                os.path.join(temporary, PRESET_FILES["metadata"]),
                {
                    "ssaseg_keras_version": __version__,
                    "keras_version": keras.__version__,
                    "backend": keras.backend.backend(),
                    "parameter_count": count_parameters(self.weights),
                    "trainable_parameter_count": count_parameters(self.trainable_weights),
                    "num_classes": self.num_classes,
                    "ssa": self.is_ssa,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )
            replace_dir(temporary, preset_dir)
        finally:
            if os.path.isdir(temporary):
                shutil.rmtree(temporary, ignore_errors=True)
        return preset_dir

    # ----------------------------------------------------------------- config
    def get_config(self):
        return {
            **super().get_config(),
            "preprocessor": None
            if self.preprocessor is None
            else keras.saving.serialize_keras_object(self.preprocessor),
            "inference": dict(self.inference),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("preprocessor"), dict):
            config["preprocessor"] = keras.saving.deserialize_keras_object(
                config["preprocessor"], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects=custom_objects)


def load_preset_dir(preset_dir, load_weights=True):
    """The `ImageSegmenter` a `save_to_preset` directory holds (CheckpointError naming the file when
    it is incomplete, corrupt or does not fit)."""
    from ssaseg_keras.training.checkpoint import _assign, _read_arrays, model_variables

    task_file = os.path.join(preset_dir, PRESET_FILES["task"])
    if not os.path.isfile(task_file):
        raise CheckpointError(
            f"{preset_dir!r} is not an ssaseg-keras preset directory ({PRESET_FILES['task']} is missing): write "
            "one with ImageSegmenter.save_to_preset or `ssaseg-keras convert ... --preset-dir DIR`"
        )
    try:
        with open(task_file, encoding="utf-8") as handle:
            config = json.load(handle)
        task = keras.saving.deserialize_keras_object(config)  # safe mode: no code from the file
    except Exception as error:
        raise CheckpointError(f"{task_file} is not a readable ssaseg-keras task config ({error})") from error
    if not isinstance(task, ImageSegmenter):
        raise CheckpointError(f"{task_file} describes a {type(task).__name__}, not an ssaseg-keras ImageSegmenter")
    task.build()
    if load_weights:
        keyed = model_variables(task)
        _assign(keyed, _read_arrays(os.path.join(preset_dir, PRESET_FILES["weights"]), keyed, "task"))
    recipe_file = os.path.join(preset_dir, PRESET_FILES["recipe"])
    if os.path.isfile(recipe_file):
        from ssaseg_keras.recipes import load_recipe

        object.__setattr__(task, "recipe", load_recipe(recipe_file))
    return task


def _serialized_without_compile(model):
    """Keras' serialized form of `model` without its compile state (optimizer, losses): a preset holds
    the model; the user compiles it for their own training."""
    return {
        "module": type(model).__module__,
        "class_name": type(model).__name__,
        "config": model.get_config(),
        "registered_name": keras.saving.get_registered_name(type(model)),
    }


def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2)


def _download_preset(handle):
    """A local copy of a remote preset, through keras-hub's downloader (one clear error offline)."""
    try:
        from keras_hub.src.utils.preset_utils import get_file
    except ImportError as error:
        raise UserError(f"preset {handle!r}: remote presets need keras-hub (pip install keras-hub)") from error
    try:
        folder = os.path.dirname(get_file(handle, PRESET_FILES["task"]))
        for key in ("backbone", "preprocessor", "weights", "metadata"):
            get_file(handle, PRESET_FILES[key])
    except Exception as error:
        raise UserError(
            f"cannot download preset {handle!r} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "Offline? Copy the preset directory to this machine and pass its path instead."
        ) from error
    return folder


class _explain_label_errors:
    """Turn tf.data's failed label check into the one-line DataError it carries."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is not None and LABEL_MESSAGE_START in str(error) and not isinstance(error, UserError):
            import re

            from ssaseg_keras.utils.errors import DataError

            text = str(error)
            message = text[text.index(LABEL_MESSAGE_START) :].split("]", 1)
            largest = re.match(r"\s*\[(-?\d+)\]", message[1]) if len(message) > 1 else None
            raise DataError(f"{message[0].strip()} {largest.group(1) if largest else '?'}") from None
        return False


def _numpy_pairs(x, y=None, batch_size=None):
    """Iterate (images, labels) NumPy batches of a tf.data dataset or of arrays."""
    if hasattr(x, "as_numpy_iterator"):
        for element in x.as_numpy_iterator():
            yield element[0], element[1]
        return
    if isinstance(x, tuple) and y is None:
        x, y = x
    x, y = np.asarray(x), np.asarray(y)
    step = batch_size or 8
    for start in range(0, len(x), step):
        yield x[start : start + step], y[start : start + step]


def _images_of(x):
    """A list of (H, W, 3) images from an array, a list or a tf.data dataset."""
    if hasattr(x, "as_numpy_iterator"):
        images = []
        for element in x.as_numpy_iterator():
            batch = element[0] if isinstance(element, tuple) else element
            images.extend(list(batch) if np.ndim(batch) == 4 else [batch])
        return images
    if isinstance(x, list):
        return x
    x = np.asarray(x)
    return list(x) if x.ndim == 4 else [x]
