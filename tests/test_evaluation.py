"""Evaluation and prediction: whole and slide inference, their mode names, one preprocessing rule."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy
from models_helpers import TINY_BACKBONE, TINY_HEAD, deterministic_nmf
from PIL import Image

from ssaseg_keras.recipes import validate_recipe
from ssaseg_keras.training.evaluation import (
    eval_mode_name,
    evaluate_model,
    evaluation_data_config,
    infer_logits,
    predict_logits,
    slide_logits,
    slide_windows,
)
from ssaseg_keras.training.predict import predict_image, preprocess_image


class ContextModel:
    """A stand-in model whose logits depend on the whole input (its mean), so averaging windows
    differs from one whole pass: logits[..., k] = x[..., k % 3] * (k + 1) + k * mean(x)."""

    num_classes = 4

    def __init__(self):
        self.calls = []

    def predict_on_batch(self, x):
        x = np.asarray(x, "float64")
        self.calls.append(x.shape)
        k = np.arange(self.num_classes)
        return (x[..., k % 3] * (k + 1) + k * x.mean(axis=(1, 2, 3), keepdims=True)).astype("float32")


def reference_slide(model_fn, image, crop, stride):
    """The window averaging written out per pixel: each pixel's logits are the mean, over the windows
    that contain it, of that window's logits at the pixel."""
    height, width = image.shape[1:3]
    windows = slide_windows(height, width, crop, stride)
    out = np.zeros((image.shape[0], height, width, ContextModel.num_classes))
    for i in range(height):
        for j in range(width):
            covering = [w for w in windows if w[0] <= i < w[1] and w[2] <= j < w[3]]
            out[:, i, j] = np.mean([model_fn(image[:, y1:y2, x1:x2])[:, i - y1, j - x1] for y1, y2, x1, x2 in covering], axis=0)
    return out


