"""Evaluation: streaming mIoU over a recipe's validation split, whole or sliding-window, with flip /
multi-scale TTA.

Every image is first resized keeping its ratio to the recipe's `eval.scale` and normalised
(`data.transforms.eval_transform`, the same for `evaluate` and `predict`). Then, by `eval.mode`:
- "whole" (the reference's default): the image is zero-padded bottom/right to a multiple of 32,
  predicted whole, the logits cropped back;
- "slide" (mmseg's slide inference): windows of `eval.crop_size` every `eval.stride`, the last
  window of each row and column flush with the border; each window's logits are added to their
  place and every pixel divided by the number of windows that cover it.
The logits are resized (bilinear, half-pixel) to the label's original size and arg-maxed. With TTA
("flip", scale ratios), softmax probabilities of every ratio and flip are averaged at the label's
size first, as mmseg's aug_test does; slide or whole runs inside each. The confusion matrix streams
over the split, so memory does not grow with its size. Every result names its mode.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from ssaseg_keras.models.segmentor import fixed_input_size
from ssaseg_keras.ops.resize import resize_bilinear
from ssaseg_keras.utils.conventions import SIZE_DIVISOR
from ssaseg_keras.utils.distribution import (
    evaluation_shard,
    host_sum,
    local_batch_multiple,
    to_host,
)
from ssaseg_keras.utils.errors import UserError

EVAL_MODES = ("whole", "slide")


def eval_mode_name(mode="whole", crop_size=None, stride=None, flip=False, scales=(1.0,)):
    """The mode string every reported mIoU carries, e.g. "whole", "slide 512x512 stride 341x341",
    "whole, ms+flip [0.5, 0.75, 1.0]"."""
    if mode == "slide":
        base = f"slide {crop_size[0]}x{crop_size[1]} stride {stride[0]}x{stride[1]}"
    else:
        base = "whole"
    scales = tuple(float(s) for s in scales)
    if scales == (1.0,) and not flip:
        return base
    name = "ms" if scales != (1.0,) else ""
    if flip:
        name = f"{name}+flip" if name else "flip"
    return f"{base}, {name} {list(scales)}" if scales != (1.0,) else f"{base}, {name}"


def predict_logits(model, image):
    """Logits (B, h, w, K) float32 for images (B, h, w, 3) of any size (padded to /32 inside).

    Raises UserError when the model's input size is fixed (`model.image_size`) and the image, once
    padded, is another size.
    """
    height, width = int(image.shape[1]), int(image.shape[2])
    padded_h = math.ceil(height / SIZE_DIVISOR) * SIZE_DIVISOR
    padded_w = math.ceil(width / SIZE_DIVISOR) * SIZE_DIVISOR
    fixed = fixed_input_size(model)
    if fixed is not None and fixed != (padded_h, padded_w):
        raise UserError(
            f"the model's input size is fixed to {fixed[0]}x{fixed[1]} (model.image_size) but an image to "
            f"predict is {height}x{width}: drop model.image_size (every model runs at any multiple of 32), "
            f"or evaluate with eval.mode: slide and eval.crop_size: [{fixed[0]}, {fixed[1]}] on images at "
            "least that large"
        )
    if (padded_h, padded_w) != (height, width):
        image = np.pad(image, ((0, 0), (0, padded_h - height), (0, padded_w - width), (0, 0)))
    batch = image.shape[0]
    multiple = local_batch_multiple(model)
    if batch % multiple:  # a data-parallel model splits the batch over its devices: repeat the last image
        extra = multiple - batch % multiple
        image = np.concatenate([image, np.repeat(image[-1:], extra, axis=0)])
    logits = to_host(model.predict_on_batch(image))
    # The first rows: the images given (a TensorFlow strategy may return each replica's copy).
    return logits[:batch, :height, :width]


def slide_windows(height, width, crop_size, stride):
    """[(y1, y2, x1, x2)] of mmseg's slide inference: a grid every `stride`, windows of
    `crop_size` clipped to the image, the last of each row / column moved flush with the border."""
    crop_h, crop_w = crop_size
    stride_h, stride_w = stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


def slide_logits(model, image, crop_size, stride):
    """Logits (B, h, w, K) of images (B, h, w, 3): every window's logits summed at their place and
    divided by the per-pixel window count (mmseg's `slide_inference`)."""
    height, width = int(image.shape[1]), int(image.shape[2])
    total = count = None
    for y1, y2, x1, x2 in slide_windows(height, width, crop_size, stride):
        logits = predict_logits(model, np.ascontiguousarray(image[:, y1:y2, x1:x2]))
        if total is None:
            total = np.zeros((image.shape[0], height, width, logits.shape[-1]), "float32")
            count = np.zeros((height, width), "float32")
        total[:, y1:y2, x1:x2] += logits
        count[y1:y2, x1:x2] += 1.0
    return total / count[None, :, :, None]


def infer_logits(model, image, eval_config=None):
    """Logits (B, h, w, K) of normalised images (B, h, w, 3) by the recipe's `eval` mode."""
    eval_config = eval_config or {}
    if eval_config.get("mode", "whole") == "slide":
        return slide_logits(model, image, eval_config["crop_size"], eval_config["stride"])
    return predict_logits(model, image)


def predict_probabilities(model, image, label_size, flip=False, scales=(1.0,), eval_config=None):
    """Class probabilities (B, H, W, K) at label_size, averaged over scale ratios and flips."""
    total = None
    for scale in scales:
        scaled = image
        if scale != 1.0:
            size = (max(int(round(image.shape[1] * scale)), 1), max(int(round(image.shape[2] * scale)), 1))
            scaled = np.asarray(ops.convert_to_numpy(resize_bilinear(image, size)))
        for flipped in (False, True) if flip else (False,):
            view = scaled[:, :, ::-1] if flipped else scaled
            logits = infer_logits(model, np.ascontiguousarray(view), eval_config)
            if flipped:
                logits = logits[:, :, ::-1]
            resized = resize_bilinear(np.ascontiguousarray(logits), label_size)
            probs = np.asarray(ops.convert_to_numpy(ops.softmax(resized, axis=-1)))
            total = probs if total is None else total + probs
    return total


def predict_labels(model, image, label_size, eval_config=None, flip=False, scales=(1.0,)):
    """Class ids (B, H, W) int32 at label_size of normalised images (B, h, w, 3), and the logits
    (or, with TTA, the averaged probabilities) (B, H, W, K) they are the argmax of."""
    if flip or tuple(scales) != (1.0,):
        scores = predict_probabilities(model, image, label_size, flip, scales, eval_config)
    else:
        scores = np.asarray(ops.convert_to_numpy(resize_bilinear(infer_logits(model, image, eval_config), label_size)))
    return np.argmax(scores, axis=-1).astype("int32"), scores


def evaluation_data_config(recipe):
    """The recipe's data section with the evaluation's resize scale (`eval.scale`)."""
    return {**recipe["data"], "scale": list(recipe["eval"]["scale"])}


def evaluate_model(model, recipe, flip=False, scales=(1.0,), max_images=None, echo=None):
    """mIoU, mAcc, aAcc and per-class IoU/Acc (percent) of `model` on the recipe's validation split.

    Returns a dict with those keys (per-class lists hold None for classes that do not count, as
    mmseg's NaN), `class_names`, `mode` (e.g. "whole" or "slide 512x512 stride 341x341") and
    `num_images`.
    """
    from ssaseg_keras.data import build_dataset, dataset_info
    from ssaseg_keras.data.pipeline import explain_data_errors
    from ssaseg_keras.metrics.segmentation import confusion_counts

    eval_config = recipe["eval"]
    info = dataset_info(recipe["data"])
    num_classes = info["num_classes"]
    confusion = np.zeros((num_classes, num_classes), "int64")
    # PyTorch ranks each evaluate every n-th image and add their counts (each image once); JAX
    # hosts and TensorFlow replicas run each image together.
    shards, index = evaluation_shard()
    limit = None if not max_images else len(range(index, max_images, shards))  # this shard's part
    dataset = build_dataset(
        evaluation_data_config(recipe), "val", batch_size=1, return_meta=True,
        shard=(shards, index) if shards > 1 else None,
    )  # fmt: skip
    with explain_data_errors(recipe["data"], "val"):
        count = 0
        for images, labels, meta in dataset.as_numpy_iterator():
            if limit is not None and count >= limit:
                break
            h, w = (int(v) for v in meta["image_shape"][0])
            lh, lw = (int(v) for v in meta["label_shape"][0])
            image, label = images[:, :h, :w], labels[:, :lh, :lw]
            prediction, _ = predict_labels(model, image, (lh, lw), eval_config, flip, scales)
            confusion += confusion_counts(label, prediction, num_classes)
            count += 1
    confusion = host_sum(confusion)
    count = int(host_sum(np.array([count], "int64"))[0])
    mode = eval_mode_name(eval_config["mode"], eval_config["crop_size"], eval_config["stride"], flip, scales)
    return summarize_confusion(confusion, info["class_names"], mode, count)


def summarize_confusion(confusion, class_names, mode, num_images):
    """The reported results of a confusion matrix: mIoU, mAcc, aAcc and per-class IoU / Acc in percent
    (None for classes that do not count, as mmseg's NaN), `class_names`, `mode`, `num_images`."""
    from ssaseg_keras.metrics.segmentation import metrics_from_confusion

    results = metrics_from_confusion(confusion, class_names)

    def percent(values):
        return [None if v != v else round(float(v) * 100, 4) for v in values]

    return {
        "mIoU": float(results["mIoU"]) * 100,
        "mAcc": float(results["mAcc"]) * 100,
        "aAcc": float(results["aAcc"]) * 100,
        "IoU": percent(results["IoU"]),
        "Acc": percent(results["Acc"]),
        "class_names": list(class_names),
        "mode": mode,
        "num_images": num_images,
    }


def make_evaluator(recipe):
    """A `model -> results` function for the training loop (the recipe's eval mode, no TTA)."""

    def evaluate(model):
        return evaluate_model(model, recipe)

    return evaluate
