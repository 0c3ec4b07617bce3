"""Each file source reads a tiny fixture laid out as its release; bad data fails fast by file name."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssaseg_keras.data import build_dataset, dataset_size
from ssaseg_keras.data.config import validate_data_config
from ssaseg_keras.data.sources import list_samples
from ssaseg_keras.utils.errors import DataError

RNG = np.random.default_rng(0)


def save_pair(image_path, label_path, label, size=None):
    """Writes a random JPEG/PNG image of the label's size (or `size`) and the label PNG."""
    h, w = size or label.shape
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image_path)
    Image.fromarray(label.astype(np.uint8)).save(label_path)


def labels_of(section, split):
    """Original-resolution eval labels of a split, in file order."""
    return [y.numpy()[0] for _, y in build_dataset(section, split, batch_size=1)]


def test_ade20k_layout(tmp_path):
    lab = np.array([[0, 1, 150], [2, 0, 3]], np.uint8).repeat(4, 0).repeat(4, 1)
    save_pair(
        tmp_path / "images/training/ADE_train_1.jpg",
        tmp_path / "annotations/training/ADE_train_1.png",
        lab,
    )
    save_pair(
        tmp_path / "images/training/ADE_train_2.jpg",
        tmp_path / "annotations/training/ADE_train_2.png",
        lab,
    )
    save_pair(
        tmp_path / "images/validation/ADE_val_1.jpg",
        tmp_path / "annotations/validation/ADE_val_1.png",
        lab,
    )
    section = {"source": "ade20k", "root": str(tmp_path), "crop_size": 8, "scale": [12, 8]}
    assert dataset_size(section, "train") == 2 and dataset_size(section, "val") == 1
    (val,) = labels_of(section, "val")
    np.testing.assert_array_equal(val[::4, ::4], [[255, 0, 149], [1, 255, 2]])  # reduce_zero_label
    x, y = next(iter(build_dataset(section, "train", batch_size=2)))
    assert x.shape == (2, 8, 8, 3) and y.shape == (2, 8, 8)
    assert set(np.unique(y.numpy())) <= {0, 1, 2, 149, 255}


def test_coco_stuff10k_prepared_layout(tmp_path):
    lab = np.array([[0, 171], [5, 1]], np.uint8).repeat(3, 0).repeat(5, 1)
    for split in ("train2014", "test2014"):
        name = f"COCO_{split}_000000000001"
        save_pair(
            tmp_path / f"images/{split}/{name}.jpg",
            tmp_path / f"annotations/{split}/{name}_labelTrainIds.png",
            lab,
        )
    section = {"source": "coco_stuff10k", "root": str(tmp_path)}
    (val,) = labels_of(section, "val")
    np.testing.assert_array_equal(val[::3, ::5], [[255, 170], [4, 0]])
    samples = list_samples(validate_data_config(section), "train")
    assert samples.labels[0].endswith(
        "annotations/train2014/COCO_train2014_000000000001_labelTrainIds.png"
    )


def test_pascal_context59_layout(tmp_path):
    voc = tmp_path / "VOCdevkit/VOC2010"
    lab = np.array([[0, 59], [1, 30]], np.uint8).repeat(4, 0).repeat(4, 1)
    for stem in ("2008_000002", "2008_000003", "2008_000007"):
        save_pair(voc / f"JPEGImages/{stem}.jpg", voc / f"SegmentationClassContext/{stem}.png", lab)
    lists = voc / "ImageSets/SegmentationContext"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2008_000002\n2008_000003\n")
    (lists / "val.txt").write_text("2008_000007\n")
    section = {
        "source": "pascal_context59",
        "root": str(tmp_path / "VOCdevkit"),
    }  # VOC2010 found inside
    assert dataset_size(section, "train") == 2
    (val,) = labels_of(section, "val")
    np.testing.assert_array_equal(val[::4, ::4], [[255, 58], [0, 29]])
    (lists / "val.txt").write_text("2008_000007\n2008_999999\n")
    with pytest.raises(
        DataError, match=r"val.txt names 2008_999999 but the image .*2008_999999.jpg is missing"
    ):
        build_dataset(section, "val")


def test_folder_with_palette_labels_and_splits(tmp_path):
    lab = np.array([[0, 1], [2, 255]], np.uint8).repeat(4, 0).repeat(4, 1)
    for split in ("train", "val"):
        save_pair(tmp_path / f"images/{split}/a.png", tmp_path / f"labels/{split}/a.png", lab)
    # A VOC-style palette label: indices must be read, not the colours.
    pal = Image.fromarray(lab, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [200, 200, 200] * 253)
    pal.save(tmp_path / "labels/val/a.png")
    section = {"source": "folder", "root": str(tmp_path), "class_names": ["bg", "cat", "dog"]}
    assert list_samples(validate_data_config(section), "val").label_mode == "P"
    (val,) = labels_of(section, "val")
    np.testing.assert_array_equal(val, lab)


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match=r"data.root directory not found: .*nowhere"):
        build_dataset({"source": "ade20k", "root": str(tmp_path / "nowhere")})
    (tmp_path / "images/training").mkdir(parents=True)
    with pytest.raises(DataError, match=r"label directory not found: .*annotations/training"):
        build_dataset({"source": "ade20k", "root": str(tmp_path)})


