"""The tf.data pipeline: label/image alignment through every transform, reduce_zero_label,
cat_max_ratio, determinism, the synthetic source, eval batches. Images stay tiny."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssaseg_keras.data import build_dataset, dataset_info, dataset_size
from ssaseg_keras.data import transforms as T
from ssaseg_keras.data.config import validate_data_config
from ssaseg_keras.data.synthetic import class_roles, synthetic_numpy

MEAN = np.array((123.675, 116.28, 103.53), np.float32)
STD = np.array((58.395, 57.12, 57.375), np.float32)


def encode(label):
    """RGB image whose red channel encodes the label: 20 * l + 10 (l < 10), 250 for 255."""
    red = np.where(label == 255, 250, 20 * label + 10).astype(np.uint8)
    return np.stack([red, 255 - red, np.full_like(red, 128)], -1)


def decode(normalised):
    red = np.round(normalised[..., 0] * STD[0] + MEAN[0])
    return np.where(red == 250, 255, (red - 10) / 20)


def block_label(rng, h, w, block=12, classes=9):
    """Random classes on a grid of block x block squares (one block is 255)."""
    grid = rng.integers(0, classes, size=(-(-h // block), -(-w // block)))
    grid[0, 1] = 255
    return np.kron(grid, np.ones((block, block), np.int64))[:h, :w].astype(np.uint8)


def write_folder(root, labels, image_fn=encode):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, label in enumerate(labels):
        Image.fromarray(image_fn(label)).save(root / "images" / f"im{i}.png")
        Image.fromarray(label).save(root / "labels" / f"im{i}.png")


@pytest.fixture(scope="module")
def encoded_folder(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("encoded")
    labels = [block_label(rng, 40, 56), block_label(rng, 48, 32)]
    write_folder(root, labels)
    return root, labels


def test_label_image_alignment_through_every_transform(encoded_folder):
    """Random rescale (x0.5..2), cat_max_ratio crop, flip and pad keep every pixel on its label."""
    root, _ = encoded_folder
    section = {
        "source": "folder", "root": str(root), "class_names": [f"c{i}" for i in range(9)],
        "scale": [56, 40], "crop_size": [32, 32], "photometric": False,
    }  # fmt: skip
    ds = build_dataset(section, "train", batch_size=4, seed=3)
    checked = flipped_or_scaled = 0
    for images, labels in ds.take(4):
        for image, label in zip(images.numpy(), labels.numpy()):
            assert image.shape == (32, 32, 3) and label.shape == (32, 32)
            pad = np.all(image == 0, axis=-1)
            assert np.all(label[pad] == 255)
            code = decode(image)
            # Interior pixels (5x5 neighbourhood of one label: enough for bilinear vs nearest
            # sampling at scale factors up to 3) decode exactly to their label.
            padded = np.pad(label.astype(np.int64), 2, constant_values=-1)
            same = np.ones_like(label, bool)
            for dy in range(5):
                for dx in range(5):
                    same &= padded[dy : dy + 32, dx : dx + 32] == label
            interior = same & ~pad
            assert interior.sum() > 50
            np.testing.assert_array_equal(code[interior], label[interior])
            valid = ~pad
            assert np.mean(code[valid] == label[valid]) > 0.75
            checked += 1
            flipped_or_scaled += int(pad.any())
    assert checked == 16 and flipped_or_scaled > 0


def test_flip_and_rescale_move_labels_with_pixels():
    """Direct check of one transform each on a ramp image (value = column index)."""
    cols = np.tile(np.arange(8, dtype=np.int32), (4, 1))
    image = tf.constant(np.repeat(cols[..., None] * 10.0, 3, -1), tf.float32)
    label = tf.constant(cols)
    for seed in range(6):
        img, lab = T.random_flip(image, label, tf.constant([seed, 0], tf.int64), prob=0.5)
        np.testing.assert_array_equal(img.numpy()[..., 0] / 10.0, lab.numpy())
    img, lab = T.rescale(image, label, (16, 8))  # x2
    assert lab.shape == (8, 16)
    np.testing.assert_array_equal(lab.numpy()[0], np.repeat(np.arange(8), 2))


def test_rescale_size_matches_mmcv():
    # mmcv rescale_size: factor min(long/max(h,w), short/min(h,w)), int(x * f + 0.5)
    for (h, w), scale, want in [((480, 640), (2048, 512), (512, 683)), ((375, 500), (520, 520), (390, 520)),
                                ((500, 333), (2048, 512), (769, 512)), ((100, 3000), (2048, 512), (68, 2048))]:  # fmt: skip
        got = T.rescale_size(tf.constant(h), tf.constant(w), max(scale), min(scale))
        assert (int(got[0]), int(got[1])) == want


def test_reduce_zero_label():
    got = T.reduce_zero_label(tf.constant([0, 1, 2, 150, 254, 255], tf.int32)).numpy()
    np.testing.assert_array_equal(got, [255, 0, 1, 149, 253, 255])


def test_reduce_zero_label_in_the_pipeline(tmp_path):
    label = np.zeros((16, 16), np.uint8)
    label[:, 8:] = 3
    label[0, 0] = 255
    write_folder(tmp_path, [label], image_fn=lambda lab: np.zeros((16, 16, 3), np.uint8))
    section = {
        "source": "folder",
        "root": str(tmp_path),
        "class_names": ["a", "b", "c"],
        "reduce_zero_label": True,
    }
    _, labels = next(iter(build_dataset(section, "val", batch_size=1)))
    expect = np.where(label == 0, 255, label.astype(np.int32) - 1)
    expect[0, 0] = 255
    np.testing.assert_array_equal(labels.numpy()[0], expect)


def crop_ok_rate(cat_max_ratio, n=100):
    """Fraction of 32x32 crops of a 64x64 label (class 1 in the top-left 24x24, else 0) that pass
    mmseg's test. A single uniform crop passes with p = 134/1089 = 0.12; ten retries: ~0.76."""
    label = np.zeros((64, 64), np.int32)
    label[:24, :24] = 1
    label = tf.constant(label)
    image = tf.zeros((64, 64, 3))

    def one(i):
        _, lab = T.random_crop(
            image, label, tf.stack([tf.constant(7, tf.int64), i]), (32, 32), 2, cat_max_ratio
        )
        ones = tf.reduce_sum(tf.cast(lab == 1, tf.int32))
        return (ones > 256) & (ones < 768)

    return float(np.mean(list(tf.data.Dataset.range(n).map(one).as_numpy_iterator())))


