"""Evaluation: streaming mIoU over a recipe's validation split, optionally with flip / multi-scale TTA.

Mode "whole" (the reference's): each image is resized keeping its ratio to the recipe's eval scale,
zero-padded on the bottom/right to a multiple of 32, predicted whole, the logits cropped back,
resized (bilinear, half-pixel) to the label's original size and arg-maxed. With TTA ("ms+flip" or
"flip"), softmax probabilities of every scale ratio and flip are averaged at the label's size
first, as mmseg's aug_test does. The confusion matrix streams over the split, so memory does not grow
with its size. Every result names its mode.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from ssaseg_keras.ops.resize import resize_bilinear

SIZE_DIVISOR = 32


def eval_mode_name(flip=False, scales=(1.0,)):
    scales = tuple(float(s) for s in scales)
    if scales == (1.0,) and not flip:
        return "whole"
    name = "ms" if scales != (1.0,) else ""
    if flip:
        name = f"{name}+flip" if name else "flip"
    return f"whole, {name} {list(scales)}" if scales != (1.0,) else f"whole, {name}"


def predict_logits(model, image):
    """Logits (1, h, w, K) float32 for one image (1, h, w, 3) of any size (padded to /32 inside)."""
    height, width = int(image.shape[1]), int(image.shape[2])
    padded_h = math.ceil(height / SIZE_DIVISOR) * SIZE_DIVISOR
    padded_w = math.ceil(width / SIZE_DIVISOR) * SIZE_DIVISOR
    if (padded_h, padded_w) != (height, width):
        image = np.pad(image, ((0, 0), (0, padded_h - height), (0, padded_w - width), (0, 0)))
    logits = model.predict_on_batch(image)
    return np.asarray(logits)[:, :height, :width]


def predict_probabilities(model, image, label_size, flip=False, scales=(1.0,)):
    """Class probabilities (1, H, W, K) at label_size, averaged over scale ratios and flips."""
    total = None
    for scale in scales:
        scaled = image
        if scale != 1.0:
            size = (max(int(round(image.shape[1] * scale)), 1), max(int(round(image.shape[2] * scale)), 1))
            scaled = np.asarray(ops.convert_to_numpy(resize_bilinear(image, size)))
        for flipped in (False, True) if flip else (False,):
            view = scaled[:, :, ::-1] if flipped else scaled
            logits = predict_logits(model, np.ascontiguousarray(view))
            if flipped:
                logits = logits[:, :, ::-1]
            resized = resize_bilinear(np.ascontiguousarray(logits), label_size)
            probs = np.asarray(ops.convert_to_numpy(ops.softmax(resized, axis=-1)))
            total = probs if total is None else total + probs
    return total


def evaluate_model(model, recipe, flip=False, scales=(1.0,), max_images=None, echo=None):
    """mIoU, mAcc, aAcc and per-class IoU/Acc (percent) of `model` on the recipe's validation split.

    Returns a dict with those keys (per-class lists hold None for classes that do not count, as
    mmseg's NaN), `class_names`, `mode` (e.g. "whole") and `num_images`.
    """
    from ssaseg_keras.data import build_dataset, dataset_info
    from ssaseg_keras.data.pipeline import explain_data_errors
    from ssaseg_keras.metrics.segmentation import SegmentationMetrics

    info = dataset_info(recipe["data"])
    metric = SegmentationMetrics(info["num_classes"], class_names=info["class_names"])
    dataset = build_dataset(recipe["data"], "val", batch_size=1, return_meta=True)
    with explain_data_errors(recipe["data"], "val"):
        count = 0
        for images, labels, meta in dataset.as_numpy_iterator():
            h, w = (int(v) for v in meta["image_shape"][0])
            lh, lw = (int(v) for v in meta["label_shape"][0])
            image, label = images[:, :h, :w], labels[:, :lh, :lw]
            if flip or tuple(scales) != (1.0,):
                prediction = np.argmax(predict_probabilities(model, image, (lh, lw), flip, scales), axis=-1)
            else:
                logits = resize_bilinear(predict_logits(model, image), (lh, lw))
                prediction = np.asarray(ops.convert_to_numpy(ops.argmax(logits, axis=-1)))
            metric.update_state(label, prediction.astype("int32"))
            count += 1
            if max_images and count >= max_images:
                break
    results = metric.results()

    def percent(values):
        return [None if v != v else round(float(v) * 100, 4) for v in values]

    return {
        "mIoU": float(results["mIoU"]) * 100,
        "mAcc": float(results["mAcc"]) * 100,
        "aAcc": float(results["aAcc"]) * 100,
        "IoU": percent(results["IoU"]),
        "Acc": percent(results["Acc"]),
        "class_names": list(info["class_names"]),
        "mode": eval_mode_name(flip, scales),
        "num_images": count,
    }


def make_evaluator(recipe):
    """A `model -> results` function for the training loop (whole mode, no TTA)."""

    def evaluate(model):
        return evaluate_model(model, recipe)

    return evaluate
