"""Predicting label maps for image files with a trained model (see `training.loading` for loading it)."""

from __future__ import annotations

import os

import numpy as np

from ssaseg_keras.utils.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(path):
    """Image files of a file or folder (sorted); UserError when there are none."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, name) for name in os.listdir(path) if name.lower().endswith(IMAGE_SUFFIXES)
        )
        if not files:
            raise UserError(f"{path!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not os.path.isfile(path):
        raise UserError(f"{path!r} does not exist")
    return [path]


def read_image(path):
    """RGB uint8 array (H, W, 3); UserError naming the file when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{path!r} is not a readable image ({error})") from error


def preprocess_image(image, recipe):
    """An RGB uint8 image (H, W, 3) resized keeping its ratio to `eval.scale` and normalised with the
    recipe's mean/std: (1, h, w, 3) float32, exactly as evaluation's tf.data pipeline does it."""
    from ssaseg_keras.data.transforms import eval_transform
    from ssaseg_keras.training.evaluation import evaluation_data_config

    data = evaluation_data_config(recipe)
    return np.asarray(eval_transform(image, data))[None]


def predict_image(model, image, recipe, return_logits=False):
    """Label map (H, W) int32 at the image's size (and the scores (H, W, K) when asked).

    The image (H, W, 3) uint8 RGB is preprocessed as evaluation does (`preprocess_image`), predicted
    by the recipe's `eval.mode` (whole or slide) and the logits resized back to (H, W).
    """
    from ssaseg_keras.training.evaluation import predict_labels

    height, width = image.shape[:2]
    labels, scores = predict_labels(model, preprocess_image(image, recipe), (height, width), recipe["eval"])
    return (labels[0], scores[0]) if return_logits else labels[0]


def save_prediction(labels, image, output_dir, stem, palette, logits=None):
    """Write `<stem>.png` (class ids, palette PNG), `<stem>_overlay.jpg` and optionally `<stem>_logits.npy`."""
    from PIL import Image

    os.makedirs(output_dir, exist_ok=True)
    palette = np.asarray(palette, dtype="uint8")
    label_image = Image.fromarray(labels.astype("uint8"), mode="P")
    label_image.putpalette(palette.reshape(-1).tolist()[: 768])
    label_image.save(os.path.join(output_dir, f"{stem}.png"))
    colour = palette[np.clip(labels, 0, len(palette) - 1)]
    overlay = (0.5 * image.astype("float32") + 0.5 * colour.astype("float32")).astype("uint8")
    Image.fromarray(overlay).save(os.path.join(output_dir, f"{stem}_overlay.jpg"), quality=90)
    if logits is not None:
        np.save(os.path.join(output_dir, f"{stem}_logits.npy"), logits.astype("float32"))
