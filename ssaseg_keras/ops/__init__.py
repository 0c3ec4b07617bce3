"""Backend-agnostic tensor functions shared by layers, losses and models (keras.ops only)."""

from ssaseg_keras.ops.resize import (
    bilinear_matrix,
    bilinear_taps,
    downsample_labels,
    nearest_legacy_indices,
    resize_bilinear,
    resize_bilinear_at,
    resize_logits,
)

__all__ = [
    "bilinear_matrix",
    "bilinear_taps",
    "downsample_labels",
    "nearest_legacy_indices",
    "resize_bilinear",
    "resize_bilinear_at",
    "resize_logits",
]
