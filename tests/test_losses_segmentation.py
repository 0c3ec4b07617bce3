"""The pixel losses' building blocks against direct NumPy formulas (ignore labels included)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy, value_and_grad

from ssaseg_keras.losses.segmentation import class_pixel_counts, class_pixel_sums, dice_loss


def labels_with_ignores(shape, num_classes, seed=0):
    """Labels in [0, K) with 255, -1 and values just above K mixed in (all must be ignored)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=shape).astype("int32")
    spoil = rng.random(shape)
    labels[spoil < 0.05] = 255
    labels[(spoil >= 0.05) & (spoil < 0.08)] = -1
    labels[(spoil >= 0.08) & (spoil < 0.11)] = num_classes + 1  # inside the factored padding
    return labels


def one_hot_sums(values, labels, num_classes):
    onehot = labels[..., None] == np.arange(num_classes)
    return np.einsum("bhw,bhwk->bk", values.astype("float64"), onehot)


@pytest.mark.parametrize("num_classes", [1, 2, 7, 16, 171])
def test_class_pixel_sums_equal_one_hot_sums(num_classes):
    labels = labels_with_ignores((2, 9, 13), num_classes)
    values = np.random.default_rng(1).random((2, 9, 13)).astype("float32")
    got = to_numpy(class_pixel_sums(values, labels, num_classes))
    assert got.shape == (2, num_classes)
    np.testing.assert_allclose(got, one_hot_sums(values, labels, num_classes), rtol=1e-5, atol=1e-5)
    counts = to_numpy(class_pixel_counts(labels, num_classes))
    np.testing.assert_array_equal(counts, one_hot_sums(np.ones_like(values), labels, num_classes))


def numpy_dice(logits, labels):
    probs = 1.0 / (1.0 + np.exp(-logits.astype("float64")))
    onehot = (labels[..., None] == np.arange(logits.shape[-1])).astype("float64")
    intersection = (probs * onehot).sum(axis=(1, 2))
    target = onehot.sum(axis=(1, 2))
    dice = 1.0 - (2.0 * intersection + 1.0) / (probs.sum(axis=(1, 2)) + target + 1.0)
    present = target > 0
    return (dice * present).sum() / max(present.sum(), 1)


def test_dice_loss_equals_the_one_hot_formula_and_its_gradient_flows():
    num_classes = 11
    labels = labels_with_ignores((2, 12, 10), num_classes, seed=3)
    logits = np.random.default_rng(4).normal(0, 2, (2, 12, 10, num_classes)).astype("float32")
    value, grad = value_and_grad(lambda x: dice_loss(x, labels), logits)
    np.testing.assert_allclose(value, numpy_dice(logits, labels), rtol=1e-5)
    shared = to_numpy(dice_loss(logits, labels, class_pixel_counts(labels, num_classes)))
    np.testing.assert_allclose(shared, value, rtol=1e-6)
    # Finite difference of one logit at a labelled pixel (it enters both sum(p) and sum(p t)).
    b, i, j = np.argwhere((labels >= 0) & (labels < num_classes))[0]
    k, eps = labels[b, i, j], 1e-2
    bumped = logits.copy()
    bumped[b, i, j, k] += eps
    lowered = logits.copy()
    lowered[b, i, j, k] -= eps
    numeric = (numpy_dice(bumped, labels) - numpy_dice(lowered, labels)) / (2 * eps)
    np.testing.assert_allclose(grad[b, i, j, k], numeric, rtol=1e-3, atol=1e-7)
    assert np.all(grad[labels == 255] != 0)  # ignored pixels still count as negatives in sum(p)
