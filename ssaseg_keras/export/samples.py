"""Backend-neutral parts of the export: fixed NMF bases, sample images and the Keras model's
predictions on them (what the export check compares the SavedModel's against).

SegNeXt's NMF draws fresh random bases at every call (as the reference does at inference). An exported
model draws them once, at export time, from a seeded NumPy generator: the served model is then
stateless and deterministic, and the Keras model with the same bases gives the same predictions on
every backend, which is what the export check compares.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ssaseg_keras.models.segmentor import fixed_input_size
from ssaseg_keras.utils.conventions import SIZE_DIVISOR, normalize

NORMALIZE_EPS = 1e-12
# (batch, height, width) of the check's sample images: one size a multiple of 32, one not.
SAMPLE_SHAPES = ((2, 64, 96), (1, 50, 75))


def nmf_layers(model):
    """The model's NMF2D layers (SegNeXt's Hamburger); empty for other heads."""
    from ssaseg_keras.models.heads.ham_head import NMF2D

    return [
        layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, NMF2D)
    ]


def nmf_seed(model):
    """The seed of the exported NMF bases: the model's NMF seed (recipe `model.seed`), else 0."""
    seeds = [layer.seed for layer in nmf_layers(model) if layer.seed is not None]
    return int(seeds[0]) if seeds else 0


def fixed_bases(channels, rank, seed):
    """(C, R) float32 bases, uniform [0, 1) from NumPy's PCG64(seed), L2-normalised over C."""
    bases = np.random.default_rng(seed).uniform(size=(channels, rank))
    bases = bases / np.maximum(np.linalg.norm(bases, axis=0, keepdims=True), NORMALIZE_EPS)
    return bases.astype("float32")


@contextlib.contextmanager
def fixed_nmf_bases(model, seed):
    """Make each NMF2D layer of `model` use `fixed_bases` (seed + layer index) instead of random ones."""
    from keras import ops

    patched = []
    for index, layer in enumerate(nmf_layers(model)):

        def random_bases(batch, channels, _layer=layer, _seed=seed + index):
            bases = ops.convert_to_tensor(fixed_bases(int(channels), _layer.rank, _seed))
            return ops.broadcast_to(bases[None], (batch, int(channels), _layer.rank))

        layer.random_bases = random_bases  # instance attribute shadows the method
        patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            del layer.random_bases


def sample_images(shapes=SAMPLE_SHAPES, seed=0):
    """Deterministic uint8 RGB batches (smooth gradients, blobs and noise), one per (B, H, W)."""
    rng = np.random.default_rng(seed)
    out = []
    for batch, height, width in shapes:
        yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
        images = []
        for _ in range(batch):
            channels = []
            for _ in range(3):
                a, b, c = rng.uniform(-1, 1, size=3)
                cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
                blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype("float64")
                channels.append(128 + 60 * (a * yy + b * xx) + 50 * c * blob)
            image = np.stack(channels, axis=-1) + rng.normal(0, 8, size=(height, width, 3))
            images.append(np.clip(np.round(image), 0, 255).astype("uint8"))
        out.append(np.stack(images))
    return out


def keras_logits(model, images, mean, std):
    """The Keras model's float32 logits (B, H, W, K) for uint8/float images (B, H, W, 3), as NumPy.

    Same preprocessing as the exported graph: normalise; then either resize to the model's fixed size
    and resize the logits back, or zero-pad (after normalisation) bottom/right to a multiple of 32
    and crop the logits back.
    """
    import keras

    from ssaseg_keras.ops.resize import resize_bilinear

    x = normalize(np.asarray(images, dtype="float32"), mean, std)
    height, width = x.shape[1:3]
    fixed = fixed_input_size(model)
    if fixed is not None:
        resized = resize_bilinear(keras.ops.convert_to_tensor(x), fixed, align_corners=False)
        logits = resize_bilinear(
            model(resized, training=False), (height, width), align_corners=False
        )
        return np.asarray(keras.ops.convert_to_numpy(logits), dtype="float32")
    pad_h, pad_w = -height % SIZE_DIVISOR, -width % SIZE_DIVISOR
    x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    logits = keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(x), training=False))
    return np.asarray(logits, dtype="float32")[:, :height, :width]


def softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sample_predictions(model, mean, std, shapes=SAMPLE_SHAPES):
    """{"images_i", "labels_i", "probabilities_i"} for the sample images, with fixed NMF bases."""
    arrays = {}
    with fixed_nmf_bases(model, nmf_seed(model)):
        for i, images in enumerate(sample_images(shapes)):
            logits = keras_logits(model, images, mean, std)
            arrays[f"images_{i}"] = images
            arrays[f"labels_{i}"] = logits.argmax(axis=-1).astype("int32")
            arrays[f"probabilities_{i}"] = softmax(logits.astype("float64")).astype("float32")
    return arrays
