"""SegFormer: keras-cv MiT adapter + all-MLP head, with and without SSA."""

from __future__ import annotations

import importlib.util

import keras
import numpy as np
import pytest
from keras import ops

from ssaseg_keras.models import build_segmentor, model_summary_counts
from ssaseg_keras.models.backbones.mit import BUILD_SHAPE, MiTBackbone, MiTFeatures
from ssaseg_keras.models.heads.segformer_head import SegFormerHead
from ssaseg_keras.utils.errors import CheckpointError, UserError

HAS_KERAS_CV = importlib.util.find_spec("keras_cv") is not None
HAS_KERAS_HUB = importlib.util.find_spec("keras_hub") is not None
needs_keras_cv = pytest.mark.skipif(not HAS_KERAS_CV, reason="keras-cv is not installed")
needs_keras_hub = pytest.mark.skipif(not HAS_KERAS_HUB, reason="keras-hub is not installed")


def test_segformer_head_shapes_and_order():
    head = SegFormerHead(channels=16)
    features = [np.ones((2, 64 // s, 96 // s, c), "float32") for s, c in zip((4, 8, 16, 32), (8, 16, 24, 32))]
    out = head(features, training=False)
    assert tuple(out.shape) == (2, 16, 24, 16)
    assert [tuple(p.kernel.shape) for p in head.projections] == [(8, 16), (16, 16), (24, 16), (32, 16)]
    assert tuple(head.fuse.conv.kernel.shape) == (1, 1, 64, 16)
    assert ops.convert_to_numpy(out).min() >= 0.0


@pytest.fixture(scope="module")
def segformer_b0():
    return build_segmentor({"family": "segformer", "size": "b0", "num_classes": 150, "ssa": True})


@needs_keras_cv
def test_segformer_b0_builds_runs_and_counts(segformer_b0):
    model = segformer_b0
    assert model.backbone.stage_channels == [32, 64, 160, 256]
    x = np.random.RandomState(0).randn(2, 64, 64, 3).astype("float32")
    assert tuple(model(x).shape) == (2, 64, 64, 150)
    out = model(x, training=True)
    assert tuple(out["features"].shape) == (2, 16, 16, 256)
    # keras-cv MiT-B0 (3,319,392) + all-MLP head (394,752) + 1x1 classifier (38,550) = 3,752,694;
    # SSA adds 566,272 trainable parameters at C=256, K=150 (the same as for SegNeXt-T).
    assert model_summary_counts(model)["trainable"] == 3_752_694 + 566_272


@needs_keras_cv
@pytest.mark.parametrize("size", [(64, 96), (96, 32)])
def test_segformer_runs_at_non_square_sizes(segformer_b0, size):
    x = np.random.RandomState(0).randn(1, *size, 3).astype("float32")
    h, w = size
    assert [tuple(f.shape) for f in segformer_b0.backbone(x)] == [
        (1, h // 4, w // 4, 32), (1, h // 8, w // 8, 64), (1, h // 16, w // 16, 160), (1, h // 32, w // 32, 256)
    ]
    logits = ops.convert_to_numpy(segformer_b0(x))
    assert logits.shape == (1, h, w, 150) and np.isfinite(logits).all()


@needs_keras_cv
def test_segformer_round_trip(tmp_path, segformer_b0):
    path = str(tmp_path / "segformer.keras")
    segformer_b0.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.RandomState(1).randn(1, 64, 64, 3).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(segformer_b0(x)), atol=1e-5)


def test_mit_fixed_size_must_be_a_multiple_of_32():
    with pytest.raises(UserError, match="multiples of 32"):
        MiTBackbone([32, 64, 160, 256], [2, 2, 2, 2], image_shape=(64, 80, 3))


@needs_keras_hub
def test_grid_aware_forward_equals_keras_hub_mit_at_its_square_size():
    """Carrying (H, W) instead of sqrt(N) changes nothing where the library's own MiT works."""
    features = MiTFeatures([32, 64, 160, 256], [2, 2, 2, 2], source="keras_hub")
    library = keras.Model(features.mit.inputs, list(features.mit.pyramid_outputs.values()))
    x = np.random.RandomState(2).randn(2, *BUILD_SHAPE).astype("float32")
    ours, theirs = features(x, training=False), library(x, training=False)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-5)


@needs_keras_hub
def test_keras_hub_segformer_counts_runs_non_square_and_round_trips(tmp_path):
    model = build_segmentor({"family": "segformer", "size": "b0", "num_classes": 150, "source": "keras_hub"})
    assert model_summary_counts(model)["trainable"] == 3_752_694 + 566_272  # the same MiT as keras-cv
    x = np.random.RandomState(3).randn(1, 64, 96, 3).astype("float32")
    path = str(tmp_path / "segformer_hub.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.backbone.source == "keras_hub"
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)), atol=1e-5)


@pytest.mark.skipif(HAS_KERAS_HUB, reason="keras-hub is installed")
def test_missing_keras_hub_is_a_clear_error():
    with pytest.raises(UserError, match="keras-hub is not installed: `pip install keras-hub`"):
        build_segmentor({"family": "segformer", "size": "b0", "num_classes": 7, "source": "keras_hub"})


@needs_keras_cv
def test_local_mit_weights_file_loads_and_reports(tmp_path, segformer_b0):
    path = str(tmp_path / "mit_b0.weights.h5")
    segformer_b0.backbone.mit.save_weights(path)
    model = build_segmentor({"family": "segformer", "size": "b0", "num_classes": 7, "pretrained": path})
    assert model.pretrained_report.num_loaded == len(segformer_b0.backbone.mit.weights)
    x = np.random.RandomState(4).randn(1, 64, 96, 3).astype("float32")
    for ours, theirs in zip(model.backbone(x), segformer_b0.backbone(x)):
        np.testing.assert_allclose(ops.convert_to_numpy(ours), ops.convert_to_numpy(theirs), atol=1e-5)
    fresh = build_segmentor({"family": "segformer", "size": "b0", "num_classes": 7})  # no file: other weights
    assert not np.allclose(ops.convert_to_numpy(fresh.backbone(x)[-1]), ops.convert_to_numpy(model.backbone(x)[-1]))
    with pytest.raises(CheckpointError, match="does not exist"):
        build_segmentor({"family": "segformer", "size": "b0", "num_classes": 7, "pretrained": str(tmp_path / "no.weights.h5")})
