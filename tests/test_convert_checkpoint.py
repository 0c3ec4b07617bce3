"""Reference checkpoints -> models: strict whole-model conversion, head parity, errors, pretrained MSCAN, CLI."""

from __future__ import annotations

import os
import sys

import keras
import numpy as np
import pytest
import torch  # a test requirement: the parity suites never skip
from keras import ops
from models_helpers import GOLDEN_NPZ, GOLDEN_PTH, deterministic_nmf, fixed_bases, tiny_config

from ssaseg_keras.convert import (
    convert_checkpoint,
    counts_by_part,
    load_pretrained_backbone,
    read_torch_checkpoint,
)
from ssaseg_keras.models import build_segmentor
from ssaseg_keras.ops.resize import bilinear_matrix
from ssaseg_keras.utils.errors import CheckpointError, UserError

TINY_RECIPE = """
model:
  family: segnext
  size: t
  num_classes: 7
  ssa: true
  seed: 3
  backbone: {embed_dims: [8, 16, 24, 32], mlp_ratios: [2, 2, 2, 2], depths: [1, 1, 2, 1]}
  head: {channels: 32, ham_channels: 32, rank: 4, groups: 8}
data:
  source: synthetic
  num_classes: 7
"""


@pytest.fixture(scope="module")
def state():
    return read_torch_checkpoint(GOLDEN_PTH)


@pytest.fixture(scope="module")
def converted():
    model, report = convert_checkpoint(GOLDEN_PTH, build_segmentor(tiny_config(ssa=True)))
    return model, report


def test_whole_checkpoint_converts_strictly(converted, state):
    model, report = converted
    assert counts_by_part(report.loaded) == {"backbone": 218, "decode_head": 30}
    # 15 BatchNorm num_batches_tracked + the loss's empty_weight
    assert len(report.skipped) == 16
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model.classifier.center_pos), state["decode_head.center_pos.weight"]
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model.classifier.conv_seg.kernel),
        state["decode_head.conv_seg.weight"][:, :, 0, 0].T,
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model.decode_head.hamburger.ham_out.norm_layer.gamma),
        state["decode_head.hamburger.ham_out.gn.weight"],
    )


def numpy_group_norm(x, gamma, beta, groups, eps=1e-5):
    b, h, w, c = x.shape
    g = x.reshape(b, h * w, groups, c // groups).astype("float64")
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * gamma + beta


def numpy_light_ham_head(stages, sd, rank, groups):
    """The spec's LightHamHead in NumPy (float64) with the deterministic test bases."""
    from test_models_segnext import numpy_nmf

    def conv(x, name, bias=True):
        out = x @ sd[f"{name}.weight"][:, :, 0, 0].T
        return out + sd[f"{name}.bias"] if bias else out

    def gn(x, name):
        return numpy_group_norm(x, sd[f"{name}.weight"], sd[f"{name}.bias"], groups)

    h, w = stages[1].shape[1:3]
    resized = []
    for x in stages[1:]:
        rows, cols = bilinear_matrix(x.shape[1], h, False), bilinear_matrix(x.shape[2], w, False)
        resized.append(np.einsum("oh,bhwc->bowc", rows, np.einsum("pw,bhwc->bhpc", cols, x)))
    x = np.maximum(gn(conv(np.concatenate(resized, -1), "squeeze.conv", False), "squeeze.gn"), 0)
    enjoy = np.maximum(conv(x, "hamburger.ham_in.conv"), 0)
    b, c = x.shape[0], x.shape[-1]
    enjoy = numpy_nmf(enjoy.reshape(b, h * w, c), fixed_bases(b, c, rank), 7).reshape(b, h, w, c)
    enjoy = gn(conv(enjoy, "hamburger.ham_out.conv", False), "hamburger.ham_out.gn")
    x = np.maximum(x + enjoy, 0)
    return np.maximum(gn(conv(x, "align.conv", False), "align.gn"), 0)


def test_converted_head_matches_a_numpy_transcription(converted, state):
    model, _ = converted
    golden = np.load(GOLDEN_NPZ)
    stages = [np.transpose(golden[f"out/stage{i}_nchw"], (0, 2, 3, 1)) for i in range(1, 5)]
    head_sd = {k[len("decode_head."):]: v for k, v in state.items() if k.startswith("decode_head.")}
    expected = numpy_light_ham_head(stages, head_sd, rank=4, groups=8)
    with deterministic_nmf():
        got = ops.convert_to_numpy(model.decode_head(stages, training=False))
    assert got.shape == (2, 8, 12, 32)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_ssa_part_of_the_model_equals_a_standalone_loaded_classifier(converted, state):
    from ssaseg_keras.convert import load_reference_weights
    from ssaseg_keras.layers.ssa import SSAClassifier

    model, _ = converted
    features = np.random.RandomState(0).randn(2, 8, 12, 32).astype("float32")
    alone = SSAClassifier(7, dropout=0.0)
    alone.build(features.shape)
    load_reference_weights(alone, state, prefix="decode_head.", ignore=("squeeze.*", "hamburger.*", "align.*"))
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.classifier(features)), ops.convert_to_numpy(alone(features)), atol=1e-6
    )


