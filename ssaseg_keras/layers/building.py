"""Small helpers for layers that build their sublayers eagerly in `build` from known input shapes."""

from __future__ import annotations


def built(layer, shape):
    """`layer` after `layer.build(shape)`: one expression where a sublayer is made and built."""
    layer.build(tuple(shape))
    return layer


def with_channels(shape, channels):
    """`shape` (a tuple ending in channels) with its last entry replaced by `channels`."""
    return tuple(shape[:-1]) + (int(channels),)
