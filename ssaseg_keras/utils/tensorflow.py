"""The one way the library imports TensorFlow (tf.data, TensorBoard, the SavedModel export).

When Keras runs on JAX or PyTorch, TensorFlow is only the data pipeline: it is kept off the GPUs
before its first use, or it would reserve the device memory that JAX or PyTorch needs.
"""

from __future__ import annotations

import os

_GPUS_HIDDEN = False


def import_tensorflow():
    """The `tensorflow` module; the first call hides the GPUs from it unless it is the Keras backend."""
    global _GPUS_HIDDEN
    import tensorflow as tf

    if not _GPUS_HIDDEN:
        _GPUS_HIDDEN = True
        backend = os.environ.get("KERAS_BACKEND")
        if backend is None:
            import keras

            backend = keras.backend.backend()
        if backend != "tensorflow":
            try:
                tf.config.set_visible_devices([], "GPU")
            except (RuntimeError, ValueError):  # already initialised: nothing left to do
                pass
    return tf
