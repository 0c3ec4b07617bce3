"""SeaFormer + LightHead (+ SSA): golden parity with the reference, exact parameter counts, shapes, a
.keras round trip.

`tests/data/seaformer_tiny_ssa.{pth,npz}` are the project's golden files (see /shared/golden/README.md,
"seaformer_tiny_ssa"): a tiny SeaFormer (B layout: 5 MV2 stages, transformers after the last two) and
LightHead_ssa with random weights and BN statistics, 7 classes, eval-mode outputs on a 64 x 96 image.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import DATA_DIR, nchw_to_nhwc, to_numpy
from keras import ops

import ssaseg_keras.convert.seaformer  # noqa: F401  (registers the SeaFormer / LightHead mappings)
from ssaseg_keras.convert import load_reference_weights, read_torch_checkpoint, reference_mapping
from ssaseg_keras.layers.ssa import SSAClassifier
from ssaseg_keras.models.backbones.seaformer import (
    SEAFORMER_LAYOUTS,
    SeaAttention,
    SeaFormerBackbone,
)
from ssaseg_keras.models.heads.light_head import LIGHT_HEAD_PRESETS, LightHead
from ssaseg_keras.utils.variables import count_parameters

GOLDEN_NPZ = DATA_DIR / "seaformer_tiny_ssa.npz"
GOLDEN_PTH = DATA_DIR / "seaformer_tiny_ssa.pth"
# A 1 x 2 map at 1/64 makes a softmax over one key: the reference does the same; Keras warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis")


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN_NPZ))


def tiny_arguments(golden):
    """(backbone kwargs, head kwargs) of the golden model, from the config stored in the npz."""
    config = json.loads(str(golden["config/json"][0]))
    backbone = {k: v for k, v in config["backbone"].items() if k not in ("type", "norm_cfg")}
    head = {k: config["decode_head"][k] for k in ("channels", "embed_dims", "in_index", "is_dw")}
    return backbone, head


def build_tiny(golden, dtype=None):
    backbone_args, head_args = tiny_arguments(golden)
    backbone = SeaFormerBackbone(**backbone_args, dtype=dtype)
    head = LightHead(**head_args, dtype=dtype)
    head.build([tuple(t.shape) for t in backbone.outputs])
    return backbone, head


def assert_close(got, golden, key, rtol=1e-4):
    expected = nchw_to_nhwc(golden[key])
    np.testing.assert_allclose(to_numpy(got), expected, rtol=rtol, atol=rtol * np.abs(expected).max(), err_msg=key)


@pytest.fixture(scope="module")
def tiny_model(golden):
    """The golden tiny backbone, head and SSA classifier with the checkpoint loaded."""
    state = read_torch_checkpoint(GOLDEN_PTH)
    backbone, head = build_tiny(golden)
    classifier = SSAClassifier(7, dropout=0.0, with_teacher=True)
    classifier.build(head.compute_output_shape([tuple(t.shape) for t in backbone.outputs]))
    backbone_report = load_reference_weights(backbone, state, prefix="backbone.")
    head_report = load_reference_weights(head, state, prefix="decode_head.", strict=False)
    classifier_report = load_reference_weights(classifier, state, prefix="decode_head.", strict=False)
    return {
        "state": state,
        "backbone": backbone,
        "head": head,
        "classifier": classifier,
        "reports": (backbone_report, head_report, classifier_report),
    }


def test_checkpoint_names_map_one_to_one(tiny_model):
    state = tiny_model["state"]
    backbone_report, head_report, classifier_report = tiny_model["reports"]

    def weights(prefix):
        return {
            k[len(prefix) :] for k in state
            if k.startswith(prefix) and not k.endswith(("num_batches_tracked", "empty_weight"))
        }  # fmt: skip

    assert set(backbone_report.loaded) == weights("backbone.")
    assert backbone_report.num_loaded == 273  # every backbone parameter and BN statistic
    # The head and the classifier share decode_head.*: together they take every name, each exactly once.
    assert not set(head_report.loaded) & set(classifier_report.loaded)
    assert set(head_report.loaded) | set(classifier_report.loaded) == weights("decode_head.")
    assert {n.split(".")[0] for n in head_report.loaded} == {"fuse1", "fuse2", "linear_fuse"}
    # Every variable of the backbone, head and classifier received a value.
    for part in ("backbone", "head", "classifier"):
        layer = tiny_model[part]
        loaded = {id(v) for _, v, _ in reference_mapping(layer)}
        assert loaded == {id(v) for v in layer.weights if "seed_generator" not in v.path}, part


def test_tiny_seaformer_matches_the_reference(golden, tiny_model):
    images = ops.convert_to_tensor(nchw_to_nhwc(golden["input/image_nchw"]).astype("float32"))
    stages = tiny_model["backbone"](images, training=False)
    assert [tuple(s.shape) for s in stages] == [(2, 8, 12, 16), (2, 2, 3, 24), (2, 1, 2, 32)]
    for index, stage in enumerate(stages, start=1):
        assert_close(stage, golden, f"out/stage{index}_nchw")
    features = tiny_model["head"](stages, training=False)
    assert_close(features, golden, "out/head_features_nchw")
    classifier = tiny_model["classifier"]
    assert_close(classifier.coarse_logits(features), golden, "out/coarse_logits_nchw")
    assert_close(classifier(features, training=False), golden, "out/logits_nchw")


def test_pyramid_names_strides_and_sizes(golden):
    backbone, head = build_tiny(golden)
    assert backbone.stage_channels == [16, 24, 32]
    assert backbone.output_strides == [8, 32, 64]
    assert sorted(backbone.pyramid_outputs) == ["P3", "P5", "P6"]
    assert [tuple(t.shape) for t in backbone.outputs] == [(None, None, None, c) for c in (16, 24, 32)]
    # Sides that are multiples of 32 but not of 64: torch's ceil-divided maps.
    stages = backbone(np.zeros((1, 96, 160, 3), "float32"))
    assert [tuple(s.shape) for s in stages] == [(1, 12, 20, 16), (1, 3, 5, 24), (1, 2, 3, 32)]
    assert tuple(head(stages).shape) == (1, 12, 20, 24)
    assert tuple(head.compute_output_shape([tuple(s.shape) for s in stages])) == (1, 12, 20, 24)


def test_drop_path_rates_rise_within_each_transformer_stage(golden):
    backbone_args, _ = tiny_arguments(golden)
    with keras.StatelessScope():
        backbone = SeaFormerBackbone(**{**backbone_args, "depths": [4, 3], "drop_path_rate": 0.3})
    rates = [[backbone.get_layer(f"trans{s}_{b}").drop_path for b in range(d)] for s, d in ((1, 4), (2, 3))]
    np.testing.assert_allclose(rates[0], [0.0, 0.1, 0.2, 0.3], atol=1e-7)
    np.testing.assert_allclose(rates[1], [0.0, 0.15, 0.3], atol=1e-7)


@pytest.mark.parametrize("length", [1, 3, 16, 24, 40])
def test_axial_position_embedding_is_torchs_linear_interpolation(length):
    table = np.random.RandomState(length).randn(16, 5).astype("float32")
    # torch F.interpolate(mode="linear", align_corners=False): half-pixel source positions (float32), clamped.
    scale = np.float32(16 / length)
    source = np.maximum((np.arange(length, dtype="float32") + np.float32(0.5)) * scale - np.float32(0.5), 0)
    low = np.minimum(np.floor(source).astype(int), 15)
    high = np.minimum(low + 1, 15)
    weight = (source - low)[:, None]
    expected = table[low] * (1 - weight) + table[high] * weight
    got = to_numpy(SeaAttention.position_embedding(ops.convert_to_tensor(table), length))
    np.testing.assert_allclose(got, expected[None], rtol=1e-5, atol=1e-5)


def test_arguments_the_reference_cannot_run_are_refused():
    with pytest.raises(ValueError, match="attn_ratio"):
        SeaAttention(key_dim=8, num_heads=2, attn_ratio=4)
    with pytest.raises(ValueError, match="embed_dims"):
        LightHead(channels=32, embed_dims=[16, 24], is_dw=True)
    with pytest.raises(ValueError, match="channels"):
        SeaFormerBackbone(**{**SEAFORMER_LAYOUTS["b"], "channels": [16, 32, 64, 128, 192, 320]})


def test_tiny_backbone_and_head_round_trip_through_a_keras_file(golden, tiny_model, tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, tiny_model["head"](tiny_model["backbone"](inputs)))
    images = nchw_to_nhwc(golden["input/image_nchw"]).astype("float32")
    expected = to_numpy(model(images, training=False))
    path = str(tmp_path / "seaformer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[1], SeaFormerBackbone)
    assert loaded.layers[1].get_config()["cfgs"] == tiny_model["backbone"].get_config()["cfgs"]
    np.testing.assert_array_equal(to_numpy(loaded(images, training=False)), expected)
    assert_close(expected, golden, "out/head_features_nchw")


def test_mixed_precision_stays_close_to_float32(golden, tiny_model):
    if keras.backend.backend() == "jax":
        pytest.skip(
            "backend: float16 inference of this family is checked on TensorFlow and PyTorch; on JAX each op "
            "of the tiny model compiles again in float16 (CI time); JAX mixed precision trains in test_training.py"
        )
    backbone, head = build_tiny(golden, dtype="mixed_float16")
    state = tiny_model["state"]
    load_reference_weights(backbone, state, prefix="backbone.")
    load_reference_weights(head, state, prefix="decode_head.", strict=False)
    images = nchw_to_nhwc(golden["input/image_nchw"]).astype("float32")
    features = head(backbone(images, training=False), training=False)
    assert keras.backend.standardize_dtype(features.dtype) == "float16"
    assert_close(ops.cast(features, "float32"), golden, "out/head_features_nchw", rtol=1e-2)  # measured 1.5e-3


# mmseg's counts of the reference configs (/shared/reference/lightweight-params.md): the backbone, and
# the LightHead with its 150-class 1x1 `conv_seg` (our head stops before the classifier).
FULL_SIZE_COUNTS = {"b": (8_485_664, 119_990), "l": (13_725_504, 226_006)}


def test_imagenet_file_loads_its_ema_weights_as_the_reference_does(golden, tiny_model, tmp_path):
    """A SeaFormer ImageNet file (timm's training checkpoint: `state_dict` and `state_dict_ema`, keys
    without `backbone.`, a classifier) loads its EMA weights, as the reference's backbone does."""
    import torch

    from ssaseg_keras.convert import load_pretrained_backbone

    ema = {k[len("backbone."):]: torch.as_tensor(v) for k, v in tiny_model["state"].items() if k.startswith("backbone.")}
    trained = {k: v + 1.0 if v.is_floating_point() else v for k, v in ema.items()}
    for weights in (ema, trained):
        weights.update({"classifier.weight": torch.zeros(10, 16), "classifier.bias": torch.zeros(10)})
    path = tmp_path / "SeaFormer_tiny_cls.pth.tar"
    torch.save({"epoch": 1, "state_dict": trained, "state_dict_ema": ema}, path)
    backbone, _ = build_tiny(golden)
    report = load_pretrained_backbone(backbone, path, family="seaformer")
    assert {"classifier.weight", "classifier.bias"} <= set(report.skipped)
    assert len(report.loaded) == len(list(reference_mapping(backbone)))
    for got, want in zip(backbone.weights, tiny_model["backbone"].weights):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want), err_msg=got.path)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["b", "l"])
def test_full_size_parameter_counts_are_the_references(size):
    if keras.backend.backend() == "jax":  # shapes make the counts, the same on every backend
        pytest.skip("backend: counted on TensorFlow and PyTorch; JAX compiles each initialiser")
    backbone_count, head_count = FULL_SIZE_COUNTS[size]
    backbone = SeaFormerBackbone(**SEAFORMER_LAYOUTS[size])
    head = LightHead(**LIGHT_HEAD_PRESETS[size])
    head.build([tuple(t.shape) for t in backbone.outputs])
    assert count_parameters(backbone.trainable_variables) == backbone_count
    assert count_parameters(head.trainable_variables) + head.channels * 150 + 150 == head_count
    assert backbone.output_strides == ([8, 32, 64] if size == "b" else [8, 16, 32, 64])
    assert backbone.stage_channels == ([64, 192, 256] if size == "b" else [128, 192, 256, 320])