def test_image_without_label(tmp_path):
    lab = np.zeros((4, 4), np.uint8)
    save_pair(tmp_path / "images/a.png", tmp_path / "labels/a.png", lab)
    save_pair(tmp_path / "images/b.png", tmp_path / "other/b.png", lab)
    with pytest.raises(
        DataError, match=r"image without label: .*images/b.png \(expected .*labels/b.png\)"
    ):
        build_dataset({"source": "folder", "root": str(tmp_path), "class_names": ["a"]})


def test_size_mismatch(tmp_path):
    save_pair(
        tmp_path / "images/a.png",
        tmp_path / "labels/a.png",
        np.zeros((4, 6), np.uint8),
        size=(4, 5),
    )
    with pytest.raises(
        DataError, match=r"size mismatch: image .*a.png is 5x4 but its label .*a.png is 6x4"
    ):
        build_dataset({"source": "folder", "root": str(tmp_path), "class_names": ["a"]})


def test_corrupt_file_is_an_error_unless_skipped(tmp_path):
    lab = np.zeros((4, 4), np.uint8)
    lab[:, 2:] = 1
    save_pair(tmp_path / "images/a.png", tmp_path / "labels/a.png", lab)
    save_pair(tmp_path / "images/b.png", tmp_path / "labels/b.png", lab)
    (tmp_path / "images/b.png").write_bytes(b"not an image at all")
    section = {"source": "folder", "root": str(tmp_path), "class_names": ["a", "b"]}
    with pytest.raises(
        DataError, match=r"images/b.png: unreadable image .*data.skip_corrupt: true"
    ):
        build_dataset(section)
    samples = list_samples(validate_data_config({**section, "skip_corrupt": True}), "train")
    assert (
        len(samples) == 1 and len(samples.skipped) == 1 and samples.skipped[0][0].endswith("b.png")
    )
    batches = list(build_dataset({**section, "skip_corrupt": True}, "val", batch_size=4))
    assert len(batches) == 1 and batches[0][1].shape == (1, 4, 4)


def test_tfds_source(tmp_path):
    """A tiny TFDS builder prepared into a local data_dir, read offline."""
    import tensorflow_datasets as tfds

    class TinySegForTest(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "annotation": tfds.features.Image(shape=(None, None, 1)),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(3), "validation": self._generate_examples(1)}

        def _generate_examples(self, n):
            for i in range(n):
                lab = np.full((6, 8, 1), i, np.uint8)
                lab[0, 0, 0] = 255
                yield i, {"image": np.full((6, 8, 3), 10 * i, np.uint8), "annotation": lab}

    TinySegForTest(data_dir=str(tmp_path)).download_and_prepare()
    section = {
        "source": "tfds", "name": "tiny_seg_for_test", "data_dir": str(tmp_path), "num_classes": 3,
        "label_key": "annotation", "crop_size": 4, "scale": [8, 6],
    }  # fmt: skip
    (val,) = labels_of(section, "val")
    assert val.shape == (6, 8) and val[0, 0] == 255 and np.all(val.ravel()[1:] == 0)
    x, y = next(iter(build_dataset(section, "train", batch_size=3)))
    assert x.shape == (3, 4, 4, 3) and set(np.unique(y.numpy())) <= {0, 1, 2, 255}
    with pytest.raises(DataError, match=r"has no feature 'segmentation_mask' \(data.label_key\)"):
        build_dataset({**section, "label_key": "segmentation_mask"})
    with pytest.raises(DataError, match=r"cannot load TFDS dataset 'no_such_dataset_xyz'"):
        build_dataset({**section, "name": "no_such_dataset_xyz"})


def test_unverified_pipeline_still_names_or_skips_bad_files(tmp_path):
    """verify: false skips the up-front header pass; decode errors then surface in tf.data."""
    import tensorflow as tf

    lab = np.zeros((4, 4), np.uint8)
    save_pair(tmp_path / "images/a.png", tmp_path / "labels/a.png", lab)
    save_pair(
        tmp_path / "images/b.png",
        tmp_path / "labels/b.png",
        np.zeros((4, 5), np.uint8),
        size=(4, 4),
    )
    save_pair(tmp_path / "images/c.png", tmp_path / "labels/c.png", lab)
    (tmp_path / "images/c.png").write_bytes(b"\x89PNG broken")
    section = {"source": "folder", "root": str(tmp_path), "class_names": ["a"], "verify": False}
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"image and label sizes differ.*images/b.png"
    ):
        list(build_dataset(section, "val", batch_size=1))
    kept = list(build_dataset({**section, "skip_corrupt": True}, "val", batch_size=1))
    assert len(kept) == 1 and kept[0][1].shape == (1, 4, 4)
