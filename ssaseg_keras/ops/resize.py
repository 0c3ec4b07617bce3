"""Resizes that reproduce PyTorch's `F.interpolate` exactly, on every Keras backend.

Bilinear resizing is written as two small interpolation matrices (built from the static shapes,
constant-folded by the compilers) applied as matmuls: out = A_h @ x @ A_w^T (method "banded": when
upsampling, only the band of A around its diagonal, `interpolation_band`). This gives bit-for-bit the same
sampling positions as torch's `align_corners=False` (half-pixel centres, no antialiasing, clamped
at the border) and `align_corners=True` on TensorFlow, JAX and PyTorch alike, is differentiable,
compiles to matmuls, and works for up- and down-sampling. (`keras.ops.image.resize` antialiases
when downsampling on JAX and has no align_corners mode, so it cannot give reference parity.)
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops


def _float32_scalar(value):
    """A Python float holding the float32 rounding of value (torch computes its scales in float32)."""
    return float(np.float32(value))


def _is_static(*sizes):
    return all(isinstance(v, (int, np.integer)) for v in sizes)


def bilinear_taps(in_size, out_size, align_corners: bool):
    """torch's 1-D linear interpolation taps: (lo, hi) int32 (out_size,) source indices and the
    weight of `hi`, float32 (out_size,); output i = (1 - w) x[lo] + w x[hi].

    Sizes are Python ints (the taps are then constant-folded inside jit / XLA / torch.compile), or,
    with `align_corners=False`, scalar tensors (graphs over images of unknown size). The half-pixel
    scale is in / out in float32 as torch computes it; from Python ints it is the float64 quotient
    rounded to float32, which is the same number (double rounding is exact for a division at these
    precisions).
    """
    dst = ops.cast(ops.arange(out_size), "float32")
    if align_corners:
        if not _is_static(in_size, out_size):
            raise ValueError("bilinear_taps: align_corners=True needs static sizes")
        scale = _float32_scalar((in_size - 1) / (out_size - 1)) if out_size > 1 else 0.0
        src = dst * scale
    else:
        if _is_static(in_size, out_size):
            scale = _float32_scalar(in_size / out_size)
        else:
            scale = ops.cast(in_size, "float32") / ops.cast(out_size, "float32")
        # torch's area_pixel_compute_source_index with cubic=False: clamp negatives to 0.
        src = ops.maximum((dst + 0.5) * scale - 0.5, 0.0)
    lo = ops.minimum(ops.cast(ops.floor(src), "int32"), in_size - 1)
    hi = ops.minimum(lo + 1, in_size - 1)
    return lo, hi, src - ops.cast(lo, "float32")


def bilinear_matrix(in_size: int, out_size: int, align_corners: bool):
    """(out_size, in_size) float32 tensor whose rows hold torch's 1-D linear interpolation weights."""
    lo, hi, frac = bilinear_taps(in_size, out_size, align_corners)
    frac = frac[:, None]
    columns = ops.arange(in_size, dtype="int32")[None, :]
    lo_weight = ops.cast(ops.equal(lo[:, None], columns), "float32") * (1.0 - frac)
    hi_weight = ops.cast(ops.equal(hi[:, None], columns), "float32") * frac
    return lo_weight + hi_weight


RESIZE_METHODS = ("matmul", "banded", "gather")


