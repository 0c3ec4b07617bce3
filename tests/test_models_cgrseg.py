"""CGRSeg (EfficientFormerV2 + CGRSeg head, baseline second stage or SSA): golden parity with the
reference, exact parameter counts, shapes, a .keras round trip.

`tests/data/cgrseg_tiny_ssa.{pth,npz}` are the project's golden files (see /shared/golden/README.md,
"cgrseg_tiny_ssa"): a tiny EfficientFormerV2 (layers [1, 1, 2, 1], one attention block in stages 3 and
4, attentions with key_dim 8, 4 heads, ratio 2) and CGRSeg_ssa with random weights and BN statistics,
7 classes, eval-mode outputs on a 64 x 96 image. The golden head is the SSA one, so the baseline's
second stage is checked against `tests/data/cgr_head_baseline.npz` (tests/reference_tools/
cgr_head_baseline.py: mmseg's SpatialGatherModule + mmcv's ContextBlock modules, random weights).
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import BACKEND, DATA_DIR, nchw_to_nhwc, to_numpy, value_and_grad
from keras import ops

import ssaseg_keras.convert.cgrseg  # noqa: F401  (registers the CGRSeg mappings)
from ssaseg_keras.convert import load_reference_weights, read_torch_checkpoint, reference_mapping
from ssaseg_keras.convert.cgrseg import BACKBONE_IGNORE
from ssaseg_keras.layers.ssa import SSAClassifier
from ssaseg_keras.models.backbones.efficientformer_v2 import (
    Attention4D,
    Attention4DDownsample,
    EfficientFormerV2Backbone,
    bicubic_resize_axis,
)
from ssaseg_keras.models.heads.cgr_head import (
    CGRBaselineClassifier,
    CGRSegHead,
    RCMBlock,
    adaptive_average_pool_2d,
)

GOLDEN_NPZ = DATA_DIR / "cgrseg_tiny_ssa.npz"
GOLDEN_PTH = DATA_DIR / "cgrseg_tiny_ssa.pth"
BASELINE_NPZ = DATA_DIR / "cgr_head_baseline.npz"
HEAD_ARGS = ("channels", "in_index", "is_dw", "dw_size", "neck_size", "next_repeat", "square_kernel_size", "ratio")


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN_NPZ))


def tiny_arguments(golden):
    """(backbone kwargs, head kwargs) of the golden model, from the config stored in the npz."""
    config = json.loads(str(golden["config/json"][0]))
    reference = config["backbone"]
    attention = config["attention_defaults"]["Attention4D"]
    downsample = config["attention_defaults"]["Attention4DDownsample"]
    backbone = {
        "layers": reference["layers"],
        "embed_dims": reference["embed_dims"],
        "e_ratios": [reference["e_ratios"][str(i)] for i in range(4)],
        "vit_num": reference["vit_num"],
        "resolution": reference["resolution"],
        "drop_path_rate": reference["drop_path_rate"],
        "key_dim": attention["key_dim"],
        "num_heads": attention["num_heads"],
        "attn_ratio": attention["attn_ratio"],
        "downsample_key_dim": downsample["key_dim"],
        "downsample_num_heads": downsample["num_heads"],
        "downsample_attn_ratio": downsample["attn_ratio"],
    }
    head = {k: config["decode_head"][k] for k in HEAD_ARGS}
    return backbone, head


def build_tiny(golden, dtype=None, **head_extra):
    backbone_args, head_args = tiny_arguments(golden)
    backbone = EfficientFormerV2Backbone(**backbone_args, dtype=dtype)
    head = CGRSegHead(**head_args, **head_extra, dtype=dtype)
    head.build([tuple(t.shape) for t in backbone.outputs])
    return backbone, head


def assert_close(got, expected_nchw, name, rtol=1e-4):
    expected = nchw_to_nhwc(expected_nchw)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=rtol, atol=rtol * np.abs(expected).max(), err_msg=name)


def golden_images(golden):
    return nchw_to_nhwc(golden["input/image_nchw"]).astype("float32")


@pytest.fixture(scope="module")
def tiny_model(golden):
    """The golden tiny backbone, head and SSA classifier with the checkpoint loaded."""
    state = read_torch_checkpoint(GOLDEN_PTH)
    backbone, head = build_tiny(golden)
    classifier = SSAClassifier(7, dropout=0.0, with_teacher=True)
    classifier.build(head.compute_output_shape([tuple(t.shape) for t in backbone.outputs]))
    backbone_report = load_reference_weights(backbone, state, prefix="backbone.", ignore=BACKBONE_IGNORE)
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

    buffers = {n for n in weights("backbone.") if "attention_bias_idxs" in n or n.endswith(".attention_biases")}
    assert len(buffers) == 9  # 3 attentions x (attention_biases, attention_bias_idxs, attention_bias_idxs_seg)
    assert set(backbone_report.loaded) == weights("backbone.") - buffers
    assert buffers <= set(backbone_report.skipped)
    # The head and the SSA classifier share decode_head.*: together they take every name, each once.
    assert not set(head_report.loaded) & set(classifier_report.loaded)
    assert set(head_report.loaded) | set(classifier_report.loaded) == weights("decode_head.")
    assert {n.split(".")[0] for n in head_report.loaded} == {"trans", "meta", "SIM", "conv", "linear_fuse"}
    for part in ("backbone", "head", "classifier"):
        layer = tiny_model[part]
        loaded = {id(v) for _, v, _ in reference_mapping(layer)}
        assert loaded == {id(v) for v in layer.weights if "seed_generator" not in v.path}, part


def test_attention_bias_indices_are_the_references(tiny_model):
    """The (queries, keys) index tables we rebuild from the resolution equal the checkpoint's buffers."""
    state, backbone = tiny_model["state"], tiny_model["backbone"]
    layers = {
        "network.4.1.token_mixer": backbone.get_layer("network_4_1").token_mixer,
        "network.5.attn": backbone.get_layer("network_5").attn,
        "network.6.0.token_mixer": backbone.get_layer("network_6_0").token_mixer,
    }
    for name, layer in layers.items():
        assert isinstance(layer, (Attention4D, Attention4DDownsample))
        np.testing.assert_array_equal(layer.bias_index, state[f"backbone.{name}.attention_bias_idxs_seg"], err_msg=name)


