"""Resizes that reproduce PyTorch's `F.interpolate` exactly, on every Keras backend.

Bilinear resizing is written as two small interpolation matrices (built from the static shapes,
constant-folded by the compilers) applied with `einsum`: out = A_h @ x @ A_w^T. This gives bit-for-bit the same
sampling positions as torch's `align_corners=False` (half-pixel centres, no antialiasing, clamped
at the border) and `align_corners=True` on TensorFlow, JAX and PyTorch alike, is differentiable,
compiles to matmuls, and works for up- and down-sampling. (`keras.ops.image.resize` antialiases
when downsampling on JAX and has no align_corners mode, so it cannot give reference parity.)
"""

from __future__ import annotations

import numpy as np
from keras import ops


def _float32_scalar(value):
    """A Python float holding the float32 rounding of value (torch computes its scales in float32)."""
    return float(np.float32(value))


def bilinear_matrix(in_size: int, out_size: int, align_corners: bool):
    """(out_size, in_size) float32 tensor whose rows hold torch's 1-D linear interpolation weights.

    Built from `keras.ops` (not NumPy) so that it traces inside jit / XLA / torch.compile, where
    it is constant-folded.
    """
    dst = ops.cast(ops.arange(out_size), "float32")
    if align_corners:
        scale = _float32_scalar((in_size - 1) / (out_size - 1)) if out_size > 1 else 0.0
        src = dst * scale
    else:
        # torch's area_pixel_compute_source_index with cubic=False: clamp negatives to 0.
        src = ops.maximum((dst + 0.5) * _float32_scalar(in_size / out_size) - 0.5, 0.0)
    lo = ops.minimum(ops.cast(ops.floor(src), "int32"), in_size - 1)
    hi = ops.minimum(lo + 1, in_size - 1)
    frac = (src - ops.cast(lo, "float32"))[:, None]
    columns = ops.arange(in_size, dtype="int32")[None, :]
    lo_weight = ops.cast(ops.equal(lo[:, None], columns), "float32") * (1.0 - frac)
    hi_weight = ops.cast(ops.equal(hi[:, None], columns), "float32") * frac
    return lo_weight + hi_weight


def resize_bilinear(x, size, align_corners: bool = False):
    """Bilinear resize of a channels-last batch.

    Args:
        x: (B, H, W, C) tensor.
        size: (out_H, out_W): Python ints (interpolation matrices), or dynamic sizes
            (e.g. `ops.shape(y)[1:3]` in a graph with unknown sizes; `resize_logits` then).
        align_corners: torch's `align_corners` (False = half-pixel centres).

    Returns:
        (B, out_H, out_W, C) tensor in x's dtype (cast logits to float32 first when they feed a
        loss).
    """
    sizes = (x.shape[1], x.shape[2], size[0], size[1])
    if not all(isinstance(v, (int, np.integer)) for v in sizes):
        # A traced graph with unknown sizes (a SavedModel serving any image size): gathers.
        if align_corners:
            raise ValueError("resize_bilinear: align_corners=True needs static sizes")
        return resize_logits(x, size[0], size[1])
    in_h, in_w, out_h, out_w = (int(v) for v in sizes)
    if (in_h, in_w) == (out_h, out_w):
        return x
    rows = ops.cast(bilinear_matrix(in_h, out_h, align_corners), x.dtype)
    cols = ops.cast(bilinear_matrix(in_w, out_w, align_corners), x.dtype)
    x = ops.einsum("oh,bhwc->bowc", rows, x) if in_h != out_h else x
    x = ops.einsum("pw,bhwc->bhpc", cols, x) if in_w != out_w else x
    return x


def nearest_legacy_indices(in_size: int, out_size: int):
    """int32 source index of each output pixel for torch's legacy `mode='nearest'`:
    floor(i * (in / out)), computed in float32 as torch does."""
    scale = _float32_scalar(in_size / out_size)
    index = ops.cast(ops.floor(ops.cast(ops.arange(out_size), "float32") * scale), "int32")
    return ops.minimum(index, in_size - 1)


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
    labels = ops.take(labels, nearest_legacy_indices(in_h, out_h), axis=1)
    return ops.take(labels, nearest_legacy_indices(in_w, out_w), axis=2)


def _linear_taps(in_size, out_size):
    """Half-pixel-centre source taps (lo, hi int32 (out,), weight of hi float32 (out,)), clamped at
    the borders as torch's `F.interpolate(mode="bilinear", align_corners=False)`."""
    scale = ops.cast(in_size, "float32") / ops.cast(out_size, "float32")
    src = ops.maximum((ops.cast(ops.arange(out_size), "float32") + 0.5) * scale - 0.5, 0.0)
    lo = ops.minimum(ops.cast(ops.floor(src), "int32"), in_size - 1)
    hi = ops.minimum(lo + 1, in_size - 1)
    return lo, hi, src - ops.cast(lo, "float32")


def resize_logits(logits, height, width):
    """Bilinear resize of (B, h, w, K) to (B, height, width, K) with the sampling of
    `resize_bilinear(..., align_corners=False)` (half-pixel centres, no antialias), written as two
    gathers so that every size may be dynamic (TF graphs over images of varying size)."""
    shape = ops.shape(logits)
    lo, hi, frac = _linear_taps(shape[1], height)
    frac = ops.cast(frac, logits.dtype)[None, :, None, None]
    logits = ops.take(logits, lo, axis=1) * (1.0 - frac) + ops.take(logits, hi, axis=1) * frac
    lo, hi, frac = _linear_taps(shape[2], width)
    frac = ops.cast(frac, logits.dtype)[None, None, :, None]
    return ops.take(logits, lo, axis=2) * (1.0 - frac) + ops.take(logits, hi, axis=2) * frac
