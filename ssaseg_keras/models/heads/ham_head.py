"""SegNeXt's LightHamHead: multi-level features -> squeeze -> Hamburger (NMF) -> align = F.

    stages 2-4 --resize to stage 2 (bilinear, half-pixel)--> concat --squeeze (1x1+GN+ReLU)-->
    Hamburger --align (1x1+GN+ReLU)--> F (B, H/8, W/8, channels)

Hamburger: h = ReLU(ham_in(x)) (1x1 with bias); h = NMF(h); h = GN(ham_out(h)); out = ReLU(x + h).

NMF factorises each image's non-negative features X (C, N = H*W) as B coef^T with rank R. The
bases B (C, R) are drawn uniform in [0, 1) at EVERY call from the layer's seeded generator and
L2-normalised over C; coef = softmax_R(X^T B); then 6 (training) or 7 (inference) multiplicative
updates of coef and B, a last coef update, and the output B coef^T. It runs in float32 and
gradients flow through every step.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.models.heads.common import ConvNormAct, resize_concat

NMF_EPS = 1e-6
NORMALIZE_EPS = 1e-12


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class NMF2D(keras.layers.Layer):
    """Matrix decomposition by non-negative matrix factorisation. (B, H, W, C) -> (B, H, W, C) float32.

    Args:
        rank: R, the number of bases.
        train_steps / eval_steps: multiplicative-update iterations in training / inference.
        seed: seed of the bases generator (None: random).
    """

    def __init__(self, rank=64, train_steps=6, eval_steps=7, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rank = int(rank)
        self.train_steps = int(train_steps)
        self.eval_steps = int(eval_steps)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def random_bases(self, batch, channels):
        """Fresh bases (B, C, R), uniform [0, 1) then L2-normalised over C."""
        bases = keras.random.uniform((batch, channels, self.rank), seed=self.seed_generator)
        norm = ops.sqrt(ops.sum(ops.square(bases), axis=1, keepdims=True))
        return bases / ops.maximum(norm, NORMALIZE_EPS)

    @staticmethod
    def update_coef(x, bases, coef):
        """coef *= (X^T B) / (coef B^T B + eps); x (B, N, C), bases (B, C, R), coef (B, N, R)."""
        numerator = ops.matmul(x, bases)
        denominator = ops.matmul(coef, ops.matmul(ops.transpose(bases, (0, 2, 1)), bases))
        return coef * numerator / (denominator + NMF_EPS)

    @staticmethod
    def update_bases(x, bases, coef):
        """bases *= (X coef) / (B coef^T coef + eps)."""
        numerator = ops.matmul(ops.transpose(x, (0, 2, 1)), coef)
        denominator = ops.matmul(bases, ops.matmul(ops.transpose(coef, (0, 2, 1)), coef))
        return bases * numerator / (denominator + NMF_EPS)

    def call(self, inputs, training=False):
        shape = ops.shape(inputs)
        channels = inputs.shape[-1]
        x = ops.reshape(ops.cast(inputs, "float32"), (shape[0], -1, channels))  # (B, N, C)
        bases = self.random_bases(shape[0], channels)
        coef = ops.softmax(ops.matmul(x, bases), axis=-1)  # (B, N, R)
        for _ in range(self.train_steps if training else self.eval_steps):
            coef = self.update_coef(x, bases, coef)
            bases = self.update_bases(x, bases, coef)
        coef = self.update_coef(x, bases, coef)
        out = ops.matmul(coef, ops.transpose(bases, (0, 2, 1)))  # (B, N, C) = (B coef^T)^T
        return ops.reshape(out, shape)

    def compute_output_spec(self, inputs, training=False):
        return keras.KerasTensor(inputs.shape, dtype="float32")

    def get_config(self):
        return {
            **super().get_config(),
            "rank": self.rank,
            "train_steps": self.train_steps,
            "eval_steps": self.eval_steps,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class Hamburger(keras.layers.Layer):
    """`ReLU(x + GN(ham_out(NMF(ReLU(ham_in(x))))))`. (B, H, W, C) -> same.

    Args:
        rank: NMF rank R. groups: GroupNorm groups of `ham_out`. seed: NMF seed.
    """

    def __init__(self, rank=64, groups=32, train_steps=6, eval_steps=7, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rank = int(rank)
        self.groups = int(groups)
        self.train_steps = int(train_steps)
        self.eval_steps = int(eval_steps)
        self.seed = seed

    def build(self, input_shape):
        policy = self.dtype_policy
        channels = int(input_shape[-1])
        self.ham_in = keras.layers.Conv2D(channels, 1, dtype=policy, name="ham_in")
        self.nmf = NMF2D(
            self.rank, self.train_steps, self.eval_steps, seed=self.seed, dtype=policy, name="ham"
        )
        self.ham_out = ConvNormAct(
            channels, groups=self.groups, activation=False, dtype=policy, name="ham_out"
        )
        for layer in (self.ham_in, self.nmf, self.ham_out):
            layer.build(input_shape)
        self.built = True

    def call(self, x, training=False):
        h = ops.relu(self.ham_in(x))
        h = self.nmf(h, training=training)
        h = self.ham_out(h, training=training)
        return ops.relu(x + ops.cast(h, x.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rank": self.rank,
            "groups": self.groups,
            "train_steps": self.train_steps,
            "eval_steps": self.eval_steps,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class LightHamHead(keras.layers.Layer):
    """SegNeXt decode head. Call on the backbone's list of stage features -> F (B, H_s, W_s, channels).

    H_s, W_s is the size of the first selected stage (stage 2, stride 8, by default).

    Args:
        channels: width of F (the `align` output).
        ham_channels: width of `squeeze` and of the Hamburger.
        rank: NMF rank (the reference's `MD_R`).
        groups: GroupNorm groups of every norm in the head.
        in_index: which backbone stages (0-based) the head reads.
        seed: NMF seed (None: random).
    """

    def __init__(
        self,
        channels=256,
        ham_channels=256,
        rank=16,
        groups=32,
        in_index=(1, 2, 3),
        train_steps=6,
        eval_steps=7,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.ham_channels = int(ham_channels)
        self.rank = int(rank)
        self.groups = int(groups)
        self.in_index = tuple(int(i) for i in in_index)
        self.train_steps = int(train_steps)
        self.eval_steps = int(eval_steps)
        self.seed = seed

    def build(self, input_shape):
        policy = self.dtype_policy
        selected = [input_shape[i] for i in self.in_index]
        in_channels = sum(int(shape[-1]) for shape in selected)
        base = tuple(selected[0][:-1])
        self.squeeze = ConvNormAct(self.ham_channels, groups=self.groups, dtype=policy, name="squeeze")
        self.hamburger = Hamburger(
            self.rank,
            self.groups,
            self.train_steps,
            self.eval_steps,
            seed=self.seed,
            dtype=policy,
            name="hamburger",
        )
        self.align = ConvNormAct(self.channels, groups=self.groups, dtype=policy, name="align")
        self.squeeze.build(base + (in_channels,))
        self.hamburger.build(base + (self.ham_channels,))
        self.align.build(base + (self.ham_channels,))
        self.built = True

    def call(self, features, training=False):
        x = self.squeeze(resize_concat(features, self.in_index), training=training)
        x = self.hamburger(x, training=training)
        return self.align(x, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[self.in_index[0]][:-1]) + (self.channels,)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "ham_channels": self.ham_channels,
            "rank": self.rank,
            "groups": self.groups,
            "in_index": list(self.in_index),
            "train_steps": self.train_steps,
            "eval_steps": self.eval_steps,
            "seed": self.seed,
        }
