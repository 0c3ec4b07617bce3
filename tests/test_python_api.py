"""The Python API: README's "Python API" section runs as written, `ImageSegmenter` presets, its
single output structure, `with_ssa` on keras-hub's SegFormer and DeepLabV3 (tiny, random, no download)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import ssaseg_keras
from ssaseg_keras.models import ImageSegmenter, inference_model, with_ssa
from ssaseg_keras.utils.errors import CheckpointError, DataError, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The reload runs where a fresh process starts and predicts fastest: PyTorch (TensorFlow from PyTorch).
OTHER_BACKEND = {"tensorflow": "torch", "jax": "torch", "torch": "tensorflow"}


def readme_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run_other_backend(code, cwd):
    backend = OTHER_BACKEND[keras.backend.backend()]
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return backend


@pytest.mark.slow
@pytest.mark.xdist_group("python_api")
def test_readme_python_api_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = readme_blocks()
    assert len(blocks) == 3, "README's Python API section: train / reload elsewhere / with_ssa"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], "README-python-api-1", "exec"), namespace)
    segmenter = namespace["segmenter"]
    losses = namespace["history"].history["loss"]
    assert losses[-1] < losses[0]  # it learns
    assert {"main_ce", "semantic_distill", "spatial_distill"} <= set(namespace["history"].history)
    printed = capsys.readouterr().out
    assert "'mode': 'whole'" in printed and "'mIoU'" in printed
    assert namespace["class_maps"].shape == (2, 64, 64) and namespace["class_maps"].dtype == np.int32
    assert sorted(os.listdir("my_segmenter")) == [
        "config.json", "metadata.json", "preprocessor.json", "recipe.yaml", "task.json", "task.weights.npz",
    ]  # fmt: skip
    # The deployed preset predicts as the training task does, here and on another backend.
    reloaded = ImageSegmenter.from_preset("my_segmenter")
    _, logits = reloaded.predict(namespace["images"][:2], return_scores=True)
    np.testing.assert_allclose(logits, namespace["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(segmenter.predict(namespace["images"][:2]), namespace["class_maps"])
    assert not reloaded.classifier.with_teacher and segmenter.classifier.with_teacher
    assert segmenter.auxiliary_heads and not reloaded.auxiliary_heads
    run_other_backend(blocks[1], tmp_path)
    # with_ssa on keras-hub's SegFormer (the third block), in the same namespace as the first.
    exec(compile(blocks[2], "README-python-api-3", "exec"), namespace)
    assert "(2, 64, 64)" in capsys.readouterr().out
    ssa_segformer, segformer = namespace["ssa_segformer"], namespace["segformer"]
    assert ssa_segformer.backbone.layers[-1] is segformer.backbone  # the same layers: the same weights
    assert ssa_segformer.preprocessor is segformer.preprocessor and ssa_segformer.classifier.with_teacher
    losses = ssa_segformer.history.history["loss"]
    assert losses[-1] < losses[0] and "semantic_distill" in ssa_segformer.history.history
    maps = ssa_segformer.predict(namespace["images"][:2])
    deployed = inference_model(ssa_segformer)
    assert not deployed.classifier.with_teacher and deployed.count_params() < ssa_segformer.count_params()
    deployed.save_to_preset("ssa_segformer")
    np.testing.assert_array_equal(ImageSegmenter.from_preset("ssa_segformer").predict(namespace["images"][:2]), maps)
    scores = segmenter.evaluate(namespace["dataset"].take(2))  # 8 images, streamed
    assert scores["mode"] == "whole" and scores["num_images"] == 8 and 0.0 <= scores["mIoU"] <= 100.0


# ------------------------------------------------------------ the task itself
@pytest.fixture(scope="module")
def task():
    return ImageSegmenter.from_preset(
        "quickstart", num_classes=4, overrides=["model.backbone.depths=[1,1,1,1]", "model.head.channels=32",
                                                "model.head.ham_channels=32", "model.head.groups=8"]  # fmt: skip
    )


def test_one_output_structure_in_every_mode(task):
    images = np.random.default_rng(1).normal(size=(2, 64, 96, 3)).astype("float32")
    inference = task(images, training=False)
    # The training call traced symbolically (what fit's step traces): one tensor, not a dict.
    training = task.compute_output_spec(keras.KerasTensor((2, 64, 96, 3)), training=True)
    assert isinstance(training, keras.KerasTensor) and not isinstance(inference, dict)
    assert tuple(inference.shape) == (2, 64, 96, 4)
    assert tuple(training.shape) == (2, 8, 12, 4)  # the main logits at feature resolution
    held = task._step_outputs.popitem()[1]  # what compute_loss reads in the same step
    assert {"features", "coarse_logits", "spatial_prototypes", "semantic_prototypes"} <= set(held)


def test_preset_settings_come_from_the_recipe(task):
    assert task.preprocessor.image_converter.mean == [123.675, 116.28, 103.53]
    assert task.preprocessor.num_classes == 4
    assert task.inference["mode"] == "whole" and task.inference_mode_name == "whole"
    assert "segnext_t_ade20k" in ImageSegmenter.presets() and "upernet_swin_t_ade20k" in ImageSegmenter.presets()


def test_predict_takes_images_of_any_size_and_returns_maps_at_their_size(task):
    rng = np.random.default_rng(2)
    first, second = rng.integers(0, 256, (50, 70, 3), dtype="uint8"), rng.integers(0, 256, (33, 40, 3), dtype="uint8")
    maps = task.predict([first, second])
    assert [m.shape for m in maps] == [(50, 70), (33, 40)]
    single, scores = task.predict(first, return_scores=True)  # (SegNeXt's NMF bases are random per call)
    assert single.shape == (50, 70) and scores.shape == (50, 70, 4)
    np.testing.assert_array_equal(np.argmax(scores, -1), single)


def test_labels_out_of_range_are_one_clear_error(task):
    import tensorflow as tf

    images = np.zeros((2, 32, 32, 3), "uint8")
    labels = np.full((2, 32, 32), 9, "int32")
    task.compile(optimizer=keras.optimizers.SGD(1e-3))
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in task.weights]
    with pytest.raises(DataError, match=r"labels must be class ids 0\.\.3 or 255.*Largest label seen: 9"):
        task.fit(data, epochs=1, verbose=0)
    # The failed first step leaves the model as it was (JAX detaches the values while it trains).
    for variable, value in zip(task.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value, err_msg=variable.path)
    with pytest.raises(DataError, match="Largest label seen: 9"):
        task.evaluate(data)


def test_a_directory_preset_gives_the_form_asked_for(task, tmp_path):
    import tensorflow as tf

    task.save_to_preset(tmp_path / "training")
    assert ImageSegmenter.from_preset(str(tmp_path / "training")).classifier.with_teacher  # as saved
    deployed = ImageSegmenter.from_preset(str(tmp_path / "training"), training=False)
    assert not deployed.classifier.with_teacher and type(deployed) is ImageSegmenter
    deployed.save_to_preset(tmp_path / "deployed")
    with pytest.raises(UserError, match="saved deployed \\(no SSA teacher\\).*training=None"):
        ImageSegmenter.from_preset(str(tmp_path / "deployed"), training=True)
    # evaluate: `steps` counts batches (2 of 2 images); per-class lists for the 4 classes.
    rng = np.random.default_rng(4)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.integers(0, 256, (6, 32, 32, 3), dtype="uint8"), rng.integers(0, 4, (6, 32, 32), dtype="int32"))
    ).batch(2)
    scores = deployed.evaluate(data, steps=2)
    assert scores["num_images"] == 4 and len(scores["IoU"]) == 4
    assert scores["class_names"] == deployed.class_names == [f"class_{k}" for k in range(4)]


def test_preset_errors_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'segnext_q'.*ImageSegmenter.presets"):
        ImageSegmenter.from_preset("segnext_q")
    with pytest.raises(UserError, match="ships no trained weights.*load_weights=False"):
        ImageSegmenter.from_preset("quickstart", load_weights=True)
    with pytest.raises(CheckpointError, match="not an ssaseg-keras preset directory"):
        ImageSegmenter.from_preset(str(tmp_path))
    with pytest.raises(UserError, match="Offline.*local preset|Copy the preset directory"):
        ImageSegmenter.from_preset("kaggle://nobody/none/keras/none")


def test_a_preset_that_does_not_fit_its_weights_is_refused(task, tmp_path):
    task.save_to_preset(tmp_path / "p")
    other = ImageSegmenter.from_preset(
        "quickstart", num_classes=6, overrides=["model.backbone.depths=[1,1,1,1]", "model.head.channels=32",
                                                "model.head.ham_channels=32", "model.head.groups=8"]  # fmt: skip
    )
    os.replace(tmp_path / "p" / "task.json", tmp_path / "task.json")
    other.save_to_preset(tmp_path / "q")
    os.replace(tmp_path / "task.json", tmp_path / "q" / "task.json")  # q: 4-class config, 6-class weights
    with pytest.raises(CheckpointError, match="does not fit this task.*another shape"):
        ImageSegmenter.from_preset(str(tmp_path / "q"))


# ------------------------------------------------------- with_ssa (keras-hub)
TINY_RESNET = dict(
    input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 8, 16, 16],
    stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
    use_pre_activation=False, image_shape=(32, 32, 3),
)  # fmt: skip


def keras_hub_deeplab():
    import keras_hub

    encoder = keras_hub.models.ResNetBackbone(**TINY_RESNET)
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P4", upsampling_size=4, dilation_rates=[1, 2],
        low_level_feature_key="P2", projection_filters=8, image_shape=(32, 32, 3),
    )  # fmt: skip
    converter = keras_hub.layers.DeepLabV3ImageConverter(image_size=(32, 32), scale=1 / 255)
    return keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=backbone, num_classes=4,
        preprocessor=keras_hub.models.DeepLabV3ImageSegmenterPreprocessor(image_converter=converter),
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("make", [keras_hub_deeplab], ids=["deeplabv3"])  # SegFormer: the README test
def test_with_ssa_trains_keeps_backbone_and_preprocessor_and_reloads(make, tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    hub = make()
    backbone_before = [keras.ops.convert_to_numpy(v) for v in hub.backbone.weights]
    model = with_ssa(hub)
    assert model.is_ssa and model.classifier.with_teacher and model.preprocessor is hub.preprocessor
    assert model.backbone.layers[-1] is hub.backbone  # the same layers: the same weights
    for got, want in zip(model.backbone.weights, backbone_before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)
    assert tuple(model.backbone.outputs[0].shape) == tuple(hub.backbone.outputs[0].shape)  # SSA reads F

    rng = np.random.default_rng(0)
    size = tuple(hub.backbone.inputs[0].shape[1:3])
    images = rng.integers(0, 256, (8, *size, 3), dtype="uint8")
    labels = (images[..., :1] // 64).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = model.fit(data.repeat(), steps_per_epoch=4, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    assert {"semantic_distill", "spatial_distill", "response_distill"} <= set(history.history)
    maps = model.predict(images[:3])
    assert maps.shape == (3, *size) and maps.dtype == np.int32
    assert model.evaluate(data)["mode"] == "whole"

    deployed = inference_model(model)
    assert not deployed.classifier.with_teacher
    assert deployed.count_params() < model.count_params()
    np.testing.assert_array_equal(deployed.predict(images[:3]), maps)
    deployed.save_to_preset(tmp_path / "preset")
    reloaded = ssaseg_keras.ImageSegmenter.from_preset(str(tmp_path / "preset"))
    np.testing.assert_array_equal(reloaded.predict(images[:3]), maps)


def test_with_ssa_refuses_what_is_not_a_segmenter():
    with pytest.raises(UserError, match="with_ssa takes a keras-hub ImageSegmenter"):
        with_ssa(keras.Sequential([keras.layers.Dense(2)]))
