"""Activations the reference models use that Keras spells differently (keras.ops only)."""

from __future__ import annotations

from keras import ops


def h_sigmoid(x):
    """The hard sigmoid of MobileNetV3 and the reference's lightweight heads: relu6(x + 3) / 6."""
    return ops.relu6(x + 3.0) / 6.0


def hardswish(x):
    """torch's Hardswish: x * relu6(x + 3) / 6."""
    return x * h_sigmoid(x)
