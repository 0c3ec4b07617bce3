"""Pixel-wise segmentation losses with an ignore label (keras.ops only, float32 throughout).

Labels outside [0, num_classes) -- 255 in particular -- are ignored: they never index a tensor, so a
stray label value cannot crash a loss on any backend (the data pipeline reports them instead).
"""

from __future__ import annotations

import math

from keras import ops

# mmseg 0.30 divides a mean over non-ignored pixels by (count + float32 eps).
FLOAT32_EPS = 1.1920928955078125e-07


def labels_in_range(labels, num_classes):
    """bool mask, True where 0 <= label < num_classes (every other value is ignored)."""
    labels = ops.cast(labels, "int32")
    return ops.logical_and(labels >= 0, labels < num_classes)


def valid_label_mask(labels, num_classes):
    """float32 mask, 1 where 0 <= label < num_classes."""
    return ops.cast(labels_in_range(labels, num_classes), "float32")


def label_one_hot(labels, num_classes):
    """(...,) integer labels -> (..., K) float32 one-hot; ignored labels give all-zero rows."""
    labels = ops.cast(labels, "int32")[..., None]
    return ops.cast(ops.equal(labels, ops.arange(num_classes, dtype="int32")), "float32")


def safe_labels(labels, num_classes):
    """(B, H, W) int32 labels with the ignored ones (outside [0, K)) replaced by 0, for gathers."""
    return ops.where(labels_in_range(labels, num_classes), ops.cast(labels, "int32"), 0)


def label_logits(logits, labels):
    """(B, H, W) float32: each pixel's logit at its label (class 0 at ignored pixels)."""
    index = safe_labels(labels, logits.shape[-1])[..., None]
    return ops.take_along_axis(ops.cast(logits, "float32"), index, axis=-1)[..., 0]


def pixel_cross_entropy(logits, labels, picked=None):
    """Per-pixel softmax cross-entropy, 0 at ignored pixels.

    Args:
        logits: (B, H, W, K) float logits at the labels' resolution.
        labels: (B, H, W) integer labels.
        picked: optional (B, H, W) logit at each pixel's label, when the caller has it cheaper
            (`resize_bilinear_at`); `label_logits(logits, labels)` otherwise.

    Returns:
        (ce, valid): two (B, H, W) float32 tensors.
    """
    logits = ops.cast(logits, "float32")
    valid = valid_label_mask(labels, logits.shape[-1])
    picked = label_logits(logits, labels) if picked is None else ops.cast(picked, "float32")
    ce = ops.logsumexp(logits, axis=-1) - picked
    return ce * valid, valid


def cross_entropy(logits, labels, average="valid", picked=None):
    """Mean softmax cross-entropy over pixels, ignoring labels outside [0, K).

    average="valid" divides by the number of non-ignored pixels (mmseg's `avg_non_ignore=True`);
    average="all" divides by every pixel, ignored ones counting as 0 (mmseg 0.30's default).
    `picked`: see `pixel_cross_entropy`.
    """
    ce, valid = pixel_cross_entropy(logits, labels, picked)
    if average == "all":
        return ops.mean(ce)
    if average == "valid":
        return ops.sum(ce) / (ops.sum(valid) + FLOAT32_EPS)
    raise ValueError(f"average must be 'valid' or 'all', got {average!r}")


def class_pixel_sums(values, labels, num_classes):
    """Per image and class, the sum of `values` over the pixels of that class: (B, K) float32.

    Equals `einsum("bn,bnk->bk", values, one_hot(labels))` without the (B, N, K) one-hot, which at
    image size is as large as the logits: the class index is split as k = row * cols + col and two
    small one-hots (rows, cols ~ sqrt(K)) are contracted instead, one matmul per image. Labels
    outside [0, K) contribute nothing.

    Args:
        values: (B, H, W) float; labels: (B, H, W) integer.
    """
    cols = math.isqrt(num_classes - 1) + 1 if num_classes > 1 else 1
    rows = -(-num_classes // cols)
    labels = ops.reshape(ops.cast(labels, "int32"), (ops.shape(labels)[0], -1))
    values = ops.reshape(ops.cast(values, "float32"), (ops.shape(labels)[0], -1))
    valid = labels_in_range(labels, num_classes)
    row = ops.where(valid, labels // cols, rows)  # `rows` matches no one-hot column: a zero row
    col = ops.where(valid, labels % cols, 0)
    row_hot = ops.cast(ops.equal(row[..., None], ops.arange(rows, dtype="int32")), "float32")
    col_hot = ops.cast(ops.equal(col[..., None], ops.arange(cols, dtype="int32")), "float32")
    sums = ops.einsum("bnr,bnc->brc", row_hot * values[..., None], col_hot)
    return ops.reshape(sums, (ops.shape(sums)[0], rows * cols))[:, :num_classes]


def class_pixel_counts(labels, num_classes):
    """(B, K) float32 number of pixels of each class in each image (labels outside [0, K) ignored)."""
    return class_pixel_sums(ops.ones(ops.shape(labels), dtype="float32"), labels, num_classes)


def dice_loss(logits, labels, class_counts=None, picked=None):
    """Sigmoid dice over every (image, class present in that image) pair, averaged over the pairs.

    For each pair: p = sigmoid(logit_k), t = [label == k] (ignored pixels are negatives),
    d = 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1). Returns 0 when no image has a labelled pixel.
    No image-size one-hot: sum(p t) sums sigmoid(logit at the pixel's label) per class.

    Args:
        logits: (B, H, W, K) at the labels' resolution; labels: (B, H, W).
        class_counts: optional `class_pixel_counts(labels, K)` (sum(t)), to share between losses.
        picked: optional (B, H, W) logit at each pixel's label (see `pixel_cross_entropy`).
    """
    logits = ops.cast(logits, "float32")
    num_classes = logits.shape[-1]
    valid = valid_label_mask(labels, num_classes)
    picked = label_logits(logits, labels) if picked is None else ops.cast(picked, "float32")
    intersection = class_pixel_sums(ops.sigmoid(picked) * valid, labels, num_classes)  # (B, K)
    target_sum = class_pixel_counts(labels, num_classes) if class_counts is None else class_counts
    prob_sum = ops.sum(ops.sigmoid(logits), axis=(1, 2))
    dice = 1.0 - (2.0 * intersection + 1.0) / (prob_sum + target_sum + 1.0)
    present = ops.cast(target_sum > 0, "float32")
    return ops.sum(dice * present) / ops.maximum(ops.sum(present), 1.0)
