"""SegmentationMetrics (streaming confusion matrix) against hand-computed values, on the current backend."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import to_numpy

from ssaseg_keras.metrics import SegmentationMetrics, metrics_from_confusion

# 2x3 labels / predictions, 3 classes; 255 is ignored. Valid (label, pred) pairs:
# (0,0) (0,1) (1,1) (1,1) (2,1)  -> confusion rows [1,1,0] [0,2,0] [0,1,0]
LABELS = np.array([[[0, 0, 1], [1, 2, 255]]], np.int32)
PREDS = np.array([[[0, 1, 1], [1, 1, 0]]], np.int32)
CONFUSION = np.array([[1, 1, 0], [0, 2, 0], [0, 1, 0]])
# IoU: class0 1/(2+1-1)=0.5, class1 2/(2+4-2)=0.5, class2 0/(1+0-0)=0; Acc: 1/2, 2/2, 0/1


def test_hand_computed_example():
    metric = SegmentationMetrics(num_classes=3)
    metric.update_state(LABELS, PREDS)
    np.testing.assert_array_equal(to_numpy(metric.confusion.value), CONFUSION)
    assert float(to_numpy(metric.result())) == pytest.approx(1 / 3)
    res = metric.results()
    np.testing.assert_allclose(res["IoU"], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(res["Acc"], [0.5, 1.0, 0.0])
    assert res["mIoU"] == pytest.approx(1 / 3)
    assert res["mAcc"] == pytest.approx(0.5)
    assert res["aAcc"] == pytest.approx(3 / 5)


def test_absent_classes_are_left_out_of_the_means():
    # Class 3 absent from labels and predictions: NaN, not counted. Out-of-range label 7 is ignored.
    labels = np.concatenate([LABELS, np.array([[[7, 7, 7], [255, 255, 255]]], np.int32)])
    preds = np.concatenate([PREDS, np.array([[[3, 3, 3], [3, 3, 3]]], np.int32)])
    metric = SegmentationMetrics(num_classes=4)
    metric.update_state(labels, preds)
    res = metric.results()
    assert np.isnan(res["IoU"][3]) and np.isnan(res["Acc"][3])
    assert res["mIoU"] == pytest.approx(1 / 3)
    assert float(to_numpy(metric.result())) == pytest.approx(1 / 3)
    # Class 3 predicted where label 0: IoU 0 counts in mIoU, Acc stays NaN (no labels of class 3).
    metric.update_state(np.array([[[0]]], np.int32), np.array([[[3]]], np.int32))
    res = metric.results()
    assert res["IoU"][3] == 0.0 and np.isnan(res["Acc"][3])
    # class0: tp 1, label 3, pred 1 -> 1/3; class1: 2/4; class2: 0; class3: 0 -> mean 0.2083
    assert res["mIoU"] == pytest.approx((1 / 3 + 0.5 + 0 + 0) / 4)
    assert res["mAcc"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert res["aAcc"] == pytest.approx(3 / 6)


def test_streaming_reset_and_logits():
    metric = SegmentationMetrics(num_classes=3)
    logits = np.eye(3, dtype=np.float32)[PREDS] * 5.0  # (1, 2, 3, 3)
    metric.update_state(LABELS, logits)
    metric.update_state(LABELS, PREDS)
    np.testing.assert_array_equal(to_numpy(metric.confusion.value), 2 * CONFUSION)
    metric.reset_state()
    assert to_numpy(metric.confusion.value).sum() == 0
    assert float(to_numpy(metric.result())) == 0.0


def test_low_resolution_logits_are_resized_to_the_labels():
    # A 2x2 one-hot map upsampled x2 (bilinear, half-pixel) gives its four 2x2 quadrants.
    coarse = np.array([[[0, 1], [2, 1]]])
    logits = np.eye(3, dtype=np.float32)[coarse]
    labels = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2).astype(np.int32)
    labels[0, 0, 0] = 1  # one error: label 1 predicted 0
    metric = SegmentationMetrics(num_classes=3)
    metric.update_state(labels, logits)
    cm = to_numpy(metric.confusion.value)
    np.testing.assert_array_equal(cm, [[3, 0, 0], [1, 8, 0], [0, 0, 4]])


def test_metrics_from_confusion_nothing_counted():
    res = metrics_from_confusion(np.zeros((2, 2)))
    assert np.isnan(res["mIoU"]) and np.isnan(res["aAcc"]) and np.isnan(res["mAcc"])


def test_in_compiled_evaluate():
    """Inside the backend's compiled evaluate step (jit on JAX, tf.function on TF)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(6, 8, 8)).astype(np.int32)
    labels[:, :2] = 255
    preds = np.where(rng.random((6, 8, 8)) < 0.7, labels % 4, rng.integers(0, 4, (6, 8, 8)))
    logits = np.eye(4, dtype=np.float32)[preds]
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, keras.layers.Activation("linear")(inputs))
    model.compile(
        metrics=[SegmentationMetrics(num_classes=4)], loss=lambda y, p: keras.ops.mean(p) * 0.0
    )
    out = model.evaluate(logits, labels, batch_size=4, return_dict=True, verbose=0)
    valid = labels != 255
    cm = np.zeros((4, 4), np.int64)
    np.add.at(cm, (labels[valid], preds[valid]), 1)
    assert out["mean_iou"] == pytest.approx(metrics_from_confusion(cm)["mIoU"], abs=1e-6)


def test_resize_logits_matches_the_reference_bilinear():
    from ssaseg_keras.metrics.segmentation import resize_logits
    from ssaseg_keras.ops import resize_bilinear

    x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
    for size in [(10, 14), (3, 4)]:
        np.testing.assert_allclose(
            to_numpy(resize_logits(x, *size)), to_numpy(resize_bilinear(x, size)), atol=1e-5
        )


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="backend: unknown sizes exist only in TF graphs"
)
def test_unknown_sizes_in_a_tf_graph():
    import tensorflow as tf

    metric = SegmentationMetrics(num_classes=3)
    spec = [tf.TensorSpec([1, None, None], tf.int32), tf.TensorSpec([1, None, None, 3], tf.float32)]
    update = tf.function(metric.update_state, input_signature=spec)
    coarse = np.array([[[0, 1], [2, 1]]])
    update(
        np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2).astype(np.int32),
        np.eye(3, dtype=np.float32)[coarse],
    )
    np.testing.assert_array_equal(
        to_numpy(metric.confusion.value), [[4, 0, 0], [0, 8, 0], [0, 0, 4]]
    )


def test_host_confusion_counts_equal_the_metric():
    """The evaluation loop's host counts and the Keras metric count the same pixels the same way
    (ignore label and out-of-range labels left out)."""
    from ssaseg_keras.metrics.segmentation import confusion_counts

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, size=(2, 9, 11)).astype("int32")
    labels[0, :2] = 255
    labels[1, 3] = 7  # out of range for 6 classes
    predictions = rng.integers(0, 6, size=(2, 9, 11)).astype("int32")
    metric = SegmentationMetrics(6)
    metric.update_state(labels, predictions)
    counts = confusion_counts(labels, predictions, 6)
    np.testing.assert_array_equal(counts, keras.ops.convert_to_numpy(metric.confusion))
    assert counts.sum() == 2 * 9 * 11 - 2 * 11 - 11
