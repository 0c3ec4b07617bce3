"""SegFormer: the library MiT run as mmseg's MixVisionTransformer + mmseg's SegformerHead, with and
without SSA, against arrays and parameter groups made with mmsegmentation itself
(`tests/reference_tools/segformer_mmseg.py`)."""

from __future__ import annotations

import gzip
import json
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND, DATA_DIR, nchw_to_nhwc, to_numpy

from ssaseg_keras.convert import load_pretrained_backbone, load_reference_weights
from ssaseg_keras.models import build_segmentor, model_summary_counts
from ssaseg_keras.models.backbones.mit import MiTBackbone
from ssaseg_keras.models.heads.segformer_head import SegFormerHead
from ssaseg_keras.training.optimizer import describe_groups, parameter_groups, reference_names
from ssaseg_keras.utils.errors import CheckpointError, UserError

GOLDEN = DATA_DIR / "segformer_mmseg.npz"
GROUPS = DATA_DIR / "segformer_param_groups.json.gz"
# The golden file's tiny model (see the tool): MiT embed_dims [4, 8, 20, 32], depths [1, 2, 1, 1];
# SegformerHead channels 8; 7 classes.
TINY = {"backbone": {"embed_dims": [4, 8, 20, 32], "depths": [1, 2, 1, 1]}, "head": {"channels": 8}}
SSA_PARAMS_B0 = 566_272  # SSA's trainable parameters at C=256, K=150 (the same as for SegNeXt-T)


def tiny_segformer(source="keras_cv", ssa=False, **extra):
    return build_segmentor({"family": "segformer", "size": "b0", "num_classes": 7, "ssa": ssa, "source": source, **TINY, **extra})


def mmseg_rows(size):
    with gzip.open(GROUPS, "rt", encoding="utf-8") as handle:
        return json.load(handle)["sizes"][size]


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN)
    state = {key[len("state/"):]: data[key] for key in data.files if key.startswith("state/")}
    return state, {key: data[key] for key in data.files if not key.startswith("state/")}


