"""SegNeXt parts: MSCAN golden parity, NMF maths, LightHamHead shapes, exact parameter counts."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops
from models_helpers import (
    GOLDEN_NPZ,
    GOLDEN_PTH,
    TINY_BACKBONE,
    TINY_HEAD,
    fixed_bases,
    golden_image_nhwc,
)

from ssaseg_keras.layers import DropPath
from ssaseg_keras.models import build_segmentor, inference_model, model_summary_counts
from ssaseg_keras.models.backbones.mscan import MSCANBackbone
from ssaseg_keras.models.heads.ham_head import NMF2D, LightHamHead


@pytest.fixture(scope="module")
def tiny_backbone():
    return MSCANBackbone(**TINY_BACKBONE, seed=0)


def test_mscan_golden_stage_outputs(tiny_backbone):
    from ssaseg_keras.convert import load_reference_weights, read_torch_checkpoint

    report = load_reference_weights(tiny_backbone, read_torch_checkpoint(GOLDEN_PTH), prefix="backbone.")
    assert report.num_loaded == 218  # every backbone weight and BN statistic
    golden = np.load(GOLDEN_NPZ)
    outputs = tiny_backbone(golden_image_nhwc(), training=False)
    assert len(outputs) == 4
    for stage, output in enumerate(outputs, start=1):
        expected = np.transpose(golden[f"out/stage{stage}_nchw"], (0, 2, 3, 1))
        np.testing.assert_allclose(ops.convert_to_numpy(output), expected, rtol=1e-4, atol=1e-4)


def test_mscan_pyramid_and_nonsquare_shapes(tiny_backbone):
    assert tiny_backbone.stage_channels == [8, 16, 24, 32]
    assert sorted(tiny_backbone.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    outputs = tiny_backbone(np.zeros((1, 96, 160, 3), "float32"))
    assert [tuple(o.shape) for o in outputs] == [
        (1, 24, 40, 8),
        (1, 12, 20, 16),
        (1, 6, 10, 24),
        (1, 3, 5, 32),
    ]


def test_mscan_drop_path_rates_rise_linearly():
    backbone = MSCANBackbone(**TINY_BACKBONE, drop_path_rate=0.3)
    rates = [backbone.get_layer(name).drop_path for name in ("block1_0", "block2_0", "block3_0", "block3_1", "block4_0")]
    np.testing.assert_allclose(rates, [0.0, 0.075, 0.15, 0.225, 0.3], atol=1e-7)


def test_drop_path_drops_whole_samples_only_in_training():
    layer = DropPath(0.5, seed=1)
    y = np.ones((64, 2, 2, 3), "float32")
    dropped = ops.convert_to_numpy(layer(y, training=True)).reshape(64, -1)
    # Each sample is either dropped (0) or kept and scaled by 1 / (1 - 0.5).
    assert set(np.unique(dropped).tolist()) == {0.0, 2.0}
    assert all(len(set(row.tolist())) == 1 for row in dropped)
    assert 10 < int((dropped[:, 0] == 0).sum()) < 54
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(y, training=False)), y)


def numpy_nmf(x, bases, steps):
    """The spec's NMF on x (B, N, C), bases (B, C, R), in float64."""
    x, bases = x.astype("float64"), bases.astype("float64")
    logits = x @ bases
    coef = np.exp(logits - logits.max(-1, keepdims=True))
    coef /= coef.sum(-1, keepdims=True)
    for _ in range(steps):
        coef = coef * (x @ bases) / (coef @ (bases.transpose(0, 2, 1) @ bases) + 1e-6)
        bases = bases * (x.transpose(0, 2, 1) @ coef) / (bases @ (coef.transpose(0, 2, 1) @ coef) + 1e-6)
    coef = coef * (x @ bases) / (coef @ (bases.transpose(0, 2, 1) @ bases) + 1e-6)
    return coef @ bases.transpose(0, 2, 1)


@pytest.mark.parametrize("training, steps", [(True, 6), (False, 7)])
def test_nmf_matches_the_spec(monkeypatch, training, steps):
    layer = NMF2D(rank=4)
    bases = fixed_bases(2, 6, 4)
    monkeypatch.setattr(NMF2D, "random_bases", lambda self, b, c: ops.convert_to_tensor(bases))
    x = np.abs(np.random.RandomState(1).randn(2, 3, 5, 6)).astype("float32")
    out = ops.convert_to_numpy(layer(x, training=training))
    expected = numpy_nmf(x.reshape(2, 15, 6), bases, steps).reshape(2, 3, 5, 6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_nmf_draws_fresh_normalised_bases_each_call():
    layer = NMF2D(rank=4, seed=7)
    first = ops.convert_to_numpy(layer.random_bases(2, 6))
    second = ops.convert_to_numpy(layer.random_bases(2, 6))
    assert first.shape == (2, 6, 4)
    assert first.min() >= 0.0
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    assert np.abs(first - second).max() > 1e-3
    # Reproducible under a seed.
    again = ops.convert_to_numpy(NMF2D(rank=4, seed=7).random_bases(2, 6))
    np.testing.assert_allclose(again, first)


def test_light_ham_head_shapes():
    head = LightHamHead(**TINY_HEAD, seed=0)
    features = [np.ones((2, 96 // s, 64 // s, c), "float32") for s, c in zip((4, 8, 16, 32), (8, 16, 24, 32))]
    out = head(features, training=True)
    assert tuple(out.shape) == (2, 12, 8, 32)
    # squeeze reads the 16 + 24 + 32 = 72 concatenated channels
    assert tuple(head.squeeze.conv.kernel.shape) == (1, 1, 72, 32)
    assert ops.convert_to_numpy(out).min() >= 0.0  # ends with ReLU


# The spec's table: trainable parameters of SegNeXt-T (MSCAN-T + LightHamHead).
PARAMETER_TABLE = [
    (150, False, True, 4_263_414),
    (150, True, False, 4_567_030),
    (150, True, True, 4_829_686),
    (171, False, True, 4_268_811),
    (171, True, False, 4_577_803),
    (171, True, True, 4_840_459),
]


@pytest.mark.parametrize("num_classes, ssa, training, expected", PARAMETER_TABLE)
def test_segnext_t_parameter_counts(num_classes, ssa, training, expected):
    # Variables created in a stateless scope are not initialised: counting shapes is instant.
    with keras.StatelessScope():
        model = build_segmentor({"num_classes": num_classes, "ssa": ssa}, training=training)
        assert model_summary_counts(model)["trainable"] == expected


def test_inference_model_drops_exactly_the_teacher():
    from models_helpers import tiny_config

    model = build_segmentor(tiny_config(ssa=True))
    slim = inference_model(model)
    c = 32  # head channels; 7 classes
    teacher = 2 * (2 * c * (c // 2) + (c // 2) * c + c) + c * c
    assert model_summary_counts(model)["trainable"] - model_summary_counts(slim)["trainable"] == teacher
    assert not any("gt_" in v.path for v in slim.weights)
    assert any("gt_" in v.path for v in model.weights)
    x = np.random.RandomState(0).randn(1, 64, 32, 3).astype("float32")
    # The copy takes the random-generator states too: the next NMF bases agree.
    slim = inference_model(model)
    np.testing.assert_allclose(ops.convert_to_numpy(slim(x)), ops.convert_to_numpy(model(x)), atol=1e-5)
    baseline = build_segmentor(tiny_config(ssa=False))
    assert inference_model(baseline) is baseline
