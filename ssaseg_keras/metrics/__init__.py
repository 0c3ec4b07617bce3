"""Segmentation metrics (backend-agnostic, `keras.ops` only)."""

from ssaseg_keras.metrics.segmentation import SegmentationMetrics, metrics_from_confusion

__all__ = ["SegmentationMetrics", "metrics_from_confusion"]