def test_segformer_head_is_mmsegs():
    head = SegFormerHead(channels=16)
    features = [np.ones((2, 64 // s, 96 // s, c), "float32") for s, c in zip((4, 8, 16, 32), (8, 16, 24, 32))]
    out = head(features, training=False)
    assert tuple(out.shape) == (2, 16, 24, 16)
    # mmseg: per stage a 1x1 ConvModule (no bias, BN, ReLU), then `fusion_conv` over the concat.
    assert [tuple(c.conv.kernel.shape) for c in head.convs] == [(1, 1, 8, 16), (1, 1, 16, 16), (1, 1, 24, 16), (1, 1, 32, 16)]
    assert not any(c.conv.use_bias for c in head.convs) and all(c.norm == "batch" for c in head.convs)
    assert tuple(head.fusion_conv.conv.kernel.shape) == (1, 1, 64, 16)
    assert to_numpy(out).min() >= 0.0


@pytest.mark.parametrize("source", ["keras_cv", "keras_hub"])
def test_converted_mmseg_segformer_matches_mmseg(golden, source):
    """An mmseg SegFormer state dict loads by name and reproduces mmseg's backbone stages, head
    features and logits on a non-square image (64x96), for both libraries' MiT."""
    state, arrays = golden
    model = tiny_segformer(source)
    report = load_reference_weights(model, state)
    assert report.num_loaded == len([k for k in state if not k.endswith("num_batches_tracked")])
    x = nchw_to_nhwc(arrays["input/image_nchw"])
    for i, stage in enumerate(model.backbone(x, training=False), start=1):
        np.testing.assert_allclose(to_numpy(stage), nchw_to_nhwc(arrays[f"out/stage{i}_nchw"]), rtol=1e-4, atol=1e-5)
    features = model.features(x, training=False)
    np.testing.assert_allclose(to_numpy(features), nchw_to_nhwc(arrays["out/features_nchw"]), rtol=1e-4, atol=1e-5)
    logits = model.classifier(features, training=False)
    np.testing.assert_allclose(to_numpy(logits), nchw_to_nhwc(arrays["out/logits_nchw"]), rtol=1e-4, atol=1e-5)


def _assert_groups_match_mmseg(model, rows):
    groups = parameter_groups(model)
    names = reference_names(model)
    by_name = {}
    for variable in model.trainable_variables:
        by_name.setdefault(names[id(variable)], set()).add(groups[variable.path])
    expected = {name: (lr, decay) for name, _, lr, decay in rows}
    assert sorted(by_name) == sorted(expected)
    assert {name: group.pop() for name, group in by_name.items() if len(group) == 1} == expected
    return groups


def test_segformer_b0_parameter_groups_are_mmcvs_on_mmseg_names():
    """The reference's rule on mmseg's names: backbone x1 (its `layers.i.0.norm`, `norm1/2` and
    `attn.norm` without decay, the stage norms `layers.i.2` with it), decode head x10."""
    rows = mmseg_rows("b0")
    model = build_segmentor({"family": "segformer", "size": "b0", "num_classes": 150, "ssa": False})
    groups = _assert_groups_match_mmseg(model, rows)
    assert model_summary_counts(model)["trainable"] == sum(int(np.prod(shape)) for _, shape, _, _ in rows) == 3_753_718
    # What a training run prints at its start: per multiplier pair, mmseg's tensors and parameters.
    expected = {}
    for _, shape, lr, decay in rows:
        tensors, params = expected.get((lr, decay), (0, 0))
        expected[(lr, decay)] = (tensors + 1, params + int(np.prod(shape)))
    assert describe_groups(model, groups) == [
        f"lr x{lr:g} decay x{decay:g}: {n} tensors, {p:,} parameters" for (lr, decay), (n, p) in sorted(expected.items())
    ]
    assert [key for key in sorted(expected)] == [(1.0, 0.0), (1.0, 1.0), (10.0, 1.0)]
    attention = [v for v in model.trainable_variables if "seg_former_multihead_attention" in v.path]
    assert len(attention) == 88 and all(groups[v.path] == (1.0, 1.0) for v in attention if "layer_normalization" not in v.path)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "torch", reason="backend: the names are backend-independent; torch builds MiT-B5 fastest")
@pytest.mark.parametrize("size", ["b1", "b2", "b3", "b4", "b5"])
def test_segformer_b1_to_b5_parameter_groups_are_mmcvs_on_mmseg_names(size):
    rows = mmseg_rows(size)
    model = build_segmentor({"family": "segformer", "size": size, "num_classes": 150, "ssa": False})
    _assert_groups_match_mmseg(model, rows)
    assert model_summary_counts(model)["trainable"] == sum(int(np.prod(shape)) for _, shape, _, _ in rows)


@pytest.fixture(scope="module")
def segformer_b0():
    return build_segmentor({"family": "segformer", "size": "b0", "num_classes": 150, "ssa": True})


def test_segformer_b0_with_ssa_builds_runs_and_counts(segformer_b0):
    model = segformer_b0
    assert model.backbone.stage_channels == [32, 64, 160, 256]
    x = np.random.RandomState(0).randn(2, 64, 64, 3).astype("float32")
    assert tuple(model(x).shape) == (2, 64, 64, 150)
    out = model(x, training=True)
    assert tuple(out["features"].shape) == (2, 16, 16, 256)
    assert model_summary_counts(model)["trainable"] == 3_753_718 + SSA_PARAMS_B0
    groups = parameter_groups(model)
    assert {groups[v.path] for v in model.classifier.trainable_variables} == {(10.0, 1.0)}


@pytest.mark.parametrize("size", [(64, 96), (96, 32)])
def test_segformer_runs_at_non_square_sizes(segformer_b0, size):
    x = np.random.RandomState(0).randn(1, *size, 3).astype("float32")
    h, w = size
    assert [tuple(f.shape) for f in segformer_b0.backbone(x)] == [
        (1, h // 4, w // 4, 32), (1, h // 8, w // 8, 64), (1, h // 16, w // 16, 160), (1, h // 32, w // 32, 256)
    ]
    logits = to_numpy(segformer_b0(x))
    assert logits.shape == (1, h, w, 150) and np.isfinite(logits).all()


def test_segformer_round_trip(tmp_path, segformer_b0):
    path = str(tmp_path / "segformer.keras")
    segformer_b0.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.RandomState(1).randn(1, 64, 64, 3).astype("float32")
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(segformer_b0(x)), atol=1e-5)
    assert loaded.backbone.drop_path_rate == 0.1


def test_model_drop_path_sets_mits_stochastic_depth():
    """`model.drop_path` is mmseg's drop_path_rate: 0 for the first block rising linearly to it, and
    it acts in training only."""
    x = np.random.RandomState(5).randn(4, 64, 64, 3).astype("float32")
    off = tiny_segformer(drop_path=0.0, seed=1)
    for a, b in zip(off.backbone(x, training=True), off.backbone(x, training=False)):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)
    model = tiny_segformer(drop_path=0.6, seed=1)
    rates = [layer.rate for layer in model.backbone.get_layer("mit_features").drop_paths]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.6, 5))
    trained, evaluated = model.backbone(x, training=True)[-1], model.backbone(x, training=False)[-1]
    assert not np.allclose(to_numpy(trained), to_numpy(evaluated), atol=1e-3)
    default = tiny_segformer()
    assert default.backbone.get_layer("mit_features").drop_paths[-1].rate == pytest.approx(0.1)


