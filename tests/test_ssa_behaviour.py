"""SSAClassifier and ssa_loss_terms beyond the golden case: edge cases, shapes, compilation,
mixed precision, serialization and parameter counts."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import BACKEND, compile_fn, nchw_to_nhwc, run_once, to_numpy, value_and_grad
from keras import ops

from ssaseg_keras.convert import load_reference_weights
from ssaseg_keras.layers import SSAClassifier
from ssaseg_keras.losses import LOSS_TERMS, ssa_loss_terms


def make_layer(num_classes, channels, seed=0, **kwargs):
    """A built SSAClassifier with non-trivial random weights (dropout off, so calls are deterministic)."""
    keras.utils.set_random_seed(seed)
    layer = SSAClassifier(num_classes, dropout=0.0, **kwargs)
    layer.build((None, 8, 8, channels))
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        variable.assign(rng.normal(0, 0.5, size=variable.shape).astype("float32"))
    return layer


def random_inputs(batch, height, width, channels, label_size, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, height, width, channels)).astype("float32")
    labels = rng.integers(0, num_classes, size=(batch,) + tuple(label_size)).astype("int32")
    return features, labels


def loss_values(layer, features, labels):
    terms = run_once(lambda x, y: ssa_loss_terms(layer, x, y), features, labels)
    return {k: float(v) for k, v in terms.items()}


def total_loss_grad(layer, features, labels):
    def total(x):
        return ops.sum(ops.stack(list(ssa_loss_terms(layer, x, labels).values())))

    return value_and_grad(total, features)


# --------------------------------------------------------------------------- edge cases
def test_class_absent_from_batch_uses_fixed_prototype_and_embedding():
    layer = make_layer(num_classes=6, channels=8)
    features, labels = random_inputs(2, 8, 8, 8, (32, 32), num_classes=4)  # classes 4, 5 absent
    values = loss_values(layer, features, labels)
    assert all(np.isfinite(v) for v in values.values())

    student = layer.forward_student(features)
    teacher = layer.teacher_prototypes(features, student["feat_pos"], labels[:, ::4, ::4])
    fixed = to_numpy(layer.fixed_prototypes())
    embed = to_numpy(layer.center_pos)
    for k in (4, 5):  # the teacher falls back to W[k] and E[k] for an absent class
        expected_sem = to_numpy(layer.gt_sem_mlp(np.concatenate([fixed[k], fixed[k]])[None]))[0]
        expected_pos = to_numpy(layer.gt_pos_mlp(np.concatenate([embed[k], embed[k]])[None]))[0]
        np.testing.assert_allclose(to_numpy(teacher["semantic"])[0, k], expected_sem, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(to_numpy(teacher["spatial"])[1, k], expected_pos, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_image_with_only_ignore_labels_drops_out_of_the_pixel_losses():
    layer = make_layer(num_classes=5, channels=8)
    features, labels = random_inputs(2, 8, 8, 8, (32, 32), num_classes=5)
    labels[0] = 255
    both = loss_values(layer, features, labels)
    alone = loss_values(layer, features[1:], labels[1:])
    assert all(np.isfinite(v) for v in both.values())
    # main_ce averages over every pixel of the batch, ignored ones included (mmseg 0.30's default).
    assert both["main_ce"] == pytest.approx(alone["main_ce"] / 2, rel=1e-5)
    for name in ("coarse_ce", "teacher_ce", "dice_refined", "dice_teacher", "response_distill"):
        assert both[name] == pytest.approx(alone[name], rel=1e-5), name


@pytest.mark.slow
def test_batch_with_only_ignore_labels_gives_zero_pixel_losses_and_finite_gradients():
    layer = make_layer(num_classes=5, channels=8)
    features, labels = random_inputs(2, 8, 8, 8, (32, 32), num_classes=5)
    labels[:] = 255
    values = loss_values(layer, features, labels)
    for name in ("main_ce", "coarse_ce", "teacher_ce", "response_distill", "dice_refined", "dice_teacher"):
        assert values[name] == 0.0, name
    assert np.isfinite(values["semantic_distill"]) and np.isfinite(values["spatial_distill"])
    _, grad = total_loss_grad(layer, features, labels)
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


def test_out_of_range_labels_are_ignored_not_crashing():
    layer = make_layer(num_classes=5, channels=8)
    features, labels = random_inputs(2, 8, 8, 8, (32, 32), num_classes=5)
    ignored = labels.copy()
    ignored[:, :4] = 255
    stray = labels.copy()
    stray[:, :4] = 7  # not a class, not 255
    assert loss_values(layer, features, stray) == pytest.approx(loss_values(layer, features, ignored), rel=1e-6)


def test_single_class():
    layer = make_layer(num_classes=1, channels=4)
    features, labels = random_inputs(2, 8, 8, 4, (32, 32), num_classes=1)
    labels[0, :5] = 255
    assert tuple(layer(features).shape) == (2, 8, 8, 1)
    values = loss_values(layer, features, labels)
    assert all(np.isfinite(v) for v in values.values())
    # One class: a softmax over classes is certain, so every CE and the relation term vanish.
    for name in ("main_ce", "coarse_ce", "teacher_ce", "semantic_distill"):
        assert values[name] == pytest.approx(0.0, abs=1e-6), name


def test_non_square_features_and_labels_of_any_size_match_torch_resizing():
    """CE and dice on (10, 14) features against labels (37, 61): compared with PyTorch's
    interpolate + cross_entropy as an independent oracle."""
    import torch

    functional = torch.nn.functional
    layer = make_layer(num_classes=4, channels=6)
    features, labels = random_inputs(2, 10, 14, 6, (37, 61), num_classes=4, seed=3)
    labels[0, :7] = 255
    student = layer.forward_student(features)
    values = loss_values(layer, features, labels)
    assert tuple(student["refined_logits"].shape) == (2, 10, 14, 4)

    def up(logits, align_corners):
        nchw = torch.tensor(np.transpose(to_numpy(logits), (0, 3, 1, 2)))
        return functional.interpolate(nchw, size=(37, 61), mode="bilinear", align_corners=align_corners)

    target = torch.tensor(labels, dtype=torch.long)
    refined = up(student["refined_logits"], False)
    main_ce = functional.cross_entropy(refined, target, ignore_index=255, reduction="sum") / target.numel()
    coarse_ce = functional.cross_entropy(up(student["coarse_logits"], True), target, ignore_index=255)
    assert values["main_ce"] == pytest.approx(float(main_ce), rel=1e-5)
    assert values["coarse_ce"] == pytest.approx(float(coarse_ce), rel=1e-5)

    probs = torch.sigmoid(up(student["refined_logits"], True))
    dices = []
    for b in range(2):
        for k in range(4):
            t = (target[b] == k).float()
            if t.sum() > 0:
                dices.append(1 - (2 * (probs[b, k] * t).sum() + 1) / (probs[b, k].sum() + t.sum() + 1))
    assert values["dice_refined"] == pytest.approx(float(sum(dices) / len(dices)), rel=1e-5)


# --------------------------------------------------------------------------- compilation
def test_losses_compile_without_graph_breaks_or_host_round_trips():
    layer = make_layer(num_classes=5, channels=8)
    features, labels = random_inputs(2, 8, 8, 8, (32, 32), num_classes=5)
    labels[1, :10] = 255

    def terms(x, y):
        values = ssa_loss_terms(layer, x, y)
        return ops.stack([values[name] for name in LOSS_TERMS])

    eager = to_numpy(terms(features, labels))
    compiled = to_numpy(compile_fn(terms)(ops.convert_to_tensor(features), ops.convert_to_tensor(labels)))
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_the_classifier_in_float32(policy, golden_head):
    features = nchw_to_nhwc(golden_head["input/feat"])
    labels = golden_head["input/labels"].astype("int32")
    state = {k[len("weight/") :]: v for k, v in golden_head.items() if k.startswith("weight/")}
    results = {}
    try:
        for name in ("float32", policy):
            keras.config.set_dtype_policy(name)
            layer = SSAClassifier(5, dropout=0.0)
            layer.build(features.shape)
            load_reference_weights(layer, state)
            # A mixed model hands the classifier low-precision features.
            x = ops.cast(features, keras.config.dtype_policy().compute_dtype)
            logits = layer(x)
            terms = ssa_loss_terms(layer, x, labels)
            assert keras.backend.standardize_dtype(logits.dtype) == "float32"
            assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in terms.values())
            results[name] = (to_numpy(logits), {k: float(to_numpy(v)) for k, v in terms.items()})
    finally:
        keras.config.set_dtype_policy("float32")
    (ref_logits, ref_terms), (logits, terms) = results["float32"], results[policy]
    assert np.abs(logits - ref_logits).max() <= 1e-2 * np.abs(ref_logits).max()
    for name in LOSS_TERMS:
        assert abs(terms[name] - ref_terms[name]) <= 1e-2 * max(abs(ref_terms[name]), 1e-3), name


# --------------------------------------------------------------------------- parameters, config
def test_parameter_counts_match_the_reference_table():
    """SegNeXt-T's head (C=256), 171 classes: the spec's table minus the baseline gives SSA's share."""
    baseline_classifier = 256 * 171 + 171
    inference = SSAClassifier(171, with_teacher=False)
    inference.build((None, 64, 64, 256))
    training = SSAClassifier(171)
    training.build((None, 64, 64, 256))
    assert inference.count_params() - baseline_classifier == 4_577_803 - 4_268_811
    assert training.count_params() - baseline_classifier == 4_840_459 - 4_268_811


