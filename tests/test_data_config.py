"""validate_data_config: defaults per source, clear errors; importing it needs no TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ssaseg_keras.data import catalog
from ssaseg_keras.data.config import validate_data_config
from ssaseg_keras.utils.errors import RecipeError


def test_reference_defaults_for_coco():
    cfg = validate_data_config({"source": "coco_stuff10k", "root": "data/coco_stuff10k"})
    assert cfg["num_classes"] == 171 and len(cfg["class_names"]) == 171
    assert cfg["class_names"][0] == "person" and cfg["class_names"][-1] == "wood"
    assert cfg["reduce_zero_label"] is True
    assert cfg["crop_size"] == (512, 512) and cfg["scale"] == (2048, 512)
    assert cfg["ratio_range"] == (0.5, 2.0) and cfg["cat_max_ratio"] == 0.75
    assert cfg["flip_prob"] == 0.5 and cfg["photometric"] is True
    assert cfg["mean"] == (123.675, 116.28, 103.53) and cfg["std"] == (58.395, 57.12, 57.375)
    assert cfg["skip_corrupt"] is False and cfg["verify"] is True


@pytest.mark.parametrize(
    "source,classes,crop", [("ade20k", 150, 512), ("pascal_context59", 59, 480)]
)
def test_dataset_defaults(source, classes, crop):
    cfg = validate_data_config({"source": source, "root": "x"})
    assert cfg["num_classes"] == classes == len(cfg["class_names"]) == len(set(cfg["class_names"]))
    assert cfg["crop_size"] == (crop, crop) and cfg["reduce_zero_label"]


def test_synthetic_defaults_and_sizes():
    cfg = validate_data_config({"source": "synthetic", "image_size": [48, 64], "crop_size": 32})
    assert cfg["num_classes"] == 21 and cfg["class_names"] == catalog.SYNTHETIC_CLASSES
    assert cfg["crop_size"] == (32, 32) and cfg["image_size"] == (48, 64)
    assert cfg["scale"] == (256, 48)  # ratio 1 keeps the generated size
    assert cfg["reduce_zero_label"] is False and cfg["seed"] == 0
    again = validate_data_config(cfg)  # idempotent: a validated config passes unchanged
    assert again == cfg


def test_folder_needs_class_names():
    with pytest.raises(RecipeError, match=r"data.class_names: required for source folder"):
        validate_data_config({"source": "folder", "root": "x"})
    cfg = validate_data_config({"source": "folder", "root": "x", "class_names": ["a", "b"]})
    assert cfg["num_classes"] == 2 and cfg["img_suffix"][0] == ".jpg"


@pytest.mark.parametrize(
    "section,pattern",
    [
        ({"source": "cityscapes"}, r"data.source: must be one of ade20k, coco_stuff10k"),
        (
            {"source": "ade20k", "root": "x", "crop": 512},
            r"data.crop: unknown key .*allowed keys: .*crop_size",
        ),
        (
            {"source": "ade20k", "root": "x", "image_size": 64},
            r"data.image_size: .*applies to source synthetic",
        ),
        ({"source": "ade20k"}, r"data.root: must be a non-empty string"),
        ({"source": "ade20k", "root": "x", "num_classes": 10}, r"data.num_classes: ade20k has 150"),
        ({"source": "synthetic", "crop_size": [1, 2, 3]}, r"data.crop_size: must be one or two"),
        ({"source": "synthetic", "crop_size": 0}, r"data.crop_size"),
        ({"source": "synthetic", "flip_prob": 1.5}, r"data.flip_prob: must be in \[0.0, 1.0\]"),
        ({"source": "synthetic", "photometric": "yes"}, r"data.photometric: must be true or false"),
        ({"source": "synthetic", "ratio_range": [2.0, 0.5]}, r"data.ratio_range: .*low <= high"),
        ({"source": "synthetic", "mean": [1, 2]}, r"data.mean: must be three"),
        ({"source": "synthetic", "num_parallel_calls": "many"}, r"data.num_parallel_calls"),
        ({"source": "folder", "root": "x", "class_names": ["a", "a"]}, r"duplicate"),
        ({"source": "folder", "root": "x", "class_names": ["a"], "num_classes": 3}, r"has 1 names"),
        ({"source": "tfds", "name": "x"}, r"data.num_classes: required for source tfds"),
        ({"source": "tfds", "name": "x", "num_classes": 3, "split": {"test": "t"}}, r"data.split"),
        ("ade20k", r"data: must be a mapping"),
        ({"source": "synthetic", "num_classes": 1}, r"data.num_classes: .*at least 2"),
    ],
)
def test_errors_name_the_key(section, pattern):
    with pytest.raises(RecipeError, match=pattern):
        validate_data_config(section)


def test_tfds_split_forms():
    cfg = validate_data_config(
        {"source": "tfds", "name": "scene_parse150", "num_classes": 151, "split": "train[:10]"}
    )
    assert cfg["split"] == {"train": "train[:10]", "val": "train[:10]"}
    assert cfg["class_names"][150] == "class_150" and cfg["label_key"] == "segmentation_mask"


def test_catalog_facts():
    table = catalog.coco_stuff_id_map()
    assert table[0] == 0 and table[11] == 11 and table[12] == 0 and table[13] == 12
    assert table[27] == 25 and table[182] == 171 and max(table) == 171
    assert sorted(set(table[1:183])) == list(range(0, 172))
    pal = catalog.palette(171)
    assert len(set(pal)) == 171 and all(0 <= c <= 255 for rgb in pal for c in rgb)


def test_config_and_metric_import_without_tensorflow():
    code = (
        "import sys, os; os.environ['KERAS_BACKEND']='jax';"
        "import ssaseg_keras.data.config, ssaseg_keras.data.sources, ssaseg_keras.data;"
        "assert 'tensorflow' not in sys.modules, 'data.config imported TF';"
        "import ssaseg_keras.metrics; assert 'tensorflow' not in sys.modules, 'metrics imported TF'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "section",
    [
        {"source": "ade20k", "root": "r"},
        {"source": "coco_stuff10k", "root": "r", "ratio_range": None, "cache": True},
        {"source": "pascal_context59", "root": "r", "skip_corrupt": True},
        {"source": "folder", "root": "r", "class_names": ["a", "b"], "img_suffix": ".png"},
        {"source": "tfds", "name": "n", "num_classes": 4, "data_dir": "/d"},
    ],
)
def test_validation_is_idempotent(section):
    cfg = validate_data_config(section)
    assert validate_data_config(cfg) == cfg


def test_colorize():
    rgb = catalog.colorize([[0, 1], [255, 2]], num_classes=3)
    pal = catalog.palette(3)
    assert rgb.shape == (2, 2, 3) and rgb.dtype.name == "uint8"
    assert (
        tuple(rgb[0, 1]) == pal[1] and tuple(rgb[1, 1]) == pal[2] and tuple(rgb[1, 0]) == (0, 0, 0)
    )