def test_tiny_cgrseg_matches_the_reference(golden, tiny_model):
    stages = tiny_model["backbone"](ops.convert_to_tensor(golden_images(golden)), training=False)
    assert [tuple(s.shape) for s in stages] == [(2, 16, 24, 8), (2, 8, 12, 10), (2, 4, 6, 12), (2, 2, 3, 16)]
    for index, stage in enumerate(stages, start=1):
        assert_close(stage, golden[f"out/stage{index}_nchw"], f"stage{index}")
    features = tiny_model["head"](stages, training=False)
    assert_close(features, golden["out/head_features_nchw"], "head features")
    classifier = tiny_model["classifier"]
    assert_close(classifier.coarse_logits(features), golden["out/coarse_logits_nchw"], "coarse logits")
    assert_close(classifier(features, training=False), golden["out/logits_nchw"], "SSA logits")


def torch_bicubic_1d(values, out_size):
    """A per-output loop of torch's 1-D bicubic (align_corners=False, A = -0.75), written independently."""
    a, size = -0.75, len(values)

    def weight(d):
        d = abs(d)
        if d <= 1:
            return ((a + 2) * d - (a + 3)) * d * d + 1
        if d < 2:
            return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return 0.0

    scale, out = np.float32(size) / np.float32(out_size), []  # torch's float32 scale and positions
    for i in range(out_size):
        source = float(np.float32(np.float32(i + 0.5) * scale) - np.float32(0.5))
        base = int(np.floor(source))
        out.append(sum(weight(source - k) * values[min(max(k, 0), size - 1)] for k in range(base - 1, base + 3)))
    return np.asarray(out)


