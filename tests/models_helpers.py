"""Shared fixtures of the model tests: the tiny SegNeXt of the golden checkpoint, fixed NMF bases."""

from __future__ import annotations

import contextlib
import os

import numpy as np

DATA = os.path.join(os.path.dirname(__file__), "data")
GOLDEN_PTH = os.path.join(DATA, "mscan_tiny_ssa.pth")
GOLDEN_NPZ = os.path.join(DATA, "mscan_tiny_ssa.npz")

# The golden checkpoint's model: MSCAN dims [8, 16, 24, 32], MLP ratios 2, depths [1, 1, 2, 1];
# LightHamHead channels 32, ham channels 32, NMF rank 4, GroupNorm 8 groups; 7 classes.
TINY_BACKBONE = {"embed_dims": [8, 16, 24, 32], "mlp_ratios": [2, 2, 2, 2], "depths": [1, 1, 2, 1]}
TINY_HEAD = {"channels": 32, "ham_channels": 32, "rank": 4, "groups": 8}


def tiny_config(ssa=True, num_classes=7, **extra):
    return {
        "family": "segnext",
        "size": "t",
        "num_classes": num_classes,
        "ssa": ssa,
        "backbone": dict(TINY_BACKBONE),
        "head": dict(TINY_HEAD),
        "seed": 3,
        **extra,
    }


def fixed_bases(batch, channels, rank):
    """Deterministic positive NMF bases (B, C, R), L2-normalised over C."""
    grid = np.arange(batch * channels * rank, dtype="float64").reshape(batch, channels, rank)
    bases = 0.1 + (np.sin(grid * 0.37) + 1.0) / 2.0
    return (bases / np.linalg.norm(bases, axis=1, keepdims=True)).astype("float32")


@contextlib.contextmanager
def deterministic_nmf():
    """Make every NMF2D draw `fixed_bases` instead of random ones (cross-backend comparisons)."""
    from keras import ops

    from ssaseg_keras.models.heads.ham_head import NMF2D

    original = NMF2D.random_bases

    def patched(self, batch, channels):
        return ops.convert_to_tensor(fixed_bases(int(batch), int(channels), self.rank))

    NMF2D.random_bases = patched
    try:
        yield
    finally:
        NMF2D.random_bases = original


def golden_image_nhwc():
    data = np.load(GOLDEN_NPZ)
    return np.transpose(data["input/image_nchw"], (0, 2, 3, 1)).astype("float32")
