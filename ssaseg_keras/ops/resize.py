"""Resizes that reproduce PyTorch's `F.interpolate` exactly, on every Keras backend.

Bilinear resizing is written as two small interpolation matrices (built once, in NumPy, from the
static shapes) applied with `einsum`: out = A_h @ x @ A_w^T. This gives bit-for-bit the same
sampling positions as torch's `align_corners=False` (half-pixel centres, no antialiasing, clamped
at the border) and `align_corners=True` on TensorFlow, JAX and PyTorch alike, is differentiable,
compiles to matmuls, and works for up- and down-sampling. (`keras.ops.image.resize` antialiases
when downsampling on JAX and has no align_corners mode, so it cannot give reference parity.)
"""

from __future__ import annotations

import functools

import numpy as np
from keras import ops


@functools.lru_cache(maxsize=256)
def bilinear_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    """(out_size, in_size) float32 matrix whose rows hold the 1-D linear interpolation weights."""
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        # torch's area_pixel_compute_source_index with cubic=False: clamp negatives to 0.
        scale = in_size / out_size
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    # torch computes the source index in float32; do the same so the weights agree to the last bit.
    src = src.astype(np.float32).astype(np.float64)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lo), 1.0 - frac)
    np.add.at(matrix, (rows, hi), frac)
    return matrix.astype(np.float32)


def resize_bilinear(x, size, align_corners: bool = False):
    """Bilinear resize of a channels-last batch.

    Args:
        x: (B, H, W, C) tensor.
        size: (out_H, out_W), Python ints.
        align_corners: torch's `align_corners` (False = half-pixel centres).

    Returns:
        (B, out_H, out_W, C) tensor in x's dtype (cast logits to float32 first when they feed a
        loss).
    """
    in_h, in_w = int(x.shape[1]), int(x.shape[2])
    out_h, out_w = int(size[0]), int(size[1])
    if (in_h, in_w) == (out_h, out_w):
        return x
    dtype = x.dtype
    rows = ops.convert_to_tensor(bilinear_matrix(in_h, out_h, align_corners), dtype=dtype)
    cols = ops.convert_to_tensor(bilinear_matrix(in_w, out_w, align_corners), dtype=dtype)
    x = ops.einsum("oh,bhwc->bowc", rows, x) if in_h != out_h else x
    x = ops.einsum("pw,bhwc->bhpc", cols, x) if in_w != out_w else x
    return x


def nearest_legacy_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel for torch's legacy `mode='nearest'`: floor(i * in / out)."""
    return np.floor(np.arange(out_size) * (in_size / out_size)).astype(np.int32)


def downsample_labels(labels, size):
    """Pick the top-left label of each block, like torch's legacy nearest interpolation.

    Args:
        labels: (B, Hy, Wy) integer tensor.
        size: (H, W) target size, Python ints.

    Returns:
        (B, H, W) integer tensor with `labels[b, floor(i*Hy/H), floor(j*Wy/W)]`.
    """
    in_h, in_w = int(labels.shape[1]), int(labels.shape[2])
    out_h, out_w = int(size[0]), int(size[1])
    if (in_h, in_w) == (out_h, out_w):
        return labels
    rows = ops.convert_to_tensor(nearest_legacy_indices(in_h, out_h), dtype="int32")
    cols = ops.convert_to_tensor(nearest_legacy_indices(in_w, out_w), dtype="int32")
    labels = ops.take(labels, rows, axis=1)
    return ops.take(labels, cols, axis=2)
