"""AFFormer + its head (+ SSA): golden parity with the reference, the shared-tensor checks of the
converter, exact parameter counts, shapes, a .keras round trip.

`tests/data/afformer_tiny_ssa.{pth,npz}` are the project's golden files (see /shared/golden/README.md,
"afformer_tiny_ssa"): a tiny AFFormer (embed dims [16, 24, 32, 40], layers [1, 2, 1, 1], 8 heads) and CLS_ssa
(channels 16, GN 4 groups) with random weights and BN statistics, 7 classes, eval-mode outputs on a 64 x 96 image.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import DATA_DIR, nchw_to_nhwc, to_numpy
from keras import ops

import ssaseg_keras.convert.afformer  # noqa: F401  (registers the AFFormer / head mappings)
from ssaseg_keras.convert import (
    ReferenceWeightsError,
    load_reference_weights,
    read_torch_checkpoint,
    reference_mapping,
)
from ssaseg_keras.convert.afformer import AFF_HEAD_IGNORED
from ssaseg_keras.layers.ssa import SSAClassifier
from ssaseg_keras.models.backbones.afformer import (
    AFFORMER_LAYOUTS,
    AFFormerBackbone,
    AFFormerEncoder,
    AFFormerFrequencyFilter,
    resize_aligned,
)
from ssaseg_keras.models.heads.aff_head import AFFormerHead
from ssaseg_keras.ops.resize import resize_bilinear

GOLDEN_NPZ = DATA_DIR / "afformer_tiny_ssa.npz"
GOLDEN_PTH = DATA_DIR / "afformer_tiny_ssa.pth"
BUFFERS = ("num_batches_tracked", "empty_weight")


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN_NPZ))


def tiny_arguments(golden):
    """(backbone kwargs, head kwargs) of the golden model, from the config stored in the npz."""
    config = json.loads(str(golden["config/json"][0]))
    # `strides` is accepted and ignored by the reference; `num_stages` is always 4.
    backbone = {k: v for k, v in config["backbone"].items() if k not in ("type", "num_stages", "strides")}
    head_config = config["decode_head"]
    head = {
        "channels": head_config["channels"],
        "groups": head_config["norm_cfg"]["num_groups"],
        "in_index": head_config["in_index"],
    }
    return backbone, head


def build_tiny(golden, dtype=None):
    backbone_args, head_args = tiny_arguments(golden)
    backbone = AFFormerBackbone(**backbone_args, dtype=dtype)
    head = AFFormerHead(**head_args, dtype=dtype)
    head.build([tuple(t.shape) for t in backbone.outputs])
    return backbone, head


def assert_close(got, golden, key, rtol=1e-4):
    expected = nchw_to_nhwc(golden[key])
    got = to_numpy(got)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max(), err_msg=key)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def weights(state, prefix):
    return {k[len(prefix) :] for k in state if k.startswith(prefix) and not k.endswith(BUFFERS)}


@pytest.fixture(scope="module")
def tiny_model(golden):
    """The golden tiny backbone, head and SSA classifier with the checkpoint loaded."""
    state = read_torch_checkpoint(GOLDEN_PTH)
    backbone, head = build_tiny(golden)
    classifier = SSAClassifier(7, dropout=0.0, with_teacher=True)
    classifier.build(head.compute_output_shape([tuple(t.shape) for t in backbone.outputs]))
    backbone_report = load_reference_weights(backbone, state, prefix="backbone.")
    head_report = load_reference_weights(head, state, prefix="decode_head.", strict=False, ignore=AFF_HEAD_IGNORED)
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
    # Strict: every backbone key is used, the repeated copies of the shared cpe / crpe included.
    assert set(backbone_report.loaded) == weights(state, "backbone.")
    assert backbone_report.num_loaded == 274  # 218 distinct tensors + 56 repeated copies
    # The head and the classifier share decode_head.*: together they take every name but the never-called
    # `align`, which the head's load skips by name.
    assert not set(head_report.loaded) & set(classifier_report.loaded)
    assert set(head_report.loaded) == {"squeeze.conv.weight", "squeeze.gn.weight", "squeeze.gn.bias"}
    align = {n for n in head_report.skipped if n.startswith("align.")}
    assert align == {"align.conv.weight", "align.gn.weight", "align.gn.bias"}
    assert set(head_report.loaded) | set(classifier_report.loaded) | align == weights(state, "decode_head.")
    # Every variable of the backbone, head and classifier received a value.
    for part in ("backbone", "head", "classifier"):
        layer = tiny_model[part]
        loaded = {id(v) for _, v, _ in reference_mapping(layer)}
        assert loaded == {id(v) for v in layer.weights if "seed_generator" not in v.path}, part


def test_shared_tensors_are_held_once(tiny_model):
    state, backbone = tiny_model["state"], tiny_model["backbone"]
    names = weights(state, "backbone.")
    variables = [v for v in backbone.weights if "seed_generator" not in v.path]
    assert len({id(v) for v in variables}) == len(variables)
    # 3 encoders x (cpe: 2 tensors, crpe: 3 convs x 2) = 24 shared tensors; the file repeats them 56 times.
    shared = [v for v in variables if "/cpe/" in v.path or "/crpe/" in v.path]
    assert len(shared) == 24
    assert len(names) - len(variables) == 56
    # One of them, under all its names.
    encoder = backbone.get_layer("stage1").encoder
    copies = sorted(n for n, v, _ in reference_mapping(backbone) if v is encoder.crpe.conv_list[2].kernel)
    assert copies == [
        "mhca_stages.1.mhca_blks.0.MHCA_layers.0.crpe.conv_list.2.weight",
        "mhca_stages.1.mhca_blks.0.MHCA_layers.0.factoratt_crpe.crpe.conv_list.2.weight",
        "mhca_stages.1.mhca_blks.0.MHCA_layers.1.crpe.conv_list.2.weight",
        "mhca_stages.1.mhca_blks.0.MHCA_layers.1.factoratt_crpe.crpe.conv_list.2.weight",
        "mhca_stages.1.mhca_blks.0.crpe.conv_list.2.weight",
    ]


def test_differing_copies_of_a_shared_tensor_are_refused(golden, tiny_model):
    state = dict(tiny_model["state"])
    key = "backbone.mhca_stages.2.mhca_blks.0.MHCA_layers.0.factoratt_crpe.crpe.conv_list.1.bias"
    state[key] = np.asarray(state[key]) + 1.0
    backbone, _ = build_tiny(golden)
    with pytest.raises(ReferenceWeightsError) as error:
        load_reference_weights(backbone, state, prefix="backbone.")
    message = str(error.value)
    assert "mhca_stages.2.mhca_blks.0.MHCA_layers.0.factoratt_crpe.crpe.conv_list.1.bias" in message
    assert "mhca_stages.2.mhca_blks.0.crpe.conv_list.1.bias" in message
    # A missing copy is a missing key, like any other.
    state = dict(tiny_model["state"])
    del state["backbone.mhca_stages.3.mhca_blks.0.MHCA_layers.0.cpe.proj.weight"]
    with pytest.raises(ReferenceWeightsError, match="MHCA_layers.0.cpe.proj.weight"):
        load_reference_weights(backbone, state, prefix="backbone.")


def test_head_without_the_ignore_names_align_as_unused(golden, tiny_model):
    _, head = build_tiny(golden)
    report = load_reference_weights(head, tiny_model["state"], prefix="decode_head.", strict=False)
    assert "align.conv.weight" not in report.skipped
    with pytest.raises(ReferenceWeightsError, match="align.conv.weight"):
        load_reference_weights(
            head, tiny_model["state"], prefix="decode_head.",
            ignore=("conv_seg.*", "get_feat_pos.*", "center_*", "gt_*", "ssa_loss.*"),
        )  # fmt: skip


def test_tiny_afformer_matches_the_reference(golden, tiny_model):
    images = ops.convert_to_tensor(nchw_to_nhwc(golden["input/image_nchw"]).astype("float32"))
    stages = tiny_model["backbone"](images, training=False)
    assert [tuple(s.shape) for s in stages] == [(2, 16, 24, 24), (2, 8, 12, 32), (2, 8, 12, 40), (2, 8, 12, 40)]
    errors = {}
    for index, stage in enumerate(stages, start=1):
        errors[f"stage{index}"] = assert_close(stage, golden, f"out/stage{index}_nchw")
    features = tiny_model["head"](stages, training=False)
    errors["features"] = assert_close(features, golden, "out/head_features_nchw")
    classifier = tiny_model["classifier"]
    errors["coarse"] = assert_close(classifier.coarse_logits(features), golden, "out/coarse_logits_nchw")
    errors["refined"] = assert_close(classifier(features, training=False), golden, "out/logits_nchw")
    print(f"\n{keras.backend.backend()} max |error| / max |expected|: {errors}")


def test_outputs_strides_and_sizes(tiny_model):
    backbone, head = tiny_model["backbone"], tiny_model["head"]
    assert backbone.stage_channels == [24, 32, 40, 40]
    assert backbone.output_strides == [4, 8, 8, 8]
    assert sorted(backbone.pyramid_outputs) == ["P2", "P3"]
    assert [tuple(t.shape) for t in backbone.outputs] == [(None, None, None, c) for c in (24, 32, 40, 40)]
    # 96 x 160: the attention paths of stages 3 and 4 run at 6 x 10 and 3 x 5, resized back to 12 x 20.
    # (predict_on_batch: one compiled graph, not op-by-op eager JAX.)
    inputs = keras.Input((None, None, 3))
    stages = backbone(inputs)
    model = keras.Model(inputs, [*stages, head(stages)])
    outputs = model.predict_on_batch(np.zeros((1, 96, 160, 3), "float32"))
    assert [tuple(s.shape) for s in outputs] == [
        (1, 24, 40, 24), (1, 12, 20, 32), (1, 12, 20, 40), (1, 12, 20, 40), (1, 12, 20, 16)
    ]  # fmt: skip
    assert tuple(head.compute_output_shape([tuple(s.shape) for s in outputs[:4]])) == (1, 12, 20, 16)
    # The smallest input: the attention paths of stages 3 and 4 run at 2 x 2 and 1 x 1.
    outputs = model.predict_on_batch(np.zeros((1, 32, 32, 3), "float32"))
    assert [tuple(s.shape[1:3]) for s in outputs] == [(8, 8), (4, 4), (4, 4), (4, 4), (4, 4)]


def test_drop_path_rates_rise_over_all_layers_including_stage_0(golden):
    backbone_args, _ = tiny_arguments(golden)
    with keras.StatelessScope():
        backbone = AFFormerBackbone(**{**backbone_args, "num_layers": [1, 2, 1, 2], "drop_path_rate": 0.5})
    rates = [
        [block.drop_path for block in backbone.get_layer(f"stage{i}").encoder.blocks] for i in (1, 2, 3)
    ]  # fmt: skip
    # linspace(0, 0.5, 6): stage 0's one (unbuilt) layer takes the 0.
    np.testing.assert_allclose(sum(rates, []), [0.1, 0.2, 0.3, 0.4, 0.5], atol=1e-7)
    assert backbone.get_layer("stage0").attention is False


def test_low_pass_pools_to_fixed_bins_on_small_maps():
    v = np.random.RandomState(0).randn(1, 2, 3, 8).astype("float32")
    got = to_numpy(AFFormerFrequencyFilter.low_pass(ops.convert_to_tensor(v)))

    def adaptive_pool(x, bins):  # torch's AdaptiveAvgPool2d bins
        rows = [(i * x.shape[1] // bins, -(-(i + 1) * x.shape[1] // bins)) for i in range(bins)]
        cols = [(j * x.shape[2] // bins, -(-(j + 1) * x.shape[2] // bins)) for j in range(bins)]
        return np.array([[x[:, a:b, c:d].mean(axis=(1, 2)) for c, d in cols] for a, b in rows]).transpose(2, 0, 1, 3)

    parts = []
    for index, bins in enumerate((1, 2, 3, 6)):
        pooled = adaptive_pool(v[..., 2 * index : 2 * index + 2], bins)
        parts.append(to_numpy(resize_bilinear(ops.convert_to_tensor(pooled), (2, 3), align_corners=False)))
    np.testing.assert_allclose(got, np.maximum(np.concatenate(parts, -1), 0.0), rtol=1e-5, atol=1e-6)


def test_aligned_resize_with_dynamic_sizes_matches_the_static_one():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("backend: only TensorFlow graphs have unknown sizes at run time")
    import tensorflow as tf

    x = np.random.RandomState(1).randn(2, 3, 5, 4).astype("float32")
    expected = to_numpy(resize_aligned(ops.convert_to_tensor(x), (8, 12)))
    traced = tf.function(
        lambda t, size: resize_aligned(t, (size[0], size[1])),
        input_signature=[tf.TensorSpec((None, None, None, 4)), tf.TensorSpec((2,), tf.int32)],
    )
    np.testing.assert_allclose(to_numpy(traced(x, tf.constant([8, 12]))), expected, rtol=1e-6, atol=1e-6)


def test_graph_over_images_of_unknown_size_matches_eager(golden, tiny_model):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("backend: only TensorFlow graphs have unknown sizes at run time")
    import tensorflow as tf

    backbone, head = tiny_model["backbone"], tiny_model["head"]
    images = nchw_to_nhwc(golden["input/image_nchw"]).astype("float32")
    traced = tf.function(
        lambda t: head(backbone(t, training=False), training=False),
        input_signature=[tf.TensorSpec((None, None, None, 3))],
    )
    assert_close(traced(images), golden, "out/head_features_nchw")
    wide = np.random.RandomState(2).rand(1, 96, 160, 3).astype("float32")
    np.testing.assert_allclose(to_numpy(traced(wide)), to_numpy(head(backbone(wide))), rtol=1e-5, atol=1e-5)


def test_arguments_the_reference_cannot_run_are_refused():
    with pytest.raises(ValueError, match="num_path"):
        AFFormerBackbone(**{**AFFORMER_LAYOUTS["b"], "num_path": [1, 2, 1, 1]})
    with pytest.raises(ValueError, match="num_heads"):
        AFFormerFrequencyFilter(num_heads=4)
    with pytest.raises(ValueError, match="divisible"):
        AFFormerEncoder(num_layers=1).build((None, None, None, 20))
    with pytest.raises(ValueError, match="in_index"):
        AFFormerHead(channels=16, groups=4, in_index=[2, 3])


def test_tiny_backbone_and_head_round_trip_through_a_keras_file(golden, tiny_model, tmp_path):
    inputs = keras.Input((None, None, 3))
    stages = tiny_model["backbone"](inputs)
    model = keras.Model(inputs, [tiny_model["head"](stages), *stages])
    images = nchw_to_nhwc(golden["input/image_nchw"]).astype("float32")
    expected = [to_numpy(t) for t in model(images, training=False)]
    path = str(tmp_path / "afformer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[1], AFFormerBackbone)
    assert loaded.layers[1].get_config()["embed_dims"] == [16, 24, 32, 40]
    assert len(loaded.layers[1].weights) == len(tiny_model["backbone"].weights)
    for got, want in zip(loaded(images, training=False), expected):
        np.testing.assert_array_equal(to_numpy(got), want)
    assert_close(expected[0], golden, "out/head_features_nchw")


def test_mixed_precision_stays_close_to_float32(golden, tiny_model):
    if keras.backend.backend() == "jax":
        pytest.skip(
            "backend: float16 inference of this family is checked on TensorFlow and PyTorch; on JAX each op "
            "of the tiny model compiles again in float16 (CI time); JAX mixed precision trains in test_training.py"
        )
    backbone, head = build_tiny(golden, dtype="mixed_float16")
    state = tiny_model["state"]
    load_reference_weights(backbone, state, prefix="backbone.")
    load_reference_weights(head, state, prefix="decode_head.", strict=False, ignore=AFF_HEAD_IGNORED)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, head(backbone(inputs)))
    features = model.predict_on_batch(nchw_to_nhwc(golden["input/image_nchw"]).astype("float32"))
    assert features.dtype == np.float16
    error = assert_close(features.astype("float32"), golden, "out/head_features_nchw", rtol=2e-2)
    print(f"\nmixed_float16 features: max |error| / max |expected| = {error:.2e}")
