"""Level selection shared by the library-backbone adapters (`KerasHubBackbone`, `KerasCVBackbone`).

A library names its pyramid levels by its own count (keras-hub's MiT calls its stride-4 level `P1`,
keras-cv's EfficientNets count from their stride-2 level), so the adapters measure each level's
stride and keep the levels at strides 4, 8, 16, 32, or check the 4 levels the caller names.
"""

from __future__ import annotations

import math

import keras

from ssaseg_keras.utils.errors import UserError

STAGE_STRIDES = (4, 8, 16, 32)
# Side of the probe image (any side the backbone leaves open) used to measure each level's stride.
STRIDE_PROBE_SIDE = 512


def is_open(image_shape):
    """True for (None, None, C): the caller leaves the size to the backbone."""
    return image_shape[0] is None and image_shape[1] is None


def check_image_shape(name, input_shape, image_shape):
    """Raise a UserError when the caller's `image_shape` (None: any) differs from the built input."""
    input_shape, image_shape = tuple(input_shape), tuple(image_shape)
    fits = len(input_shape) == len(image_shape) and all(
        wanted is None or wanted == actual for wanted, actual in zip(image_shape, input_shape)
    )
    if not fits:
        raise UserError(
            f"model.backbone.image_shape {image_shape} does not fit {name}'s input "
            f"{input_shape}: give image_shape {input_shape} (or None for a side the backbone leaves open)."
        )


def nominal_stride(ratio):
    """Input side / output side as a stride: the nearest power of two when within 10% (a "valid"
    stem shaves a few pixels: 512 / 15 -> 32), else the nearest integer (a ViT's 14)."""
    power = 2 ** round(math.log2(ratio))
    return power if abs(ratio - power) <= 0.1 * power else round(ratio)


def level_strides(image, outputs):
    """{level: stride} of `outputs` ({level: symbolic tensor} computed from the input `image`);
    stride None where the level is not a square-stride NHWC map.

    Measured symbolically (no compute) at the input's size, or at `STRIDE_PROBE_SIDE` for a side the
    input leaves open.
    """
    probe_shape = (1,) + tuple(STRIDE_PROBE_SIDE if side is None else side for side in image.shape[1:3]) + (
        image.shape[-1],
    )
    try:
        shapes = keras.Model(image, outputs).compute_output_spec(keras.KerasTensor(probe_shape))
        shapes = {level: spec.shape for level, spec in shapes.items()}
    except Exception:  # a backbone that cannot trace the probe size: fall back to static shapes
        probe_shape = tuple(image.shape)
        shapes = {level: tensor.shape for level, tensor in outputs.items()}
    strides = {}
    for level, shape in shapes.items():
        stride = None
        if len(shape) == 4 and None not in (probe_shape[1], probe_shape[2], shape[1], shape[2]):
            stride_h = nominal_stride(probe_shape[1] / shape[1])
            if stride_h == nominal_stride(probe_shape[2] / shape[2]):
                stride = stride_h
        strides[level] = stride
    return strides


def describe_levels(strides):
    described = (f"{level} ({f'stride {stride}' if stride else 'no image stride'})" for level, stride in strides.items())
    return ", ".join(described)


def select_levels(name, strides, levels):
    """The 4 level names to expose from backbone `name`'s {level: stride}: `levels` checked, or the
    levels at strides 4, 8, 16, 32."""
    if levels is None:
        by_stride = {stride: level for level, stride in strides.items() if stride is not None}
        missing = [stride for stride in STAGE_STRIDES if stride not in by_stride]
        if missing:
            raise UserError(
                f"model.backbone: {name} has no pyramid level at stride {', '.join(map(str, missing))}; "
                f"its levels: {describe_levels(strides)}. A segmentation backbone needs strides 4, 8, 16, 32."
            )
        return [by_stride[stride] for stride in STAGE_STRIDES]
    levels = [str(level) for level in levels]
    unknown = [level for level in levels if level not in strides]
    if len(levels) != 4 or unknown:
        problem = f"unknown levels {', '.join(unknown)}" if unknown else f"{len(levels)} levels given"
        raise UserError(
            f"model.backbone.levels: {problem}; give 4 of {name}'s levels: {describe_levels(strides)}."
        )
    measured = tuple(strides[level] for level in levels)
    if None not in measured and measured != STAGE_STRIDES:
        raise UserError(
            f"model.backbone.levels {levels} have strides {measured}, the stages need {STAGE_STRIDES}; "
            f"{name}'s levels: {describe_levels(strides)}."
        )
    return levels
