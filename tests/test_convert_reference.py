"""The strict reference-weight loader: layouts, names, errors that list every offender."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import nchw_to_nhwc, to_numpy

from ssaseg_keras.convert import ReferenceWeightsError, load_reference_weights
from ssaseg_keras.layers import SSAClassifier


def reference_state(golden):
    return {k[len("weight/") :]: v for k, v in golden.items() if k.startswith("weight/")}


def built(num_classes=5, channels=32, **kwargs):
    layer = SSAClassifier(num_classes, dropout=0.0, **kwargs)
    layer.build((None, 16, 16, channels))
    return layer


def test_layouts_are_transposed_into_keras_order(golden_head):
    layer = built()
    state = reference_state(golden_head)
    report = load_reference_weights(layer, state)
    assert sorted(report.loaded) == sorted(state)
    np.testing.assert_array_equal(to_numpy(layer.conv_seg.kernel), state["conv_seg.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(
        to_numpy(layer.get_feat_pos.kernel)[:, :, :, 0], np.transpose(state["get_feat_pos.weight"][:, 0], (1, 2, 0))
    )
    np.testing.assert_array_equal(to_numpy(layer.sem_mlp.hidden.kernel), state["center_content_proj.0.weight"].T)
    np.testing.assert_array_equal(to_numpy(layer.center_pos), state["center_pos.weight"])


def test_torch_tensors_and_a_prefix_are_accepted(golden_head):
    import torch

    state = {f"decode_head.{k}": torch.tensor(v) for k, v in reference_state(golden_head).items()}
    state["backbone.stem.weight"] = torch.zeros(3)  # outside the prefix: not considered
    state["decode_head.conv_seg.num_batches_tracked"] = torch.tensor(0)  # a buffer: skipped
    state["decode_head.loss_decode.empty_weight"] = torch.ones(6)  # a loss buffer: skipped
    layer = built()
    report = load_reference_weights(layer, state, prefix="decode_head.")
    assert report.num_loaded == 19
    assert sorted(report.skipped) == ["conv_seg.num_batches_tracked", "loss_decode.empty_weight"]
    features = nchw_to_nhwc(golden_head["input/feat"])
    expected = nchw_to_nhwc(golden_head["out/inference_logits"])
    np.testing.assert_allclose(to_numpy(layer(features)), expected, rtol=1e-5, atol=1e-5)


def test_strict_errors_name_every_missing_unused_and_mismatched_weight(golden_head):
    state = reference_state(golden_head)
    del state["center_proj.weight"]
    state["center_proj.weight_typo"] = np.zeros((32, 32), "float32")
    state["center_pos.weight"] = np.zeros((6, 32), "float32")
    with pytest.raises(ReferenceWeightsError) as error:
        load_reference_weights(built(), state)
    message = str(error.value)
    assert "1 missing" in message and "center_proj.weight" in message
    assert "1 reference weights with no place" in message and "center_proj.weight_typo" in message
    assert "1 shape mismatches" in message and "center_pos.weight: reference (6, 32)" in message


def test_failed_strict_load_changes_nothing(golden_head):
    layer = built()
    before = [to_numpy(w).copy() for w in layer.weights]
    state = reference_state(golden_head)
    del state["conv_seg.bias"]
    with pytest.raises(ReferenceWeightsError):
        load_reference_weights(layer, state)
    for old, weight in zip(before, layer.weights):
        np.testing.assert_array_equal(old, to_numpy(weight))


def test_inference_layer_loads_a_training_checkpoint_by_ignoring_the_teacher(golden_head):
    layer = built(with_teacher=False)
    state = reference_state(golden_head)
    with pytest.raises(ReferenceWeightsError, match="gt_center_proj.weight"):
        load_reference_weights(layer, state)
    report = load_reference_weights(layer, state, ignore=["gt_*"])
    assert report.num_loaded == 12 and len(report.skipped) == 7