def test_cat_max_ratio_retries_crops():
    assert crop_ok_rate(1.0) < 0.25
    assert crop_ok_rate(0.75) > 0.55


def test_photometric_distortion_is_pointwise_and_in_range():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 256, size=(16, 3)).astype(np.float32)
    image = np.repeat(values[None], 4, axis=0)  # (4, 16, 3): each column one colour
    changed = 0
    for seed in range(8):
        out = T.photometric_distortion(tf.constant(image), tf.constant([seed, 1], tf.int64)).numpy()
        assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
        np.testing.assert_array_equal(
            out, np.repeat(out[:1], 4, axis=0)
        )  # same colour -> same output
        changed += int(np.abs(out - image).max() > 0)
    assert changed >= 5


def test_determinism_under_a_seed():
    section = {
        "source": "synthetic",
        "image_size": [40, 48],
        "crop_size": [32, 32],
        "num_images": 6,
    }
    first = [b for b in build_dataset(section, "train", batch_size=3, seed=5).take(3)]
    again = [b for b in build_dataset(section, "train", batch_size=3, seed=5).take(3)]
    other = [b for b in build_dataset(section, "train", batch_size=3, seed=6).take(3)]
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    assert any(not np.array_equal(a[0].numpy(), b[0].numpy()) for a, b in zip(first, other))
    # The second epoch (batches 2-3) reshuffles and re-augments.
    assert not np.array_equal(first[0][0].numpy(), first[2][0].numpy())


