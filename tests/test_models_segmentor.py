"""The Segmentor: outputs, compute_loss terms, `.keras` round trips (also across backends). Training
steps (fit, evaluate, loss decrease) are in test_training.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops
from models_helpers import deterministic_nmf, tiny_config

from ssaseg_keras.losses import LOSS_TERMS
from ssaseg_keras.models import build_segmentor, inference_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ssa_model():
    return build_segmentor(tiny_config(ssa=True))


@pytest.fixture(scope="module")
def baseline_model():
    return build_segmentor(tiny_config(ssa=False))


def random_batch(height, width, batch=2, classes=7, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randn(batch, height, width, 3).astype("float32")
    labels = rng.randint(0, classes, size=(batch, height, width)).astype("int32")
    labels[:, : height // 8] = 255
    return images, labels


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (32, 32)])
def test_prediction_is_image_size_float32_logits(ssa_model, baseline_model, size):
    images, _ = random_batch(*size, batch=1)
    for model in (ssa_model, baseline_model):
        logits = model(images)
        assert tuple(logits.shape) == (1, *size, 7)
        assert ops.convert_to_numpy(logits).dtype == np.float32
        assert np.isfinite(ops.convert_to_numpy(logits)).all()


def test_parts_are_exposed(ssa_model):
    assert ssa_model.backbone.stage_channels == [8, 16, 24, 32]
    assert ssa_model.decode_head.channels == 32
    assert ssa_model.classifier.num_classes == 7 and ssa_model.classifier.with_teacher
    assert ssa_model.num_classes == 7


def test_training_output_feeds_the_ssa_loss(ssa_model):
    images, labels = random_batch(64, 96)
    out = ssa_model(images, training=True)
    assert tuple(out["logits"].shape) == (2, 8, 12, 7)
    assert tuple(out["features"].shape) == (2, 8, 12, 32)
    assert tuple(out["semantic_prototypes"].shape) == (2, 7, 32)
    for tracker in ssa_model.loss_trackers:
        tracker.reset_state()
    total = ops.convert_to_numpy(ssa_model.compute_loss(images, labels, out))
    reported = {t.name: float(ops.convert_to_numpy(t.result())) for t in ssa_model.loss_trackers}
    assert sorted(reported) == sorted(LOSS_TERMS)
    assert all(np.isfinite(v) and v > 0 for v in reported.values())
    np.testing.assert_allclose(float(total), sum(reported.values()), rtol=1e-5)
    # The same terms as calling the loss on the classifier directly with the student output.
    from ssaseg_keras.losses import ssa_loss_terms

    student = {k: v for k, v in out.items() if k not in ("logits", "features")}
    direct = ssa_loss_terms(ssa_model.classifier, out["features"], labels, student=student)
    for name in LOSS_TERMS:
        np.testing.assert_allclose(float(ops.convert_to_numpy(direct[name])), reported[name], rtol=1e-5)


def test_loss_upsampling_method_is_the_models_and_changes_no_number(ssa_model, baseline_model, monkeypatch):
    """`loss_resize_method` (the recipe's train.loss_resize) reaches every upsampling of the losses;
    "banded" and "gather" give the same terms as "matmul"."""
    import ssaseg_keras.losses.ssa as ssa_losses
    from ssaseg_keras.ops.resize import resize_bilinear

    images, labels = random_batch(64, 96, seed=3)
    used = []

    def spy(*args, method="matmul", **kwargs):
        used.append(method)
        return resize_bilinear(*args, method=method, **kwargs)

    monkeypatch.setattr(ssa_losses, "resize_bilinear", spy)
    for model in (ssa_model, baseline_model):
        out = model(images, training=True)
        terms = {}
        for method in ("matmul", "banded", "gather"):
            used.clear()
            model.loss_resize_method = method
            try:
                values = model.loss_terms(labels, out)
            finally:
                model.loss_resize_method = "matmul"
            assert used and set(used) == {method}
            terms[method] = {k: float(ops.convert_to_numpy(v)) for k, v in values.items()}
        assert sorted(terms["gather"]) == sorted(terms["banded"]) == sorted(model.loss_term_names)
        for name, value in terms["matmul"].items():
            np.testing.assert_allclose(terms["gather"][name], value, rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(terms["banded"][name], value, rtol=2e-5, atol=1e-6)


def test_baseline_loss_is_main_ce_and_accepts_channel_labels(baseline_model):
    images, labels = random_batch(64, 64)
    out = baseline_model(images, training=True)
    assert sorted(out) == ["features", "logits"]
    total = baseline_model.compute_loss(images, labels[..., None], out)
    from ssaseg_keras.losses import baseline_loss_terms

    expected = baseline_loss_terms(out["logits"], labels)["main_ce"]
    np.testing.assert_allclose(ops.convert_to_numpy(total), ops.convert_to_numpy(expected), rtol=1e-6)
    assert float(ops.convert_to_numpy(total)) > 1.0  # ~log(7) at init


def test_keras_round_trip_same_backend(tmp_path, ssa_model):
    images, _ = random_batch(64, 32, batch=1)
    path = str(tmp_path / "model.keras")
    ssa_model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded).__name__ == "Segmentor" and loaded.classifier.with_teacher
    assert len(loaded.weights) == len(ssa_model.weights)
    for a, b in zip(ssa_model.weights, loaded.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    with deterministic_nmf():
        np.testing.assert_allclose(
            ops.convert_to_numpy(loaded(images)), ops.convert_to_numpy(ssa_model(images)), atol=1e-5
        )
    slim = inference_model(loaded)
    slim_path = str(tmp_path / "slim.keras")
    slim.save(slim_path)
    assert not keras.saving.load_model(slim_path).classifier.with_teacher


SAVE_SCRIPT = """
import sys, numpy as np, keras
sys.path.insert(0, {tests!r})
from models_helpers import deterministic_nmf, tiny_config
from ssaseg_keras.models import build_segmentor
for name, config in {configs!r}.items():
    model = build_segmentor(config or tiny_config(ssa=True))
    images = np.random.RandomState(5).randn(1, 64, 96, 3).astype("float32")
    with deterministic_nmf():
        expected = keras.ops.convert_to_numpy(model(images))
    model.save({folder!r} + "/" + name + ".keras")
    np.savez({folder!r} + "/" + name + ".npz", images=images, expected=expected)
"""


SEGFORMER_B0 = {"family": "segformer", "size": "b0", "num_classes": 7, "ssa": True}
# UperNet-Swin + SSA with its auxiliary head, and UperNet over a keras-hub ResNet (tiny sizes).
UPERNET_SWIN = {
    "family": "upernet", "size": "t", "num_classes": 7, "ssa": True, "seed": 3,
    "backbone": {"embed_dims": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]},
    "head": {"channels": 32}, "auxiliary_head": {"channels": 16},
}  # fmt: skip
UPERNET_KERAS_HUB = {
    "family": "upernet", "size": "t", "num_classes": 7, "ssa": True,
    "backbone": {"type": "keras_hub", "class_name": "ResNetBackbone", "arguments": {
        "input_conv_filters": [64], "input_conv_kernel_sizes": [7], "stackwise_num_filters": [64, 8, 16, 16],
        "stackwise_num_blocks": [1, 1, 1, 1], "stackwise_num_strides": [1, 2, 2, 2],
        "block_type": "basic_block", "use_pre_activation": False}},
    "head": {"channels": 16}, "auxiliary_head": {"channels": 8},
}  # fmt: skip


OTHER_BACKEND_MODELS = {
    "segnext_tiny": None, "segformer_b0": SEGFORMER_B0, "upernet_swin_tiny": UPERNET_SWIN,
    "upernet_keras_hub_resnet": UPERNET_KERAS_HUB,
}  # fmt: skip


@pytest.fixture(scope="module")
def saved_on_another_backend(tmp_path_factory):
    """The folder where one process on another backend saved each of OTHER_BACKEND_MODELS as
    NAME.keras, with its input and outputs in NAME.npz (one process start for the four)."""
    current = keras.backend.backend()
    other = "torch" if current != "torch" else "tensorflow"
    folder = str(tmp_path_factory.mktemp("other_backend"))
    script = SAVE_SCRIPT.format(tests=os.path.join(REPO, "tests"), folder=folder, configs=OTHER_BACKEND_MODELS)
    env = {**os.environ, "KERAS_BACKEND": other}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return folder


@pytest.mark.slow
@pytest.mark.xdist_group("other_backend_files")
@pytest.mark.parametrize("name", list(OTHER_BACKEND_MODELS))
def test_keras_file_from_another_backend_gives_the_same_outputs(saved_on_another_backend, name):
    data = np.load(os.path.join(saved_on_another_backend, name + ".npz"))
    loaded = keras.saving.load_model(os.path.join(saved_on_another_backend, name + ".keras"))
    with deterministic_nmf():
        got = ops.convert_to_numpy(loaded(data["images"]))
    np.testing.assert_allclose(got, data["expected"], rtol=1e-4, atol=1e-4)
    assert json.loads(json.dumps(loaded.get_config()["classifier"]["config"]))["num_classes"] == 7


LOAD_SCRIPT = """
import json, sys, keras
import ssaseg_keras  # the package alone registers every class a .keras file names
model = keras.saving.load_model({path!r})
print(json.dumps({{"class": type(model).__name__, "resize": model.loss_resize_method,
                  "weights": model.ssa_loss_weights, "tensorflow": "tensorflow" in sys.modules}}))
"""


def test_import_ssaseg_keras_makes_keras_files_loadable_with_their_loss_settings(tmp_path):
    """`import ssaseg_keras` (not `ssaseg_keras.models`) is enough for `load_model` in a fresh
    process; the loss settings travel in the config; TensorFlow stays unimported off its backend."""
    model = build_segmentor(tiny_config(ssa=True, ssa_loss_weights={"spatial_distill": 0.8}), loss_resize_method="gather")
    path = str(tmp_path / "model.keras")
    model.save(path)
    done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT.format(path=path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["class"] == "Segmentor" and loaded["resize"] == "gather"
    assert loaded["weights"]["spatial_distill"] == 0.8 and loaded["weights"]["semantic_distill"] == 10.0
    assert loaded["tensorflow"] == (keras.backend.backend() == "tensorflow")


def test_ssa_loss_weights_act_on_their_terms():
    images, labels = random_batch(64, 32, batch=2)
    terms = {}
    for name, weights in (("default", {}), ("ablation", {"dice_refined": 0.0, "spatial_distill": 0.8})):
        keras.utils.set_random_seed(0)
        model = build_segmentor(tiny_config(ssa=True, dropout=0.0, ssa_loss_weights=weights))
        with deterministic_nmf():
            outputs = model(images, training=True)
        terms[name] = {k: float(ops.convert_to_numpy(v)) for k, v in model.loss_terms(labels, outputs).items()}
    default, ablation = terms["default"], terms["ablation"]
    assert default["dice_refined"] > 0 and ablation["dice_refined"] == 0.0
    assert ablation["spatial_distill"] == pytest.approx(2.0 * default["spatial_distill"], rel=1e-5)
    for name in set(LOSS_TERMS) - {"dice_refined", "spatial_distill"}:
        assert ablation[name] == pytest.approx(default[name], rel=1e-5, abs=1e-7), name
