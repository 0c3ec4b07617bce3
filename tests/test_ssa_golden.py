"""SSAClassifier and ssa_loss_terms against the reference implementation's arrays (float32)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKEND, nchw_to_nhwc, to_numpy, value_and_grad
from keras import ops

from ssaseg_keras.convert import load_reference_weights
from ssaseg_keras.layers import SSAClassifier
from ssaseg_keras.losses import LOSS_TERMS, boundary_mask, response_distillation, ssa_loss_terms
from ssaseg_keras.losses.ssa import canny_edges
from ssaseg_keras.ops import downsample_labels

EXACT_TERMS = [t for t in LOSS_TERMS if t != "response_distill"]


def reference_state(golden):
    return {k[len("weight/") :]: v for k, v in golden.items() if k.startswith("weight/")}


@pytest.fixture(scope="module")
def golden_layer(golden_head):
    features = nchw_to_nhwc(golden_head["input/feat"])
    layer = SSAClassifier(num_classes=5, dropout=0.0)
    layer.build(features.shape)
    report = load_reference_weights(layer, reference_state(golden_head))
    assert report.num_loaded == 19
    return layer


def relative_error(ours, ref):
    return np.abs(ours - ref).max() / np.abs(ref).max()


def test_student_path_matches_reference(golden_head, golden_layer):
    features = nchw_to_nhwc(golden_head["input/feat"])
    student = golden_layer.forward_student(features)
    expected = {
        "coarse_logits": nchw_to_nhwc(golden_head["out/coarse_logits"]),
        "feat_pos": nchw_to_nhwc(golden_head["out/feat_pos"]),
        "spatial_prototypes": golden_head["out/center_pos"],
        "semantic_prototypes": golden_head["out/pred_proto"],
        "refined_logits": nchw_to_nhwc(golden_head["out/refined_logits"]),
    }
    for name, ref in expected.items():
        assert relative_error(to_numpy(student[name]), ref) < 1e-5, name
    inference = to_numpy(golden_layer(features, training=False))
    assert relative_error(inference, nchw_to_nhwc(golden_head["out/inference_logits"])) < 1e-5
    assert inference.dtype == np.float32


def test_teacher_path_matches_reference(golden_head, golden_layer):
    features = nchw_to_nhwc(golden_head["input/feat"])
    feat_pos = golden_layer.forward_student(features)["feat_pos"]
    labels_small = downsample_labels(golden_head["input/labels"].astype("int32"), (16, 16))
    teacher = golden_layer.forward_teacher(features, feat_pos, labels_small)
    assert relative_error(to_numpy(teacher["semantic"]), golden_head["out/gt_proto"]) < 1e-5
    assert relative_error(to_numpy(teacher["spatial"]), golden_head["out/gt_center_pos"]) < 1e-5
    assert relative_error(to_numpy(teacher["logits"]), nchw_to_nhwc(golden_head["out/teacher_logits"])) < 1e-5


@pytest.mark.parametrize("resize_method", ["matmul", "banded", "gather"])
def test_losses_match_reference(golden_head, golden_layer, resize_method):
    features = nchw_to_nhwc(golden_head["input/feat"])
    labels = golden_head["input/labels"].astype("int32")
    terms = ssa_loss_terms(golden_layer, features, labels, resize_method=resize_method)
    assert sorted(terms) == sorted(LOSS_TERMS)
    for name in EXACT_TERMS:
        ours, ref = float(to_numpy(terms[name])), float(golden_head[f"loss/{name}"])
        assert abs(ours - ref) <= 1e-5 * abs(ref), (name, ours, ref)
    # The spec allows 2% here (a Canny stand-in); our on-device Canny is exact, so hold it to 1e-5.
    ours, ref = float(to_numpy(terms["response_distill"])), float(golden_head["loss/response_distill"])
    assert abs(ours - ref) <= 1e-5 * abs(ref), (ours, ref)
    total = sum(float(to_numpy(v)) for v in terms.values())
    assert abs(total - float(golden_head["loss/total"])) <= 1e-5 * float(golden_head["loss/total"])


def test_response_distill_is_exact_given_the_reference_boundary(golden_head):
    """Given the reference's own boundary mask, the formula reproduces the reference."""
    labels_small = downsample_labels(golden_head["input/labels"].astype("int32"), (16, 16))
    loss = response_distillation(
        nchw_to_nhwc(golden_head["out/refined_logits"]),
        nchw_to_nhwc(golden_head["out/teacher_logits"]),
        labels_small,
        edges=golden_head["out/edge_mask"],
    )
    assert abs(float(to_numpy(loss)) - float(golden_head["loss/response_distill"])) < 1e-4 * 3.39