def test_strict_errors_list_the_names(state):
    wrong_classes = build_segmentor(tiny_config(ssa=True, num_classes=9))
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(GOLDEN_PTH, wrong_classes)
    message = str(info.value)
    assert "mscan_tiny_ssa.pth" in message
    assert "decode_head.conv_seg.weight: reference (7, 32, 1, 1)" in message
    assert "decode_head.center_pos.weight" in message

    baseline = build_segmentor(tiny_config(ssa=False))
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(GOLDEN_PTH, baseline)
    message = str(info.value)
    assert "reference weights with no place in the model" in message
    for name in ("decode_head.center_pos.weight", "decode_head.get_feat_pos.weight", "decode_head.center_proj.weight"):
        assert name in message
    # Non-strict loads what fits: the baseline gets backbone, head and conv_seg.
    _, report = convert_checkpoint(GOLDEN_PTH, baseline, strict=False)
    assert counts_by_part(report.loaded) == {"backbone": 218, "decode_head": 13}


def test_inference_model_skips_the_teacher():
    slim = build_segmentor(tiny_config(ssa=True), training=False)
    _, report = convert_checkpoint(GOLDEN_PTH, slim)
    assert counts_by_part(report.loaded) == {"backbone": 218, "decode_head": 23}
    assert sum(name.startswith("decode_head.gt_") for name in report.skipped) == 7


def test_unreadable_files(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_torch_checkpoint(tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(open(GOLDEN_PTH, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match="corrupt.pth' cannot be read as a PyTorch weights file"):
        read_torch_checkpoint(corrupt)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UserError, match="needs PyTorch, which is not installed"):
        read_torch_checkpoint(GOLDEN_PTH)


def test_backbone_only_checkpoint_is_refused_as_a_whole_model(tmp_path, state):
    path = tmp_path / "mscan_tiny.pth"
    torch.save({k[len("backbone."):]: torch.from_numpy(v) for k, v in state.items() if k.startswith("backbone.")}, path)
    with pytest.raises(CheckpointError, match="model.pretrained"):
        convert_checkpoint(path, build_segmentor(tiny_config(ssa=False)))


def test_imagenet_pretrained_mscan(tmp_path, state):
    # An MSCAN classification checkpoint: no `backbone.` prefix, plus a classifier `head`.
    weights = {k[len("backbone."):]: torch.from_numpy(v) for k, v in state.items() if k.startswith("backbone.")}
    weights["head.weight"] = torch.zeros(1000, 32)
    weights["head.bias"] = torch.zeros(1000)
    path = tmp_path / "mscan_tiny_imagenet.pth"
    torch.save({"state_dict": weights}, path)
    model = build_segmentor(tiny_config(ssa=True))
    report = load_pretrained_backbone(model, path)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model.backbone.get_layer("block3_1").layer_scale_1),
        state["backbone.block3.1.layer_scale_1"],
    )
    assert report.num_loaded == 218 and {"head.weight", "head.bias"} <= set(report.skipped)
    # Training loads `model.pretrained` itself and prints the count, by part, and the skipped names.
    from ssaseg_keras.recipes import validate_recipe
    from ssaseg_keras.training.trainer import build_training_model

    recipe = validate_recipe({"model": tiny_config(ssa=True, pretrained=str(path)), "data": {"source": "synthetic", "num_classes": 7}})
    trained = build_training_model(recipe)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(trained.backbone.get_layer("block3_1").layer_scale_1),
        state["backbone.block3.1.layer_scale_1"],
    )
    assert trained.pretrained_report.num_loaded == 218
    text = trained.pretrained_report.describe()
    assert text.startswith("loaded 218 weights (block1: 36, ") and "not used: head.weight, head.bias;" in text
    assert text.endswith("skipped 15 buffers without weights")


def test_cli_convert_writes_a_loadable_keras_file(tmp_path, capsys):
    from ssaseg_keras_cli.main import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    output = tmp_path / "tiny.keras"
    assert main(["convert", GOLDEN_PTH, "--recipe", str(recipe), "--output", str(output), "--inference"]) == 0
    printed = capsys.readouterr().out
    assert "loaded 248 weights (backbone: 218, decode_head: 30); skipped 16 buffers without weights" in printed
    assert os.path.isfile(output) and not [p for p in os.listdir(tmp_path) if p.startswith(".convert-")]
    loaded = keras.saving.load_model(output)
    assert not loaded.classifier.with_teacher
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded.classifier.center_pos),
        read_torch_checkpoint(GOLDEN_PTH)["decode_head.center_pos.weight"],
    )
    # A preset directory instead: the task (preprocessor included) loads with the same weights.
    assert main(["convert", GOLDEN_PTH, "--recipe", str(recipe), "--preset-dir", str(tmp_path / "preset"), "--inference"]) == 0
    assert "wrote preset" in capsys.readouterr().out
    from ssaseg_keras.models import ImageSegmenter

    task = ImageSegmenter.from_preset(str(tmp_path / "preset"))
    assert not task.classifier.with_teacher and task.preprocessor.image_converter.std == [58.395, 57.12, 57.375]
    np.testing.assert_array_equal(
        ops.convert_to_numpy(task.classifier.center_pos),
        read_torch_checkpoint(GOLDEN_PTH)["decode_head.center_pos.weight"],
    )
    with pytest.raises(SystemExit) as info:
        main(["convert", GOLDEN_PTH, "--recipe", str(recipe), "--output", str(tmp_path / "x.h5")])
    assert info.value.code == 2
    assert "must end with .keras" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", GOLDEN_PTH, "--recipe", str(recipe)])
    assert "give --output MODEL.keras, --preset-dir DIR, or both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", GOLDEN_PTH, "--recipe", str(recipe), "--output", str(output), "--set", "model.num_classes=9", "--set", "data.num_classes=9"])
    assert "decode_head.conv_seg.weight" in capsys.readouterr().err