def test_mit_fixed_size_must_be_a_multiple_of_32():
    with pytest.raises(UserError, match="multiples of 32"):
        MiTBackbone([32, 64, 160, 256], [2, 2, 2, 2], image_shape=(64, 80, 3))


def test_keras_hub_segformer_counts_runs_non_square_and_round_trips(tmp_path):
    model = build_segmentor({"family": "segformer", "size": "b0", "num_classes": 150, "source": "keras_hub"})
    assert model_summary_counts(model)["trainable"] == 3_753_718 + SSA_PARAMS_B0  # the same MiT as keras-cv
    x = np.random.RandomState(3).randn(1, 64, 96, 3).astype("float32")
    path = str(tmp_path / "segformer_hub.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.backbone.source == "keras_hub"
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-5)


def test_missing_keras_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` raises ImportError
    with pytest.raises(UserError, match="keras-hub is not installed: `pip install keras-hub`"):
        build_segmentor({"family": "segformer", "size": "b0", "num_classes": 7, "source": "keras_hub"})


def test_local_mit_weights_file_loads_and_reports(tmp_path):
    source = tiny_segformer(seed=2)
    path = str(tmp_path / "mit_tiny.weights.h5")
    source.backbone.mit.save_weights(path)
    model = tiny_segformer(seed=3)
    report = load_pretrained_backbone(model, path, family="segformer")
    backbone_names = [k for k in np.load(GOLDEN).files if k.startswith("state/backbone.")]
    assert report.num_loaded == len(backbone_names) and report.describe().startswith(f"loaded {len(backbone_names)} weights (backbone: ")
    x = np.random.RandomState(4).randn(1, 64, 96, 3).astype("float32")
    for ours, theirs in zip(model.backbone(x), source.backbone(x)):
        np.testing.assert_allclose(to_numpy(ours), to_numpy(theirs), atol=1e-5)
    assert not np.allclose(to_numpy(tiny_segformer(seed=4).backbone(x)[-1]), to_numpy(model.backbone(x)[-1]))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained_backbone(model, str(tmp_path / "no.weights.h5"), family="segformer")


def test_a_model_without_reference_names_is_an_error():
    """No silent fallback to Keras paths: parameter groups need every trainable weight's reference name."""
    wrapper = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, name="unmapped")])
    with pytest.raises(UserError, match="No reference-weight mapping is registered for Sequential"):
        parameter_groups(wrapper)
