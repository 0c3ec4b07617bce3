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


def load_mmseg_state(model, reference):
    """Load an mmseg reference file's whole `state/*` strictly into `model` (every name used, every
    variable set; backbone, decode head and the auxiliary or cascade head all present); returns it."""
    from ssaseg_keras.convert import load_reference_weights

    state = {k[len("state/") :]: v for k, v in reference.items() if k.startswith("state/")}
    report = load_reference_weights(model, state)
    parts = {"backbone", "decode_head", "auxiliary_head"} if model.auxiliary_heads else {"backbone", "decode_head"}
    assert {name.split(".", 1)[0] for name in report.loaded} == parts
    assert report.num_loaded == len(state)
    return model


def assert_matches_mmseg(model, reference, rtol=1e-4):
    """The model's stages, decode features and logits, auxiliary (or cascade region) logits and
    inference output (the decode logits half-pixel upsampled to the image) against an mmseg reference
    file's `out/*` arrays (NCHW), on `input/images_nchw`. Returns {"stages", "aux_logits"} (NumPy)."""
    from conftest import nchw_to_nhwc, to_numpy
    from keras import ops

    from ssaseg_keras.ops.resize import resize_bilinear

    def close(got, key):
        expected = nchw_to_nhwc(reference[key])
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())

    images = ops.convert_to_tensor(nchw_to_nhwc(reference["input/images_nchw"]))
    stages = [to_numpy(s) for s in model.backbone(images, training=False)]
    for index, stage in enumerate(stages):
        close(stage, f"out/stage{index + 1}_nchw")
    features, regions = model.decode([ops.convert_to_tensor(s) for s in stages], training=False)
    if regions is not None:
        close(to_numpy(regions), "out/region_logits_nchw")
    close(to_numpy(features), "out/decode_features_nchw")
    logits = to_numpy(model.classifier(features, training=False))
    close(logits, "out/decode_logits_nchw")
    aux_logits = None
    if model.auxiliary_heads:
        aux_logits = to_numpy(model.auxiliary_heads[0]([ops.convert_to_tensor(s) for s in stages], training=False))
        close(aux_logits, "out/aux_logits_nchw")
    size = tuple(images.shape[1:3])
    expected = to_numpy(resize_bilinear(ops.convert_to_tensor(logits), size, align_corners=False))
    np.testing.assert_allclose(to_numpy(model(images, training=False)), expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    return {"stages": stages, "aux_logits": aux_logits}