def test_boundary_mask_equals_reference_canny_mask(golden_head):
    labels_small = downsample_labels(golden_head["input/labels"].astype("int32"), (16, 16))
    mask = to_numpy(boundary_mask(labels_small))
    assert mask.sum() > 0
    np.testing.assert_array_equal(mask, golden_head["out/edge_mask"])


def test_canny_edges_equal_opencv_on_random_label_maps():
    import cv2  # in the dev extra

    rng = np.random.default_rng(0)
    # A batch of 10 maps per size (one compile per size on JAX), blocky or noisy, some with 255.
    for height, width in [(3, 3), (3, 39), (17, 5), (24, 31), (39, 39), (11, 26)]:
        batch = []
        for trial in range(10):
            coarse = rng.integers(0, rng.integers(2, 8), size=(rng.integers(1, 6), rng.integers(1, 6)))
            labels = cv2.resize(coarse.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
            labels = labels.astype(np.int32)
            if trial % 3 == 0:
                labels = rng.integers(0, 6, size=(height, width)).astype(np.int32)
            if trial % 4 == 0:
                labels[rng.random((height, width)) < 0.2] = 255
            batch.append(labels)
        edges = to_numpy(canny_edges(np.stack(batch)))
        for labels, found in zip(batch, edges):
            expected = cv2.Canny(labels.astype(np.uint8), 0.1, 0.2) > 0
            np.testing.assert_array_equal(found, expected, err_msg=str(labels))


@pytest.mark.parametrize("resize_method, compiled", [("matmul", False), ("gather", False), ("matmul", True)])
def test_feature_gradient_matches_reference(golden_head, golden_layer, resize_method, compiled, monkeypatch):
    """compiled: the image-size terms through torch.compile (inductor), as `train.compile_loss` runs them."""
    if compiled and BACKEND != "torch":
        pytest.skip("backend: only PyTorch compiles the loss terms apart (XLA compiles the whole step)")
    labels = golden_head["input/labels"].astype("int32")
    compiled_functions = []
    if compiled:
        import torch

        from ssaseg_keras.ops import compile as compile_module

        real_compile = torch.compile
        monkeypatch.setattr(compile_module, "_compiled", {})  # a fresh compile, seen by the spy
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled_functions.append(fn) or real_compile(fn, **kw))

    def total_loss(features):
        terms = ssa_loss_terms(
            golden_layer, features, labels, resize_method=resize_method, compile_pixel_terms=compiled
        )
        return ops.sum(ops.stack(list(terms.values())))

    value, grad = value_and_grad(total_loss, nchw_to_nhwc(golden_head["input/feat"]))
    if compiled:
        from ssaseg_keras.losses.ssa import pixel_loss_terms

        assert compiled_functions == [pixel_loss_terms]
    assert abs(float(value) - float(golden_head["loss/total"])) <= 1e-5 * float(golden_head["loss/total"])
    ref = nchw_to_nhwc(golden_head["out/grad_feat"])
    assert np.isfinite(grad).all()
    # Measured 5.6e-7 to 6.5e-7 (relative L2) on the three backends, both methods.
    assert np.linalg.norm(grad - ref) / np.linalg.norm(ref) < 2e-6