def resize_bilinear(x, size, align_corners: bool = False, method: str = "matmul"):
    """Bilinear resize of a channels-last batch.

    Args:
        x: (B, H, W, C) tensor.
        size: (out_H, out_W): Python ints, or dynamic sizes (e.g. `ops.shape(y)[1:3]` in a graph
            with unknown sizes; `resize_logits` then, whatever the method).
        align_corners: torch's `align_corners` (False = half-pixel centres).
        method: "matmul" (per axis, one dense matmul with the interpolation matrix: in_size
            multiply-adds per output value, no extra memory), "banded" (when upsampling, the matrix
            cut into bands of a few input rows, `interpolation_band`: ~3 multiply-adds per output
            value, but the gathered windows hold ~3x the input to each matmul: faster on CPU, more
            memory) or "gather" (two taps per axis: element-wise ops that a compiler may fuse into
            the consumer). The same sampling; see BENCHMARKS.md.

    Returns:
        (B, out_H, out_W, C) tensor in x's dtype (cast logits to float32 first when they feed a
        loss).
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize_bilinear: method={method!r}, expected one of {RESIZE_METHODS}")
    if not _is_static(x.shape[1], x.shape[2], size[0], size[1]):
        # A traced graph with unknown sizes (a SavedModel serving any image size): gathers.
        if align_corners:
            raise ValueError("resize_bilinear: align_corners=True needs static sizes")
        return resize_logits(x, size[0], size[1])
    in_h, in_w, out_h, out_w = int(x.shape[1]), int(x.shape[2]), int(size[0]), int(size[1])
    if (in_h, in_w) == (out_h, out_w):
        return x
    if method == "gather":
        return _resize_by_taps(x, (in_h, in_w), (out_h, out_w), align_corners)
    # Each axis is one broadcast matmul over a contiguous (B, in, W*C) view. The width axis needs the
    # tensor transposed; transpose where it is smaller: before the height axis when upsampling (so
    # an image-size tensor is never transposed or copied), after it when downsampling.
    width_first = in_h <= out_h
    banded = method == "banded"
    if width_first and in_w != out_w:
        x = _resize_width(x, in_w, out_w, align_corners, banded)
    if in_h != out_h:
        x = _resize_height(x, in_h, out_h, align_corners, banded)
    if not width_first and in_w != out_w:
        x = _resize_width(x, in_w, out_w, align_corners, banded)
    return x


def _resize_by_taps(x, in_size, out_size, align_corners):
    """The bilinear resize as two taps per axis (width first: the smaller intermediate when
    upsampling); sizes as `bilinear_taps` takes them."""
    x = _interpolate_axis(x, 2, *bilinear_taps(in_size[1], out_size[1], align_corners))
    return _interpolate_axis(x, 1, *bilinear_taps(in_size[0], out_size[0], align_corners))


def _interpolate_axis(x, axis, lo, hi, frac):
    """(1 - frac) x[lo] + frac x[hi] along `axis` (1 or 2) of a (B, H, W, C) tensor."""
    frac = ops.cast(frac, x.dtype)
    frac = frac[None, :, None, None] if axis == 1 else frac[None, None, :, None]
    return ops.take(x, lo, axis=axis) * (1.0 - frac) + ops.take(x, hi, axis=axis) * frac


def _source_position(index: int, in_size: int, out_size: int, align_corners: bool) -> float:
    """Where output row `index` samples the input, in float64 (`bilinear_taps` computes it in float32)."""
    if align_corners:
        return index * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return max((index + 0.5) * in_size / out_size - 0.5, 0.0)


def interpolation_band(in_size: int, out_size: int, align_corners: bool):
    """How upsampling one axis cuts its interpolation matrix into bands, or None where the dense
    matmul is as cheap (downsampling, small factors).

    Output rows are taken in blocks of `block` consecutive rows; the taps of block j fall in the
    `window` input rows from `starts[j]`. The positions are computed here in float64 and widened by
    `margin` (1e-6 per input row: over ten times the float32 rounding of `bilinear_taps`' positions), so
    a tap whose float32 position rounds across an integer is still inside (tested against torch's
    interpolation matrices for every upsampling of 2..48 rows). Upsampling by r then costs ~`window` (2-3)
    multiply-adds per output value instead of the dense matmul's in_size (32 at 32 -> 256); the band's
    weights are the dense matrix's own entries, so the sums are the same. Python ints only, computed
    from the static sizes: nothing here runs on the device (and torch.compile traces it as constants).

    Returns:
        (block, window, starts) with starts a tuple of `out_size // block` ints, or None.
    """
    if out_size <= in_size or in_size < 2:
        return None
    ratio = -(-out_size // in_size)
    block = max(d for d in range(1, ratio + 1) if out_size % d == 0)
    margin = 1e-6 * (in_size + 1)  # float32 positions: a few roundings of values below in_size
    firsts, lasts = [], []
    for first_row in range(0, out_size, block):
        low = math.floor(_source_position(first_row, in_size, out_size, align_corners) - margin)
        high = math.floor(_source_position(first_row + block - 1, in_size, out_size, align_corners) + margin) + 1
        firsts.append(max(low, 0))
        lasts.append(min(high, in_size - 1))
    window = max(last - first for first, last in zip(firsts, lasts)) + 1
    blocks = out_size // block
    # Dense: out * in multiply-adds per column; banded: out * window, plus gathering the windows.
    if out_size * window + blocks * window >= out_size * in_size // 2:
        return None
    return block, window, tuple(min(first, in_size - window) for first in firsts)


def _resize_height(x, in_size, out_size, align_corners, banded=False):
    """(B, H, W, C) -> (B, out, W, C) along the height axis, as matmuls over the contiguous
    (B, H, W*C) view (no transpose, no copy of x): with `banded`, by bands where upsampling
    (`interpolation_band`), else one dense (out, H) interpolation matrix."""
    width, channels = x.shape[2], x.shape[3]
    flat = ops.reshape(x, (-1, in_size, width * channels))
    matrix = ops.cast(bilinear_matrix(in_size, out_size, align_corners), x.dtype)
    band = interpolation_band(in_size, out_size, align_corners) if banded else None
    if band is None:
        return ops.reshape(ops.matmul(matrix, flat), (-1, out_size, width, channels))
    block, window, starts = band
    blocks = len(starts)
    # index[j, t] = starts[j] + t: the window of block j. Its weights are the dense matrix's entries
    # there, (blocks, block, window); the zeros around the two taps of each row add nothing.
    index = ops.convert_to_tensor(starts, dtype="int32")[:, None] + ops.arange(window, dtype="int32")[None, :]
    per_block = ops.reshape(matrix, (blocks, block, in_size))
    weights = ops.take_along_axis(per_block, ops.broadcast_to(index[:, None, :], (blocks, block, window)), axis=2)
    windows = ops.reshape(ops.take(flat, ops.reshape(index, (-1,)), axis=1), (-1, blocks, window, width * channels))
    out = ops.matmul(weights, windows)  # (B, blocks, block, W*C)
    return ops.reshape(out, (-1, out_size, width, channels))


def _resize_width(x, in_size, out_size, align_corners, banded=False):
    """(B, H, W, C) -> (B, H, out, C): `_resize_height` between two transposes of H and W."""
    swapped = ops.transpose(x, (0, 2, 1, 3))
    return ops.transpose(_resize_height(swapped, in_size, out_size, align_corners, banded), (0, 2, 1, 3))


def resize_bilinear_at(x, channel, size, align_corners: bool = False):
    """One channel per output pixel of `resize_bilinear(x, size, align_corners)`, without the resize.

    Returns (B, out_H, out_W) with `resize_bilinear(x, size, align_corners)[b, i, j, channel[b, i, j]]`,
    interpolated from the four source pixels of x at that channel. A loss that needs the logit of
    each pixel's label reads it here: gathering it from the image-size logits would make the gradient
    an image-size scatter into zeros; this one scatters into x's (small) size.

    Args:
        x: (B, H, W, C); channel: (B, out_H, out_W) integer in [0, C) (clamp ignored labels first);
        size: (out_H, out_W) Python ints.
    """
    in_h, in_w, channels = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    out_h, out_w = int(size[0]), int(size[1])
    top, bottom, down = bilinear_taps(in_h, out_h, align_corners)
    left, right, across = bilinear_taps(in_w, out_w, align_corners)
    flat = ops.reshape(x, (-1,))
    image_size = in_h * in_w * channels
    channel = ops.reshape(ops.cast(channel, "int32"), (-1, out_h * out_w))
    channel = channel + ops.arange(ops.shape(channel)[0], dtype="int32")[:, None] * image_size

    def tap(rows, cols):
        offset = ops.reshape((rows[:, None] * in_w + cols[None, :]) * channels, (1, out_h * out_w))
        return ops.take(flat, offset + channel, axis=0)

    down = ops.reshape(ops.cast(ops.broadcast_to(down[:, None], (out_h, out_w)), x.dtype), (1, -1))
    across = ops.reshape(ops.cast(ops.broadcast_to(across[None, :], (out_h, out_w)), x.dtype), (1, -1))
    upper = tap(top, left) * (1.0 - across) + tap(top, right) * across
    lower = tap(bottom, left) * (1.0 - across) + tap(bottom, right) * across
    return ops.reshape(upper * (1.0 - down) + lower * down, (-1, out_h, out_w))


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


def resize_logits(logits, height, width):
    """Bilinear resize of (B, h, w, K) to (B, height, width, K) with the sampling of
    `resize_bilinear(..., align_corners=False)` (half-pixel centres, no antialias), written as
    gathers so that every size may be dynamic (TF graphs over images of varying size)."""
    shape = ops.shape(logits)
    return _resize_by_taps(logits, (shape[1], shape[2]), (height, width), align_corners=False)
