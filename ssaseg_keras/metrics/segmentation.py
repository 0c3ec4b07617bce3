"""A streaming confusion-matrix metric: mIoU, mAcc, aAcc and per-class IoU/Acc as mmsegmentation.

Rows of the confusion matrix are labels, columns predictions. Labels equal to `ignore_index` or
outside [0, num_classes) are left out. A class's IoU is NaN when it is absent from both labels and
predictions, its accuracy NaN when absent from the labels; means skip NaNs (mmseg's nanmean).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ssaseg_keras.ops.resize import resize_logits
from ssaseg_keras.utils.conventions import IGNORE_INDEX
from ssaseg_keras.utils.distribution import to_host


def metrics_from_confusion(confusion, class_names=None):
    """confusion (K, K) counts (rows labels, columns predictions) -> dict of numpy values:
    "mIoU", "mAcc", "aAcc" (floats, NaN when nothing was counted), "IoU", "Acc" (K,) with NaN for
    classes that do not count, and "class_names" when given."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    label_area = cm.sum(axis=1)
    pred_area = cm.sum(axis=0)
    union = label_area + pred_area - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(label_area > 0, tp / label_area, np.nan)
        total = label_area.sum()
        out = {
            "mIoU": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
            "mAcc": float(np.nanmean(acc)) if np.any(label_area > 0) else float("nan"),
            "aAcc": float(tp.sum() / total) if total > 0 else float("nan"),
            "IoU": iou,
            "Acc": acc,
        }
    if class_names is not None:
        out["class_names"] = list(class_names)
    return out


def confusion_counts(labels, predictions, num_classes):
    """(K, K) int64 counts (rows labels, columns predictions) of int arrays of one shape, on the
    host; labels outside [0, K) (255 = ignore) are left out, as `SegmentationMetrics` does.

    The evaluation loop streams these (int64, whatever the split's size) and adds them over
    PyTorch ranks (`utils.distribution.host_sum`); `SegmentationMetrics` is the same count as a
    Keras metric, on the device, for `compile(metrics=...)`."""
    labels = np.asarray(labels).reshape(-1).astype("int64")
    predictions = np.asarray(predictions).reshape(-1).astype("int64")
    valid = (labels >= 0) & (labels < num_classes) & (predictions >= 0) & (predictions < num_classes)
    cells = labels[valid] * num_classes + predictions[valid]
    return np.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class SegmentationMetrics(keras.metrics.Metric):
    """Streaming confusion matrix over pixels; `result()` is the mIoU.

    update_state(y_true, y_pred):
        y_true: int labels (B, H, W) (or (B, H, W, 1)), 255 / out-of-range = ignore.
        y_pred: class ids (B, H, W), or logits (B, h, w, K) (channels last), resized bilinearly
            (half-pixel centres) to (H, W) when their size differs, then arg-maxed. A dict is read
            at key "logits".
        sample_weight: optional (B, H, W) or broadcastable; pixels with weight <= 0 are left out.
    `results()` gives the full dict of `metrics_from_confusion` as numpy (call it eagerly).
    Counts are int32 (exact up to 2**31 pixels per cell).
    """

    def __init__(
        self,
        num_classes,
        ignore_index=IGNORE_INDEX,
        class_names=None,
        name="mean_iou",
        dtype="float32",
        **kwargs,
    ):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = list(class_names) if class_names is not None else None
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype="int32",
            name="confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        k = self.num_classes
        if isinstance(y_pred, dict):
            y_pred = y_pred["logits"]
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_true.shape) == 4 and y_true.shape[-1] == 1:
            y_true = y_true[..., 0]
        y_true = ops.cast(y_true, "int32")
        if len(y_pred.shape) == len(y_true.shape) + 1:  # logits
            pred_size, true_size = tuple(y_pred.shape[1:3]), tuple(y_true.shape[1:3])
            if None in pred_size + true_size or pred_size != true_size:
                y_pred = resize_logits(
                    ops.cast(y_pred, "float32"), ops.shape(y_true)[1], ops.shape(y_true)[2]
                )
            y_pred = ops.argmax(y_pred, axis=-1)
        y_pred = ops.cast(y_pred, "int32")
        valid = (y_true >= 0) & (y_true < k) & (y_pred >= 0) & (y_pred < k)
        if sample_weight is not None:
            weight = ops.convert_to_tensor(sample_weight)
            valid = valid & ops.broadcast_to(weight > 0, ops.shape(valid))
        cell = ops.reshape(ops.where(valid, y_true * k + y_pred, k * k), (-1,))  # k*k: left out
        counts = ops.segment_sum(ops.ones_like(cell), cell, num_segments=k * k + 1)
        self.confusion.assign_add(ops.reshape(counts[: k * k], (k, k)))

    def result(self):
        cm = ops.cast(self.confusion, "float32")
        tp = ops.diagonal(cm)
        union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - tp
        present = union > 0
        iou = tp / ops.maximum(union, 1.0)
        count = ops.sum(ops.cast(present, "float32"))
        return ops.sum(ops.where(present, iou, 0.0)) / ops.maximum(count, 1.0)

    def results(self):
        """mIoU, mAcc, aAcc, per-class IoU/Acc (numpy; see `metrics_from_confusion`)."""
        return metrics_from_confusion(to_host(self.confusion), self.class_names)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            class_names=self.class_names,
        )
        return config