def test_slide_windows_are_mmsegs_with_the_last_flush_with_the_border():
    # 100 x 150, windows 64 x 64 every 32 x 48: 3 rows, 3 columns; the last of each moved back.
    rows = [(0, 64), (32, 96), (36, 100)]
    cols = [(0, 64), (48, 112), (86, 150)]
    assert slide_windows(100, 150, (64, 64), (32, 48)) == [(y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in cols]
    assert slide_windows(50, 40, (64, 64), (32, 32)) == [(0, 50, 0, 40)]  # a window larger than the image


def test_slide_logits_average_the_windows_on_a_non_square_image():
    image = np.random.default_rng(0).normal(size=(1, 100, 150, 3)).astype("float32")
    model = ContextModel()
    ours = slide_logits(model, image, (64, 64), (32, 48))
    expected = reference_slide(lambda crop: predict_logits(ContextModel(), crop), image, (64, 64), (32, 48))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    assert model.calls == [(1, 64, 64, 3)] * 9  # one compiled shape: every window is the crop size
    whole = predict_logits(ContextModel(), image)
    assert not np.allclose(ours, whole, atol=1e-3)  # the context changes: averaging is not a no-op


def test_a_window_covering_the_image_is_whole_mode():
    image = np.random.default_rng(1).normal(size=(1, 64, 96, 3)).astype("float32")
    slide = {"mode": "slide", "crop_size": [128, 128], "stride": [85, 85]}
    np.testing.assert_array_equal(infer_logits(ContextModel(), image, slide), infer_logits(ContextModel(), image))


def test_mode_names():
    assert eval_mode_name() == "whole"
    assert eval_mode_name("slide", [512, 512], [341, 341]) == "slide 512x512 stride 341x341"
    assert eval_mode_name("slide", [512, 512], [341, 341], flip=True) == "slide 512x512 stride 341x341, flip"
    assert eval_mode_name("whole", flip=True, scales=(0.5, 1.0)) == "whole, ms+flip [0.5, 1.0]"


def tiny_recipe(root, **eval_section):
    return validate_recipe({
        "model": {"family": "segnext", "size": "t", "ssa": True, "seed": 3, "backbone": dict(TINY_BACKBONE), "head": dict(TINY_HEAD)},
        "data": {"source": "folder", "root": str(root), "class_names": [f"c{i}" for i in range(5)], "scale": [96, 48]},
        "eval": eval_section,
    })  # fmt: skip


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    from ssaseg_keras.models import build_segmentor

    root = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir()
    for i, (h, w) in enumerate([(40, 70), (52, 36)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(rng.integers(0, 5, (h, w), dtype=np.uint8)).save(root / "labels" / f"im{i}.png")
    model = build_segmentor(tiny_recipe(root)["model"])
    return root, model


def test_eval_scale_defaults_to_the_data_scale_and_is_one_rule_for_evaluate_and_predict(folder_and_model):
    """`predict` prepares an image exactly as evaluation's tf.data pipeline does (eval.scale)."""
    from ssaseg_keras.data import build_dataset

    root, _ = folder_and_model
    recipe = tiny_recipe(root)
    assert recipe["eval"]["scale"] == [96, 48]  # null: data.scale
    recipe = tiny_recipe(root, scale=[64, 32])
    ((images, _, meta), _) = list(build_dataset(evaluation_data_config(recipe), "val", batch_size=1, return_meta=True))
    h, w = (int(v) for v in meta["image_shape"][0])
    assert (h, w) == (32, 56)  # 40x70 -> x0.8 keeping the ratio: long side <= 64, short side <= 32
    image = np.asarray(Image.open(root / "images" / "im0.png").convert("RGB"))
    np.testing.assert_array_equal(preprocess_image(image, recipe), images.numpy()[:, :h, :w])


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_evaluate_and_predict_use_the_recipes_eval_mode(folder_and_model, mode):
    root, model = folder_and_model
    covering = tiny_recipe(root, mode=mode, crop_size=[96, 96], stride=[64, 64])
    small = tiny_recipe(root, mode="slide", crop_size=[32, 32], stride=[16, 16])
    with deterministic_nmf():
        whole = evaluate_model(model, tiny_recipe(root))
        results = evaluate_model(model, covering)
        windowed = evaluate_model(model, small)
        image = np.asarray(Image.open(root / "images" / "im1.png").convert("RGB"))
        labels, logits = predict_image(model, image, small, return_logits=True)
        expected = slide_logits(model, preprocess_image(image, small), (32, 32), (16, 16))
    assert results["mode"] == ("whole" if mode == "whole" else "slide 96x96 stride 64x64")
    assert results["mIoU"] == pytest.approx(whole["mIoU"])  # a window covering every image is whole mode
    assert windowed["mode"] == "slide 32x32 stride 16x16" and windowed["num_images"] == 2
    assert labels.shape == (52, 36) and logits.shape == (52, 36, 5)
    from ssaseg_keras.ops.resize import resize_bilinear

    np.testing.assert_allclose(logits, to_numpy(resize_bilinear(expected, (52, 36)))[0], rtol=1e-4, atol=1e-4)


def test_a_fixed_size_model_names_the_fix_instead_of_failing_inside_keras():
    from ssaseg_keras.models import build_segmentor
    from ssaseg_keras.utils.errors import UserError

    model = build_segmentor({
        "family": "segformer", "size": "b0", "num_classes": 3, "ssa": False, "image_size": [64, 64],
        "backbone": {"embed_dims": [4, 8, 20, 32], "depths": [1, 1, 1, 1]}, "head": {"channels": 8},
    })  # fmt: skip
    image = np.zeros((1, 50, 80, 3), "float32")
    with pytest.raises(UserError, match="fixed to 64x64 .* eval.crop_size: \\[64, 64\\]"):
        predict_logits(model, image)
    assert predict_logits(model, np.zeros((1, 64, 64, 3), "float32")).shape == (1, 64, 64, 3)
    windows = slide_logits(model, np.zeros((1, 64, 100, 3), "float32"), (64, 64), (32, 32))
    assert windows.shape == (1, 64, 100, 3)
