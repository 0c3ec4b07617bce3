"""The TF Serving graph: a `tf.Module` around a Keras `Segmentor`, saved with `tf.saved_model.save`.

Needs the TensorFlow Keras backend (the child process of `export` sets it when the caller's backend
is another one). Signature `serving_default`:
    images  uint8 or float32 (B, H, W, 3), RGB 0-255, any batch and size
    -> labels int32 (B, H, W) [, probabilities float32 (B, H, W, K)]
Inside: normalise with the recipe's mean/std; zero-pad bottom/right to a multiple of 32 (SegNeXt)
or resize to the model's fixed size (SegFormer); run backbone, head and classifier; resize the
logits (bilinear, half-pixel) and crop them back to (H, W).
"""

from __future__ import annotations

import tensorflow as tf

from ssaseg_keras.export.samples import fixed_nmf_bases, nmf_seed
from ssaseg_keras.models.segmentor import fixed_input_size
from ssaseg_keras.utils.conventions import SIZE_DIVISOR, normalize

SIGNATURE_KEY = "serving_default"


def _resize(x, size):
    """Bilinear, half-pixel centres, no antialiasing: torch's align_corners=False when upsampling."""
    return tf.image.resize(x, size, method="bilinear", antialias=False)


class _Untracked:
    """A plain holder: `tf.Module` does not track (or save) what it holds."""

    def __init__(self, model):
        self.model = model


class SegmentationServer(tf.Module):
    """Holds the model's variables and the `serve` function of the `serving_default` signature."""

    def __init__(self, model, mean, std, input_dtype="uint8", with_probabilities=False):
        super().__init__(name="ssaseg_server")
        self._holder = _Untracked(model)  # only the variables are saved, not Keras' own signature
        self.model_variables = list(model.variables)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.fixed_size = fixed_input_size(model)
        self.with_probabilities = bool(with_probabilities)
        spec = tf.TensorSpec([None, None, None, 3], tf.as_dtype(input_dtype), name="images")
        self.serve = tf.function(self._serve, input_signature=[spec])

    def _serve(self, images):
        x = normalize(tf.cast(images, tf.float32), self.mean, self.std)
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        if self.fixed_size is not None:
            x = _resize(x, self.fixed_size)
            run_size = tf.constant(self.fixed_size, tf.int32)
        else:
            pad_h = (SIZE_DIVISOR - height % SIZE_DIVISOR) % SIZE_DIVISOR
            pad_w = (SIZE_DIVISOR - width % SIZE_DIVISOR) % SIZE_DIVISOR
            x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
            run_size = tf.stack([height + pad_h, width + pad_w])
        model = self._holder.model
        logits = _resize(tf.cast(model.feature_logits(x, training=False), tf.float32), run_size)
        if self.fixed_size is not None:
            logits = _resize(logits, tf.stack([height, width]))
        else:
            logits = logits[:, :height, :width, :]
        outputs = {"labels": tf.argmax(logits, axis=-1, output_type=tf.int32)}
        if self.with_probabilities:
            outputs["probabilities"] = tf.nn.softmax(logits, axis=-1)
        return outputs


def save_serving_model(model, path, mean, std, input_dtype="uint8", with_probabilities=False):
    """Trace the serving signature (fixed NMF bases, dynamic shapes) and write a SavedModel to `path`."""
    server = SegmentationServer(model, mean, std, input_dtype, with_probabilities)
    with fixed_nmf_bases(model, nmf_seed(model)):
        concrete = server.serve.get_concrete_function()
        tf.saved_model.save(server, path, signatures={SIGNATURE_KEY: concrete})
    return path