def test_synthetic_dataset():
    cfg = validate_data_config({"source": "synthetic", "image_size": [48, 64], "num_images": 4})
    images, labels = synthetic_numpy(cfg, "train", count=4)
    again, labels2 = synthetic_numpy(cfg, "train", count=4)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels2)
    assert (
        images.shape == (4, 48, 64, 3) and images.dtype == np.uint8 and labels.shape == (4, 48, 64)
    )
    assert labels.min() >= 0 and labels.max() < 21
    present = np.unique(labels)
    stuff, objects, small, thin = class_roles(21)
    assert stuff == [0, 1, 2, 3, 4, 5] and small == [17, 18] and thin == [19, 20]
    assert len(present) >= 8 and set(present) & set(objects) and set(present) & set(thin + small)
    # Thin structures are thin: a thin-class pixel has few same-class pixels in its row window.
    # Feature deviation: a class's mean colour differs between images.
    means = {}
    for img, lab in zip(images, labels):
        for k in np.unique(lab):
            if (lab == k).sum() > 30:
                means.setdefault(k, []).append(img[lab == k].mean(0))
    drifts = [np.abs(np.diff(v, axis=0)).max() for v in means.values() if len(v) > 1]
    assert drifts and max(drifts) > 5.0
    val_images, _ = synthetic_numpy(cfg, "val", count=1)
    assert not np.array_equal(val_images[0], images[0])
    other = synthetic_numpy(
        validate_data_config({"source": "synthetic", "image_size": [48, 64], "seed": 1}), count=1
    )
    assert not np.array_equal(other[0][0], images[0])
    assert dataset_size(cfg, "train") == 4 and dataset_size(cfg, "val") == 50
    info = dataset_info(cfg)
    assert info["num_classes"] == 21 and len(info["palette"]) == 21 and info["ignore_index"] == 255


def test_synthetic_any_size_and_class_count():
    cfg = validate_data_config({"source": "synthetic", "image_size": [20, 100], "num_classes": 5})
    _, labels = synthetic_numpy(cfg, count=2)
    assert labels.shape == (2, 20, 100) and labels.max() < 5
    section = {
        "source": "synthetic",
        "image_size": [24, 20],
        "crop_size": 32,
        "num_images": 2,
        "ratio_range": None,
    }
    x, y = next(iter(build_dataset(section, "train", batch_size=2)))
    assert x.shape == (2, 32, 32, 3) and y.shape == (2, 32, 32)
    y, x = y.numpy(), x.numpy()
    assert np.all(y[:, 24:] == 255) and np.all(y[:, :, 20:] == 255) and np.all(y[:, :24, :20] < 21)
    assert np.all(x[:, 24:] == 0) and np.all(x[:, :, 20:] == 0)


def test_eval_batches_keep_original_labels(encoded_folder):
    root, labels = encoded_folder
    section = {
        "source": "folder",
        "root": str(root),
        "class_names": [f"c{i}" for i in range(9)],
        "scale": [28, 20],
    }
    one = list(build_dataset(section, "val", batch_size=1))
    assert [tuple(x.shape) for x, _ in one] == [
        (1, 20, 28, 3),
        (1, 28, 19, 3),
    ]  # 40x56 -> x0.5, 48x32 -> 28x19
    for (_, y), label in zip(one, labels):
        np.testing.assert_array_equal(y.numpy()[0], label)
    ((x, y, meta),) = list(build_dataset(section, "val", batch_size=2, return_meta=True))
    assert x.shape == (2, 28, 28, 3) and y.shape == (2, 48, 56)
    np.testing.assert_array_equal(meta["image_shape"].numpy(), [[20, 28], [28, 19]])
    np.testing.assert_array_equal(meta["label_shape"].numpy(), [[40, 56], [48, 32]])
    assert np.all(y.numpy()[0, 40:] == 255) and np.all(y.numpy()[1, :, 32:] == 255)
    assert np.all(x.numpy()[1, :, 19:] == 0)
    np.testing.assert_array_equal(y.numpy()[1, :48, :32], labels[1])
    # pad_multiple: 20x28 and 28x19 images padded to 32x32, meta keeps the valid sizes.
    padded = list(build_dataset(section, "val", batch_size=1, return_meta=True, pad_multiple=16))
    assert [tuple(x.shape) for x, _, _ in padded] == [(1, 32, 32, 3), (1, 32, 32, 3)]
    np.testing.assert_array_equal(padded[1][0].numpy()[0, :28, :19], one[1][0].numpy()[0])
    np.testing.assert_array_equal(padded[1][2]["image_shape"].numpy(), [[28, 19]])


