"""The image segmenter's preprocessor, in keras-hub's shape: an `ImageConverter` (normalisation and the
inference resize) inside an `ImageSegmenterPreprocessor` that maps `(image, label)` pairs.

Both are Keras layers for their configuration (they have no weights) and are callable on NumPy
arrays, backend tensors and TensorFlow tensors (so `dataset.map(preprocessor)` works in tf.data on
every backend, as keras-hub's preprocessors do). NumPy and TensorFlow inputs go through
`utils.conventions.normalize`, the function the data pipelines use.
"""

from __future__ import annotations

import keras
import numpy as np

from ssaseg_keras.utils.conventions import IGNORE_INDEX, MEAN, STD, normalize


def _is_tf_tensor(value):
    return type(value).__module__.startswith("tensorflow")


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class ImageConverter(keras.layers.Layer):
    """RGB images with 0-255 values (uint8 or float) -> normalised float32, `(x - mean) / std`.

    Args:
        mean, std: per-channel RGB statistics (the recipe's `data.mean` / `data.std`).
        scale: (long, short) edge bounds of the keep-ratio resize applied before inference
            (`predict`, `evaluate`: the recipe's `eval.scale`, mmseg's `Resize(keep_ratio=True)`);
            None predicts at the given size. Training data is never resized here: the training
            pipeline crops it.
    """

    def __init__(self, mean=MEAN, std=STD, scale=None, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.scale = None if scale is None else [int(v) for v in scale]
        self.built = True

    def __call__(self, images):
        """(..., H, W, 3) 0-255 -> float32 normalised, of the same kind (NumPy, TensorFlow or backend)."""
        if _is_tf_tensor(images):  # tf.data (and the SavedModel graph)
            import tensorflow as tf

            return normalize(tf.cast(images, tf.float32), self.mean, self.std)
        if isinstance(images, np.ndarray | list):
            return normalize(np.asarray(images, "float32"), self.mean, self.std)
        # A backend tensor (maybe on an accelerator): `normalize`'s arithmetic through keras.ops.
        images = keras.ops.cast(images, "float32")
        return keras.ops.divide(
            keras.ops.subtract(images, np.asarray(self.mean, "float32")), np.asarray(self.std, "float32")
        )

    def for_inference(self, image):
        """One RGB image (H, W, 3) -> (1, h, w, 3) float32 NumPy: keep-ratio resized to `scale` (when
        set) and normalised, exactly as evaluation's pipeline (`data.transforms.eval_transform`)."""
        image = np.asarray(image)
        if self.scale is None:
            return self(image)[None]
        from ssaseg_keras.data.transforms import eval_transform

        config = {"scale": self.scale, "mean": self.mean, "std": self.std}
        return np.asarray(eval_transform(image, config))[None]

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "scale": self.scale}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class ImageSegmenterPreprocessor(keras.layers.Layer):
    """`(images, labels)` -> `(normalised images, int32 labels)`, or images alone.

    Labels are checked in tf.data (values must be below `num_classes` or 255 = ignore), so a wrong
    label set stops with one message naming the fix instead of a failure deep in a loss.

    Args:
        image_converter: an `ImageConverter`.
        num_classes: the model's class count (for the label check); None skips the check.
    """

    def __init__(self, image_converter=None, num_classes=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(image_converter, dict):
            image_converter = keras.saving.deserialize_keras_object(image_converter)
        self.image_converter = image_converter or ImageConverter()
        self.num_classes = None if num_classes is None else int(num_classes)
        self.built = True

    def __call__(self, x, y=None, sample_weight=None):
        x = self.image_converter(x)
        if y is not None:
            y = self._checked_labels(y)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def _checked_labels(self, labels):
        if not _is_tf_tensor(labels):
            labels = np.asarray(labels).astype("int32")
            if self.num_classes is not None:
                check_label_values(labels, self.num_classes)
            return labels
        import tensorflow as tf

        labels = tf.cast(labels, tf.int32)
        if self.num_classes is None:
            return labels
        valid = tf.reduce_all((labels == IGNORE_INDEX) | ((labels >= 0) & (labels < self.num_classes)))
        message = label_message(self.num_classes)
        with tf.control_dependencies([tf.debugging.Assert(valid, [message, tf.reduce_max(labels)])]):
            return tf.identity(labels)

    def get_config(self):
        return {
            **super().get_config(),
            "image_converter": keras.saving.serialize_keras_object(self.image_converter),
            "num_classes": self.num_classes,
        }


LABEL_MESSAGE_START = "label values out of range"


def label_message(num_classes):
    return (
        f"{LABEL_MESSAGE_START}: labels must be class ids 0..{num_classes - 1} or 255 (ignore). "
        "For datasets whose 0 means other, use reduce_zero_label (0 -> 255, k -> k-1); otherwise "
        "build the model with num_classes = the largest id + 1. Largest label seen:"
    )


def check_label_values(labels, num_classes):
    """Raise a DataError when NumPy labels hold values other than 0..num_classes-1 and 255."""
    from ssaseg_keras.utils.errors import DataError

    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise DataError(f"{label_message(num_classes)} {int(labels[bad].max())}")
