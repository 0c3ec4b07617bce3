"""Pixel-wise segmentation losses with an ignore label (keras.ops only, float32 throughout).

Labels outside [0, num_classes) -- 255 in particular -- are ignored: they never index a tensor, so a
stray label value cannot crash a loss on any backend (the data pipeline reports them instead).
"""

from __future__ import annotations

from keras import ops

IGNORE_INDEX = 255
# mmseg 0.30 divides a mean over non-ignored pixels by (count + float32 eps).
FLOAT32_EPS = 1.1920928955078125e-07


def valid_label_mask(labels, num_classes):
    """float32 mask, 1 where 0 <= label < num_classes."""
    labels = ops.cast(labels, "int32")
    return ops.cast(ops.logical_and(labels >= 0, labels < num_classes), "float32")


def label_one_hot(labels, num_classes):
    """(...,) integer labels -> (..., K) float32 one-hot; ignored labels give all-zero rows."""
    labels = ops.cast(labels, "int32")[..., None]
    return ops.cast(ops.equal(labels, ops.arange(num_classes, dtype="int32")), "float32")


def pixel_cross_entropy(logits, labels):
    """Per-pixel softmax cross-entropy, 0 at ignored pixels.

    Args:
        logits: (B, H, W, K) float logits at the labels' resolution.
        labels: (B, H, W) integer labels.

    Returns:
        (ce, valid): two (B, H, W) float32 tensors.
    """
    logits = ops.cast(logits, "float32")
    num_classes = logits.shape[-1]
    valid = valid_label_mask(labels, num_classes)
    safe = ops.where(valid > 0, ops.cast(labels, "int32"), 0)
    picked = ops.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    ce = ops.logsumexp(logits, axis=-1) - picked
    return ce * valid, valid


def cross_entropy(logits, labels, average="valid"):
    """Mean softmax cross-entropy over pixels, ignoring labels outside [0, K).

    average="valid" divides by the number of non-ignored pixels (mmseg's `avg_non_ignore=True`);
    average="all" divides by every pixel, ignored ones counting as 0 (mmseg 0.30's default).
    """
    ce, valid = pixel_cross_entropy(logits, labels)
    if average == "all":
        return ops.mean(ce)
    if average == "valid":
        return ops.sum(ce) / (ops.sum(valid) + FLOAT32_EPS)
    raise ValueError(f"average must be 'valid' or 'all', got {average!r}")


def dice_loss(logits, labels):
    """Sigmoid dice over every (image, class present in that image) pair, averaged over the pairs.

    For each pair: p = sigmoid(logit_k), t = [label == k] (ignored pixels are negatives),
    d = 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1). Returns 0 when no image has a labelled pixel.

    Args:
        logits: (B, H, W, K) at the labels' resolution; labels: (B, H, W).
    """
    logits = ops.cast(logits, "float32")
    probs = ops.sigmoid(logits)
    target = label_one_hot(labels, logits.shape[-1])
    intersection = ops.sum(probs * target, axis=(1, 2))  # (B, K)
    target_sum = ops.sum(target, axis=(1, 2))
    dice = 1.0 - (2.0 * intersection + 1.0) / (ops.sum(probs, axis=(1, 2)) + target_sum + 1.0)
    present = ops.cast(target_sum > 0, "float32")
    return ops.sum(dice * present) / ops.maximum(ops.sum(present), 1.0)
