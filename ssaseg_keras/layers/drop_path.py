"""Stochastic depth (drop-path) for residual branches, shared by the backbones (MSCAN, MiT)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class DropPath(keras.layers.Layer):
    """Stochastic depth: zero a sample's residual branch with probability `rate` in training.

    Kept samples are scaled by 1 / (1 - rate). Input (B, ...) -> same shape.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # no weights to make (a block may skip calling it when rate is 0)

    def call(self, x, training=False):
        if not training or self.rate <= 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        return x * ops.floor(keep + noise) / keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