@pytest.mark.parametrize("sizes", [(4, 6), (16, 24), (256, 256), (256, 96), (1024, 40)])
def test_bicubic_resize_is_torchs_interpolation(sizes):
    in_size, out_size = sizes
    values = np.random.RandomState(in_size + out_size).randn(3, in_size).astype("float32")
    got = to_numpy(bicubic_resize_axis(ops.convert_to_tensor(values), out_size, axis=1))
    expected = np.stack([torch_bicubic_1d(row, out_size) for row in values])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    ones = to_numpy(bicubic_resize_axis(ops.ones((in_size, 2)), out_size, axis=0))
    np.testing.assert_allclose(ones, 1.0, atol=1e-5)  # the 4 weights sum to 1


def test_adaptive_average_pool_uses_torchs_bins():
    x = np.random.RandomState(0).randn(1, 5, 7, 2).astype("float32")
    got = to_numpy(adaptive_average_pool_2d(ops.convert_to_tensor(x), 2, 3))
    rows, cols = [(0, 3), (2, 5)], [(0, 3), (2, 5), (4, 7)]
    expected = np.stack([np.stack([x[0, r0:r1, c0:c1].mean(axis=(0, 1)) for c0, c1 in cols]) for r0, r1 in rows])
    np.testing.assert_allclose(got[0], expected, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def baseline():
    return dict(np.load(BASELINE_NPZ))


def baseline_classifier(baseline):
    classifier = CGRBaselineClassifier(7, dropout=0.1)
    classifier.build((None, None, None, 20))
    state = {k[len("state/") :]: v for k, v in baseline.items() if k.startswith("state/")}
    report = load_reference_weights(classifier, state, prefix="decode_head.")
    assert report.num_loaded == len(state) == 10
    return classifier


def test_baseline_second_stage_matches_the_reference(baseline):
    classifier = baseline_classifier(baseline)
    features = ops.convert_to_tensor(nchw_to_nhwc(baseline["input/features_nchw"]))
    pre_fuse = ops.convert_to_tensor(nchw_to_nhwc(baseline["input/pre_fuse_nchw"]))
    logits, coarse = classifier.logits_and_coarse(features, pre_fuse, training=False)
    assert_close(coarse, baseline["out/coarse_logits_nchw"], "coarse logits")
    assert_close(logits, baseline["out/logits_nchw"], "logits")
    assert_close(classifier(features, pre_fuse), baseline["out/logits_nchw"], "call")
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


def test_baseline_loss_gradient_reaches_the_features_through_the_coarse_logits(baseline):
    """The reference's only decode loss (cross-entropy on the final logits, ignore 255, mean over all
    pixels) and its gradients: F gets one only through the spatial gather's softmax of coarse."""
    classifier = baseline_classifier(baseline)
    labels = baseline["input/labels"]
    valid = ops.convert_to_tensor((labels != 255).astype("float32"))
    one_hot = ops.one_hot(ops.convert_to_tensor(np.where(labels == 255, 0, labels)), 7)

    def loss_of(features_nhwc, pre_fuse_nhwc):
        logits = classifier(features_nhwc, pre_fuse_nhwc)
        nll = -ops.sum(one_hot * ops.log_softmax(logits, axis=-1), axis=-1)
        return ops.mean(nll * valid)

    features = nchw_to_nhwc(baseline["input/features_nchw"])
    pre_fuse = nchw_to_nhwc(baseline["input/pre_fuse_nchw"])
    loss, grad = value_and_grad(lambda f: loss_of(f, ops.convert_to_tensor(pre_fuse)), features)
    np.testing.assert_allclose(loss, baseline["out/loss"][0], rtol=1e-5)
    assert_close(grad, baseline["grad/features_nchw"], "d loss / d features")
    _, grad = value_and_grad(lambda p: loss_of(ops.convert_to_tensor(features), p), pre_fuse)
    assert_close(grad, baseline["grad/pre_fuse_nchw"], "d loss / d pre_fuse")


def test_shapes_for_other_sizes_and_training_mode(golden):
    backbone, head = build_tiny(golden, return_pre_fuse=True)
    assert backbone.stage_channels == [8, 10, 12, 16]
    assert sorted(backbone.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    images = np.random.RandomState(1).randn(1, 96, 160, 3).astype("float32")
    stages = backbone(images, training=False)
    assert [tuple(s.shape) for s in stages] == [(1, 24, 40, 8), (1, 12, 20, 10), (1, 6, 10, 12), (1, 3, 5, 16)]
    features, pre_fuse = head(stages, training=False)
    assert tuple(features.shape) == tuple(pre_fuse.shape) == (1, 12, 20, 20)
    assert head.compute_output_shape([tuple(s.shape) for s in stages]) == [(1, 12, 20, 20)] * 2
    classifier = CGRBaselineClassifier(7)
    logits = classifier(features, pre_fuse, training=True)
    assert tuple(logits.shape) == (1, 12, 20, 7)
    features, _ = head(backbone(images, training=True), training=True)
    assert np.isfinite(to_numpy(features)).all()


def test_drop_path_rates_rise_over_all_blocks(golden):
    backbone_args, _ = tiny_arguments(golden)
    with keras.StatelessScope():
        backbone = EfficientFormerV2Backbone(
            **{**backbone_args, "layers": [1, 2, 2, 1], "e_ratios": [[4], [4, 3], [4, 3], [3]], "drop_path_rate": 0.5}
        )
    names = ["network_0_0", "network_2_0", "network_2_1", "network_4_0", "network_4_1", "network_6_0"]
    np.testing.assert_allclose([backbone.get_layer(n).drop_path for n in names], [0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert [backbone.get_layer(n).attention for n in names] == [False] * 4 + [True] * 2
    assert backbone.get_layer("network_4_1").token_mixer.stride == 2
    assert backbone.get_layer("network_6_0").token_mixer.stride is None


def test_arguments_the_reference_cannot_run_are_refused():
    with pytest.raises(ValueError, match="ratio"):
        RCMBlock(ratio=2)
    with pytest.raises(ValueError, match="odd"):
        RCMBlock(dw_size=10)
    with pytest.raises(ValueError, match="stride"):
        Attention4D(stride=4)
    with pytest.raises(ValueError, match="4 stages"):
        EfficientFormerV2Backbone(layers=[1, 1, 1], embed_dims=[8, 8, 8], e_ratios=[[4], [4], [4]])


def test_tiny_model_round_trips_through_a_keras_file(golden, tiny_model, tmp_path):
    backbone, head = build_tiny(golden, return_pre_fuse=True)
    state = tiny_model["state"]
    load_reference_weights(backbone, state, prefix="backbone.", ignore=BACKBONE_IGNORE)
    load_reference_weights(head, state, prefix="decode_head.", strict=False)
    inputs = keras.Input((None, None, 3))
    features, pre_fuse = head(backbone(inputs))
    classifier = CGRBaselineClassifier(7, name="classifier")
    model = keras.Model(inputs, [features, classifier(features, pre_fuse)])
    images = golden_images(golden)
    expected = [to_numpy(t) for t in model(images, training=False)]
    assert_close(expected[0], golden["out/head_features_nchw"], "head features")
    path = str(tmp_path / "cgrseg.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[1], EfficientFormerV2Backbone)
    assert loaded.layers[1].get_config()["e_ratios"] == backbone.get_config()["e_ratios"]
    for got, want in zip(loaded(images, training=False), expected):
        np.testing.assert_array_equal(to_numpy(got), want)


def test_images_of_unknown_size_in_a_tensorflow_graph(golden, tiny_model):
    if BACKEND != "tensorflow":
        pytest.skip("backend: unknown sizes inside a traced graph are a TensorFlow (SavedModel) matter")
    import tensorflow as tf

    backbone, head = tiny_model["backbone"], tiny_model["head"]

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    def features(images):
        return head(backbone(images, training=False), training=False)

    assert_close(features(golden_images(golden)), golden["out/head_features_nchw"], "graph features")


def test_mixed_precision_stays_close_to_float32(golden, tiny_model):
    if keras.backend.backend() == "jax":
        pytest.skip(
            "backend: float16 inference of this family is checked on TensorFlow and PyTorch; on JAX each op "
            "of the tiny model compiles again in float16 (CI time); JAX mixed precision trains in test_training.py"
        )
    backbone, head = build_tiny(golden, dtype="mixed_float16")
    state = tiny_model["state"]
    load_reference_weights(backbone, state, prefix="backbone.", ignore=BACKBONE_IGNORE)
    load_reference_weights(head, state, prefix="decode_head.", strict=False)
    features = head(backbone(golden_images(golden), training=False), training=False)
    assert keras.backend.standardize_dtype(features.dtype) == "float16"
    assert_close(ops.cast(features, "float32"), golden["out/head_features_nchw"], "features", rtol=1e-2)


def test_imagenet_file_loads_as_the_reference_loads_it(golden, tiny_model, tmp_path):
    """An EfficientFormerV2 ImageNet file (no `backbone.` prefix, a classifier, 7x7-grid attention biases,
    no `attention_biases_seg`) loads strictly: every backbone weight it has is loaded, the segmentation
    biases it lacks stay at zero as in the reference and are named, its classifier parts are skipped.
    (Full-size counts and GFLOPs: tests/test_models_lightweight.py.)"""
    import torch

    from ssaseg_keras.convert import load_pretrained_backbone
    from ssaseg_keras.utils.errors import CheckpointError

    state = tiny_model["state"]
    imagenet = {k[len("backbone."):]: torch.as_tensor(v) for k, v in state.items()
                if k.startswith("backbone.") and not k.endswith("attention_biases_seg")}  # fmt: skip
    width = tiny_arguments(golden)[0]["embed_dims"][-1]
    imagenet.update({"norm.weight": torch.ones(width), "norm.bias": torch.zeros(width),
                     "head.weight": torch.zeros(10, width), "head.bias": torch.zeros(10),
                     "dist_head.weight": torch.zeros(10, width), "dist_head.bias": torch.zeros(10)})  # fmt: skip
    path = tmp_path / "eformer_tiny.pth"
    torch.save({"model": imagenet}, path)
    backbone, _ = build_tiny(golden)
    report = load_pretrained_backbone(backbone, path, family="cgrseg")
    biases = [name for name, _, _ in reference_mapping(backbone) if name.endswith("attention_biases_seg")]
    assert len(biases) == 3 and sorted(report.kept) == sorted(biases)
    assert "not in the file, kept at their initial values" in report.describe()
    assert {"head.weight", "dist_head.weight", "norm.weight"} <= set(report.skipped)
    assert len(report.loaded) == len(list(reference_mapping(backbone))) - len(biases)
    for name, variable, transform in reference_mapping(backbone):
        expected = np.zeros(variable.shape) if name in biases else transform(np.asarray(state["backbone." + name], "float32"))
        np.testing.assert_allclose(to_numpy(variable), expected, rtol=1e-6, err_msg=name)
    # A file of another size stops with one message naming the file and the fix.
    del imagenet["network.0.0.mlp.fc1.weight"]
    torch.save({"model": imagenet}, path)
    with pytest.raises(CheckpointError, match=r"(?s)eformer_tiny\.pth.*network\.0\.0\.mlp\.fc1\.weight.*eformer_s2_450"):
        load_pretrained_backbone(build_tiny(golden)[0], path, family="cgrseg")