def test_config_round_trip_and_inference_layer_without_teacher():
    layer = SSAClassifier(7, dropout=0.2, with_teacher=False, name="ssa")
    clone = SSAClassifier.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone.build((None, 8, 8, 16))
    assert not any("gt_" in w.path for w in clone.weights)
    with pytest.raises(ValueError, match="with_teacher=False"):
        clone.teacher_prototypes(np.zeros((1, 8, 8, 16), "float32"), np.zeros((1, 8, 8, 16), "float32"), np.zeros((1, 8, 8), "int32"))


def test_dropout_only_in_training_and_only_on_the_coarse_logits():
    keras.utils.set_random_seed(1)
    layer = SSAClassifier(5, dropout=0.5)
    features = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype("float32")
    layer.build(features.shape)
    eval_a, eval_b = to_numpy(layer(features)), to_numpy(layer(features))
    np.testing.assert_array_equal(eval_a, eval_b)
    train = layer.forward_student(features, training=True)
    plain = layer.forward_student(features, training=False)
    assert not np.allclose(to_numpy(train["coarse_logits"]), to_numpy(plain["coarse_logits"]))
    np.testing.assert_allclose(to_numpy(train["feat_pos"]), to_numpy(plain["feat_pos"]), rtol=1e-6)


def test_model_saves_to_keras_file_and_reloads_identically(tmp_path):
    inputs = keras.Input((8, 12, 16))
    model = keras.Model(inputs, SSAClassifier(5, name="ssa")(inputs))
    features = np.random.default_rng(0).normal(size=(2, 8, 12, 16)).astype("float32")
    path = tmp_path / "ssa.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(reloaded(features)), to_numpy(model(features)))
    assert isinstance(reloaded.get_layer("ssa"), SSAClassifier)
    assert len(reloaded.weights) == len(model.weights)


def test_keras_file_reloads_on_the_other_backends(tmp_path):
    import subprocess
    import sys

    inputs = keras.Input((8, 12, 16))
    model = keras.Model(inputs, SSAClassifier(5, name="ssa")(inputs))
    features = np.random.default_rng(0).normal(size=(2, 8, 12, 16)).astype("float32")
    model.save(tmp_path / "ssa.keras")
    np.save(tmp_path / "features.npy", features)
    np.save(tmp_path / "expected.npy", to_numpy(model(features)))
    script = (
        "import sys, numpy as np, keras, ssaseg_keras.layers\n"
        "m = keras.saving.load_model(sys.argv[1] + '/ssa.keras')\n"
        "out = keras.ops.convert_to_numpy(m(np.load(sys.argv[1] + '/features.npy')))\n"
        "np.testing.assert_allclose(out, np.load(sys.argv[1] + '/expected.npy'), rtol=1e-5, atol=1e-5)\n"
        "print('ok', keras.backend.backend())\n"
    )
    for backend in ("tensorflow", "jax", "torch"):
        if backend == BACKEND:
            continue
        env = {**__import__("os").environ, "KERAS_BACKEND": backend}
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and f"ok {backend}" in done.stdout, done.stderr[-2000:]
