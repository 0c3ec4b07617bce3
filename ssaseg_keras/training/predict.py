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


def save_prediction(labels, image, output_dir, stem, palette, logits=None, class_names=None):
    """Write `<stem>.png` (class ids, palette PNG), with `class_names` `<stem>_overlay.png` (see
    `overlay_image`) and with `logits` `<stem>_logits.npy`."""
    from PIL import Image

    os.makedirs(output_dir, exist_ok=True)
    palette = np.asarray(palette, dtype="uint8")
    label_image = Image.fromarray(labels.astype("uint8"), mode="P")
    label_image.putpalette(palette.reshape(-1).tolist()[: 768])
    label_image.save(os.path.join(output_dir, f"{stem}.png"))
    if class_names is not None:
        overlay_image(labels, image, palette, class_names).save(os.path.join(output_dir, f"{stem}_overlay.png"))
    if logits is not None:
        np.save(os.path.join(output_dir, f"{stem}_logits.npy"), logits.astype("float32"))


LEGEND_ROW = 16  # pixels per legend line
MAX_LEGEND = 24  # classes listed (the largest areas first)


def overlay_image(labels, image, palette, class_names, alpha=0.5):
    """The colour map blended over the image (weight `alpha`), with a legend to its right: a swatch,
    the class name and its share of the pixels, for every class present (largest first; 255 is not
    coloured). Returns a PIL RGB image (H, W + legend width) or taller when the legend needs it."""
    from PIL import Image, ImageDraw, ImageFont

    palette = np.asarray(palette, dtype="uint8")
    valid = labels < len(palette)
    colour = palette[np.where(valid, labels, 0)]
    blended = image.astype("float32")
    blended[valid] = (1 - alpha) * blended[valid] + alpha * colour[valid].astype("float32")
    ids, counts = np.unique(labels[valid], return_counts=True)
    order = np.argsort(-counts, kind="stable")[:MAX_LEGEND]
    rows = [(int(ids[i]), counts[i] / labels.size) for i in order]
    font = ImageFont.load_default()

    def name(class_id):
        return str(class_names[class_id]) if class_id < len(class_names) else str(class_id)

    texts = [f"{name(c)} {share:.1%}" for c, share in rows]
    text_width = max((int(font.getlength(t)) for t in texts), default=0)
    legend_width = 8 + LEGEND_ROW + 6 + text_width + 8
    height = max(image.shape[0], 8 + LEGEND_ROW * len(rows))
    canvas = Image.new("RGB", (image.shape[1] + legend_width, height), (255, 255, 255))
    canvas.paste(Image.fromarray(blended.clip(0, 255).astype("uint8")), (0, 0))
    draw = ImageDraw.Draw(canvas)
    left = image.shape[1] + 8
    for row, ((class_id, _), text) in enumerate(zip(rows, texts)):
        top = 4 + row * LEGEND_ROW
        draw.rectangle([left, top, left + LEGEND_ROW - 3, top + LEGEND_ROW - 3], fill=tuple(int(v) for v in palette[class_id]), outline=(0, 0, 0))
        draw.text((left + LEGEND_ROW + 6, top + 1), text, fill=(0, 0, 0), font=font)
    return canvas