def test_cache_option_gives_the_same_batches():
    section = {"source": "synthetic", "image_size": [32, 32], "num_images": 4}
    assert validate_data_config(section)["cache"] is True  # synthetic default
    plain = build_dataset({**section, "cache": False}, "train", batch_size=4, seed=2, shuffle=False)
    cached = build_dataset(section, "train", batch_size=4, seed=2, shuffle=False)
    np.testing.assert_array_equal(next(iter(plain))[0].numpy(), next(iter(cached))[0].numpy())


def test_the_dataset_feeds_fit_and_evaluate_on_this_backend():
    import keras

    from ssaseg_keras.metrics import SegmentationMetrics

    section = {"source": "synthetic", "image_size": [32, 32], "num_images": 4, "num_val_images": 2}
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(21, 1)(inputs))
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
        metrics=[SegmentationMetrics(21)],
    )
    history = model.fit(
        build_dataset(section, "train", batch_size=2),
        steps_per_epoch=2,
        epochs=1,
        verbose=0,
        shuffle=False,
    )
    assert np.isfinite(history.history["loss"][0])
    result = model.evaluate(
        build_dataset(section, "val", batch_size=1), return_dict=True, verbose=0
    )
    assert 0.0 <= result["mean_iou"] <= 1.0


def test_transforms_match_opencv_as_mmseg_uses_it():
    """Resize and the HSV steps against OpenCV (mmcv's backend), where OpenCV is installed."""
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), (5, 5), 2)
    lab = rng.integers(0, 20, (37, 53), dtype=np.uint8)
    x = tf.constant(img, tf.float32)
    for h, w in [(74, 106), (20, 29)]:
        ref = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        assert np.abs(T.resize_image(x, (h, w)).numpy() - ref).max() <= 1.0  # cv2's fixed point
        ref = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(
            T.resize_label(tf.constant(lab, tf.int32), (h, w)).numpy(), ref
        )

    def mmcv_hsv(alpha=None, shift=None):
        hsv = cv2.cvtColor(img[..., ::-1].copy(), cv2.COLOR_BGR2HSV)
        if alpha is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(alpha), 0, 255).astype(np.uint8)
        if shift is not None:
            hsv[..., 0] = (hsv[..., 0].astype(int) + shift) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[..., ::-1].astype(np.float32)

    for alpha in (0.6, 1.4):
        diff = np.abs(T._hsv_adjust(x, saturation=alpha).numpy() - mmcv_hsv(alpha=alpha))
        assert diff.max() <= 3 and diff.mean() < 0.5
    for shift in (-18, 7):
        diff = np.abs(T._hsv_adjust(x, hue_shift=float(shift)).numpy() - mmcv_hsv(shift=shift))
        assert diff.max() <= 3 and diff.mean() < 0.5


def test_a_corrupt_image_is_one_data_error_naming_the_fix(tmp_path):
    from ssaseg_keras.data.pipeline import explain_data_errors
    from ssaseg_keras.utils.errors import DataError

    rng = np.random.default_rng(5)
    root = tmp_path / "broken"
    write_folder(root, [block_label(rng, 32, 32), block_label(rng, 32, 32)])
    whole = (root / "images" / "im1.png").read_bytes()
    (root / "images" / "im1.png").write_bytes(whole[: len(whole) // 2])  # the header reads, the pixels do not
    section = {"source": "folder", "root": str(root), "class_names": [f"c{i}" for i in range(9)], "crop_size": [32, 32]}
    ds = build_dataset(section, "val", batch_size=1)
    with pytest.raises(DataError, match=r"val data \(folder at .*broken\) has a file that cannot be read: .*data check"):
        with explain_data_errors(section, "val"):
            for _ in ds:
                pass
    with pytest.raises(KeyError):  # other errors pass through unchanged
        with explain_data_errors(section, "val"):
            raise KeyError("not a data error")
