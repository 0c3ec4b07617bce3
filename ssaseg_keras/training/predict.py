"""Loading a trained model (checkpoint, work dir or .keras file) and predicting label maps for images."""

from __future__ import annotations

import os

import numpy as np

from ssaseg_keras.utils.errors import CheckpointError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_trained_model(path, recipe=None):
    """(model, recipe) from a training checkpoint folder, a work dir (its latest checkpoint) or a
    `.keras` file. A `.keras` file carries no recipe: pass `recipe` for its data normalisation and
    class names (else the defaults of the model's class count are used)."""
    import keras

    from ssaseg_keras.models import build_segmentor
    from ssaseg_keras.training import checkpoint as ckpt

    path = os.fspath(path)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise CheckpointError(f"model file {path!r} does not exist")
        import ssaseg_keras.models  # noqa: F401  (registers the serializable classes)

        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as error:  # a corrupt or foreign file
            raise CheckpointError(f"{path!r} is not a readable ssaseg-keras .keras model ({error})") from error
        return model, recipe
    checkpoint = ckpt.resolve_checkpoint(path)
    saved_recipe = ckpt.read_recipe(checkpoint)
    model = build_segmentor(saved_recipe["model"], load_pretrained=False, training=True)
    ckpt.restore_model(checkpoint, model)
    return model, recipe or saved_recipe


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


def keep_ratio_size(height, width, scale):
    """mmcv's keep-ratio rescale: the largest size with long side <= max(scale), short <= min(scale)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def predict_image(model, image, recipe, return_logits=False):
    """Label map (H, W) int32 at the image's size (and the logits (H, W, K) when asked).

    The image (H, W, 3) uint8 RGB is resized keeping its ratio to the recipe's eval scale,
    normalised with the recipe's mean/std, predicted whole (padded to /32) and the logits resized back.
    """
    from keras import ops

    from ssaseg_keras.ops.resize import resize_bilinear
    from ssaseg_keras.training.evaluation import predict_logits

    data = recipe["data"] if recipe else {}
    mean = np.asarray(data.get("mean", (123.675, 116.28, 103.53)), "float32")
    std = np.asarray(data.get("std", (58.395, 57.12, 57.375)), "float32")
    scale = (recipe or {}).get("eval", {}).get("scale") or data.get("scale") or (2048, 512)
    height, width = image.shape[:2]
    size = keep_ratio_size(height, width, scale)
    pixels = (image.astype("float32") - mean) / std
    resized = np.asarray(ops.convert_to_numpy(resize_bilinear(pixels[None], size)))
    logits = resize_bilinear(predict_logits(model, resized), (height, width))
    logits = np.asarray(ops.convert_to_numpy(logits))[0]
    labels = np.argmax(logits, axis=-1).astype("int32")
    return (labels, logits) if return_logits else labels


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
