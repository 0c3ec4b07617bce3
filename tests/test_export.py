"""`ssaseg-keras export`: a checkpoint written on the current backend -> SavedModel -> check, request, errors.

One export per backend (module fixture) keeps the suite fast; TensorFlow loads the SavedModel here too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from conftest import BACKEND
from models_helpers import tiny_config

from ssaseg_keras.utils.errors import UserError

NUM_CLASSES = 7


def run_main(*args):
    """(exit code, stdout, stderr) of the CLI run in this process."""
    from ssaseg_keras_cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as done:
            code = done.code
    return code, out.getvalue(), err.getvalue()


def make_checkpoint(work_dir):
    """A seeded, untrained tiny model: seeded so the served label map is never constant by chance."""
    import keras

    from ssaseg_keras.models import build_segmentor
    from ssaseg_keras.recipes import validate_recipe
    from ssaseg_keras.training.checkpoint import save_checkpoint

    recipe = validate_recipe(
        {
            "model": tiny_config(num_classes=NUM_CLASSES),
            "data": {"source": "synthetic", "num_classes": NUM_CLASSES},
        }
    )
    keras.utils.set_random_seed(7)
    model = build_segmentor(recipe["model"], training=True)
    return save_checkpoint(work_dir, model, None, 2, recipe)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    work_dir = str(root / "work")
    checkpoint = make_checkpoint(work_dir)
    output = str(root / "models")
    code, out, err = run_main("export", work_dir, "--output", output, "--with-probabilities")
    assert code == 0, err
    return {"work_dir": work_dir, "checkpoint": checkpoint, "output": output, "stdout": out}


@pytest.mark.slow
@pytest.mark.xdist_group("exported")
def test_export_writes_checked_saved_model(exported):
    out = exported["stdout"]
    assert f"trained on {BACKEND}" in out and "with the TensorFlow backend" in out
    assert ("in this process" in out) == (BACKEND == "tensorflow")
    assert (
        "inputs['images'] tensor_info:\n      dtype: DT_UINT8\n      shape: (-1, -1, -1, 3)" in out
    )
    assert "outputs['labels'] tensor_info:\n      dtype: DT_INT32\n      shape: (-1, -1, -1)" in out
    assert (
        f"outputs['probabilities'] tensor_info:\n      dtype: DT_FLOAT\n      shape: (-1, -1, -1, {NUM_CLASSES})"
        in out
    )
    assert "Method name is: tensorflow/serving/predict" in out
    agreements = [
        float(line.split("agreement with Keras ")[1].split("%")[0])
        for line in out.splitlines()
        if "agreement" in line
    ]
    assert len(agreements) == 2 and min(agreements) >= 99.9
    output = exported["output"]
    assert sorted(os.listdir(output)) == ["1"]  # no temporary leftovers
    version = os.path.join(output, "1")
    assert os.path.isfile(os.path.join(version, "saved_model.pb"))
    assert os.path.isdir(os.path.join(version, "variables"))
    metadata = json.load(open(os.path.join(version, "assets.extra", "ssaseg_export.json")))
    assert metadata["trained_backend"] == BACKEND and metadata["sample_predictions_backend"] == BACKEND
    assert metadata["num_classes"] == NUM_CLASSES and metadata["input_dtype"] == "uint8"
    assert metadata["preprocessing"] == "zero-pad to a multiple of 32"


@pytest.mark.xdist_group("exported")
def test_saved_model_matches_keras_at_a_new_size(exported):
    """Batch 3 at 33x47 (not a multiple of 32): labels/probabilities vs the Keras model on this backend."""
    import tensorflow as tf

    from ssaseg_keras.export.samples import (
        fixed_nmf_bases,
        keras_logits,
        nmf_seed,
        sample_images,
        softmax,
    )
    from ssaseg_keras.export.source import load_inference_model, resolve_source

    images = sample_images(((3, 33, 47),), seed=5)[0]
    serve = tf.saved_model.load(os.path.join(exported["output"], "1")).signatures["serving_default"]
    out = serve(images=tf.constant(images))
    labels, probabilities = out["labels"].numpy(), out["probabilities"].numpy()
    assert labels.dtype == np.int32 and labels.shape == (3, 33, 47)
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 33, 47, NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert (probabilities.argmax(-1) == labels).all()
    assert len(np.unique(labels)) >= 2  # not a constant map

    source = resolve_source(exported["work_dir"])
    model = load_inference_model(source)
    with fixed_nmf_bases(model, nmf_seed(model)):
        logits = keras_logits(model, images, source.mean, source.std)
    assert (logits.argmax(-1) == labels).mean() >= 0.999
    np.testing.assert_allclose(probabilities, softmax(logits.astype("float64")), atol=1e-4)
    # The same request twice gives the same answer (no random state in the served graph).
    again = serve(images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_array_equal(again, probabilities)


@pytest.mark.xdist_group("exported")
def test_check_runs_without_ssaseg_keras_and_catches_a_mismatch(exported, tmp_path):
    from ssaseg_keras.export import run_check

    lines = []
    result = run_check(exported["output"], echo=lines.append)
    assert result["passed"] and result["imports_ssaseg_keras"] is False
    assert [s["shape"] for s in result["samples"]] == [[2, 64, 96, 3], [1, 50, 75, 3]]
    assert all(
        s["agreement"] >= 0.999 and s["max_probability_diff"] <= 1e-4 for s in result["samples"]
    )
    assert any("saved_model_cli" not in line and "inputs['images']" in line for line in lines)

    broken = tmp_path / "broken"
    shutil.copytree(os.path.join(exported["output"], "1"), broken / "1")
    check_file = broken / "1" / "assets.extra" / "ssaseg_check.npz"
    arrays = dict(np.load(check_file))
    arrays["labels_1"] = (arrays["labels_1"] + 1) % NUM_CLASSES
    np.savez(check_file, **arrays)
    with pytest.raises(UserError, match="differ from the Keras model"):
        run_check(str(broken), echo=lines.append)
    assert any("MISMATCH" in line and "agreement with Keras 0.000%" in line for line in lines)


@pytest.mark.xdist_group("exported")
def test_check_command_and_bad_inputs(exported, tmp_path):
    code, out, err = run_main("export", "--check", exported["output"])
    assert code == 0 and "check passed" in out and "serving_default_images:0" in out

    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    code, out, err = run_main("export", "--check", exported["output"], "--image", str(not_image))
    assert code == 2 and "is not a readable image" in err and "Traceback" not in err
    code, out, err = run_main("export", "--check", str(not_image))
    assert code == 2 and "is a file" in err
    code, out, err = run_main("export", "--check", str(tmp_path))
    assert code == 2 and "holds no SavedModel" in err


@pytest.mark.xdist_group("exported")
def test_export_refuses_existing_version_and_missing_checkpoint(exported, tmp_path):
    code, out, err = run_main("export", exported["work_dir"], "--output", exported["output"])
    assert code == 2 and "already exists" in err and "--force" in err and "--version 2" in err
    assert sorted(os.listdir(exported["output"])) == ["1"]
    code, out, err = run_main("export", str(tmp_path / "nowhere"), "--output", str(tmp_path / "m"))
    assert code == 2 and "does not exist" in err and not os.path.exists(tmp_path / "m")
    code, out, err = run_main("export", "--output", str(tmp_path / "m"))
    assert code == 2 and "exactly one of CHECKPOINT" in err


def test_request_body(tmp_path):
    from PIL import Image

    image = np.arange(5 * 7 * 3, dtype="uint8").reshape(5, 7, 3)
    Image.fromarray(image).save(tmp_path / "image.png")
    code, out, err = run_main("export", "--request", str(tmp_path / "image.png"))
    assert code == 0, err
    body = json.loads(out)
    assert list(body) == ["instances"]
    np.testing.assert_array_equal(np.array(body["instances"], dtype="uint8"), image[None])
    code, out, err = run_main(
        "export", "--request", str(tmp_path / "image.png"), "--request-format", "inputs"
    )
    np.testing.assert_array_equal(np.array(json.loads(out)["inputs"]["images"]), image[None])

    (tmp_path / "notes.txt").write_text("not an image")
    code, out, err = run_main("export", "--request", str(tmp_path / "notes.txt"))
    assert code == 2 and "not an image file" in err and out == ""
    code, out, err = run_main("export", "--request", str(tmp_path / "missing.png"))
    assert code == 2 and "does not exist" in err


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="backend: one backend is enough for the .keras input (slow)"
)
@pytest.mark.xdist_group("exported")
def test_export_keras_file_float32_input_and_force(exported, tmp_path):
    import tensorflow as tf

    from ssaseg_keras.export.source import load_inference_model, resolve_source

    path = str(tmp_path / "tiny.keras")
    load_inference_model(resolve_source(exported["work_dir"])).save(path)
    output = str(tmp_path / "models")
    os.makedirs(os.path.join(output, "4"))  # an existing (empty) version: replaced with --force
    args = ("export", path, "--output", output, "--version", "4", "--input-dtype", "float32")
    code, out, err = run_main(*args)
    assert code == 2 and "already exists" in err
    code, out, err = run_main(*args, "--force")
    assert code == 0, err
    assert "(keras)" in out and "dtype: DT_FLOAT" in out and "probabilities" not in out
    assert "normalisation: the default mean [123.675, 116.28, 103.53]" in out  # said, not silent
    assert sorted(os.listdir(output)) == ["4"]
    serve = tf.saved_model.load(os.path.join(output, "4")).signatures["serving_default"]
    images = np.full((1, 40, 40, 3), 128.0, dtype="float32")
    assert sorted(serve(images=tf.constant(images))) == ["labels"]
    # Same weights and fixed NMF bases as the checkpoint's export: identical labels.
    reference = tf.saved_model.load(os.path.join(exported["output"], "1")).signatures[
        "serving_default"
    ]
    np.testing.assert_array_equal(
        serve(images=tf.constant(images))["labels"].numpy(),
        reference(images=tf.constant(images.astype("uint8")))["labels"].numpy(),
    )


@pytest.mark.slow
@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="backend: one backend is enough for SegFormer's export (slow)"
)
def test_segformer_exports_and_serves_any_size(tmp_path):
    """SegFormer (keras-cv MiT, grid carried explicitly) serves images of any size, like SegNeXt."""
    import tensorflow as tf

    from ssaseg_keras.export.samples import keras_logits, sample_images
    from ssaseg_keras.export.source import resolve_source
    from ssaseg_keras.models import build_segmentor

    model = build_segmentor(
        {"family": "segformer", "size": "b0", "num_classes": NUM_CLASSES, "ssa": True}, training=False
    )
    path = str(tmp_path / "segformer.keras")
    model.save(path)
    output = str(tmp_path / "models")
    code, out, err = run_main("export", path, "--output", output)
    assert code == 0, err
    agreements = [float(line.split("agreement with Keras ")[1].split("%")[0]) for line in out.splitlines() if "agreement" in line]
    assert agreements and min(agreements) >= 99.9
    serve = tf.saved_model.load(os.path.join(output, "1")).signatures["serving_default"]
    images = sample_images(((2, 45, 70),), seed=7)[0]
    labels = serve(images=tf.constant(images))["labels"].numpy()
    assert labels.shape == (2, 45, 70)
    source = resolve_source(path)
    logits = keras_logits(model, images, source.mean, source.std)
    assert (logits.argmax(-1) == labels).mean() >= 0.999


@pytest.mark.skipif(BACKEND != "tensorflow", reason="backend: one backend is enough for the preset input (slow)")
@pytest.mark.xdist_group("exported")
def test_export_preset_directory_normalises_with_its_preprocessor(exported, tmp_path):
    import tensorflow as tf

    from ssaseg_keras.export.source import resolve_source
    from ssaseg_keras.training.loading import load_trained_model

    task, _ = load_trained_model(exported["work_dir"])
    task.save_to_preset(tmp_path / "preset")
    assert resolve_source(str(tmp_path / "preset")).normalization_from == "preprocessor"
    output = str(tmp_path / "models")
    code, out, err = run_main("export", str(tmp_path / "preset"), "--output", output)
    assert code == 0, err
    assert "(preset)" in out and "default mean" not in out
    serve = tf.saved_model.load(os.path.join(output, "1")).signatures["serving_default"]
    reference = tf.saved_model.load(os.path.join(exported["output"], "1")).signatures["serving_default"]
    images = tf.constant(np.random.default_rng(3).integers(0, 256, (1, 40, 56, 3), dtype="uint8"))
    np.testing.assert_array_equal(serve(images=images)["labels"].numpy(), reference(images=images)["labels"].numpy())
