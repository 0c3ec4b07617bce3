"""The built-in synthetic segmentation dataset, generated with TensorFlow ops inside tf.data.

Image `i` of a split is a pure function of (seed, split, i): no files, any size, any class count >= 2.
Classes have roles (for 21 classes: 6 stuff regions, 11 objects, 2 small-object classes, 2 thin
structures). A class's look is a colour plus an oriented sinusoidal texture; both drift from image
to image (hue, saturation, brightness, texture frequency and contrast jittered per image and class,
plus a global illumination cast), while staying consistent within an image: the feature deviation
between the training distribution and a test image that SSA adapts its prototypes to.
"""

from __future__ import annotations

import math

N_REGIONS = 5  # Voronoi seeds of the stuff layer
N_OBJECTS = 6
N_SMALL = 6
N_THIN = 3
VAL_OFFSET = 1_000_003  # the val split uses image indices from here on


def class_roles(num_classes):
    """(stuff, objects, small, thin): lists of class ids by role; for 21 classes 0-5, 6-16, 17-18, 19-20."""
    k = num_classes
    n_stuff = max(1, (6 * k) // 21)
    n_thin = 2 if k >= 10 else (1 if k >= 4 else 0)
    n_small = 2 if k >= 10 else (1 if k >= 5 else 0)
    n_obj = k - n_stuff - n_thin - n_small
    ids = list(range(k))
    stuff = ids[:n_stuff]
    objects = ids[n_stuff : n_stuff + n_obj]
    small = ids[n_stuff + n_obj : n_stuff + n_obj + n_small]
    thin = ids[n_stuff + n_obj + n_small :]
    return stuff, objects, small, thin


def _class_table(num_classes):
    """Fixed per-class appearance: base HSV (K, 3), texture frequency (K,), angle (K,), amplitude (K,)."""
    import numpy as np

    k = np.arange(num_classes, dtype=np.float64)
    hue = (k * 0.6180339887) % 1.0
    sat = np.array([0.85, 0.55, 0.7])[np.arange(num_classes) % 3]
    val = np.array([0.9, 0.6, 0.75, 0.45])[(np.arange(num_classes) // 3) % 4]
    freq = 0.15 + 0.9 * ((k * 0.381966) % 1.0)  # radians per pixel
    angle = (k * 2.39996) % math.pi
    amp = 12.0 + 28.0 * ((k * 0.7548776) % 1.0)
    hsv = np.stack([hue, sat, val], -1).astype(np.float32)
    return hsv, freq.astype(np.float32), angle.astype(np.float32), amp.astype(np.float32)


def _pick(tf, seed, n, choices):
    """n class ids drawn uniformly from `choices` (a non-empty list)."""
    idx = tf.random.stateless_uniform([n], seed, 0, len(choices), dtype=tf.int32)
    return tf.gather(tf.constant(choices, tf.int32), idx)


def generate(index, seed, image_size, num_classes):
    """One synthetic sample. index: int64 scalar tensor; seed: python int.

    Returns image uint8 (H, W, 3) and label int32 (H, W) with ids in [0, num_classes).
    """
    from ssaseg_keras.utils.tensorflow import import_tensorflow as import_tf

    tf = import_tf()
    if num_classes < 2:
        raise ValueError("the synthetic dataset needs at least 2 classes")
    h, w = image_size
    size = float(min(h, w))
    stuff, objects, small, thin = class_roles(num_classes)
    objects = objects or stuff
    seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)]), 40
    )
    s = iter(tf.unstack(seeds))

    def uni(shape, lo, hi):
        return tf.random.stateless_uniform(shape, next(s), lo, hi)

    yy, xx = tf.meshgrid(
        tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij"
    )
    yy3, xx3 = yy[..., None], xx[..., None]

    # Stuff: a warped Voronoi partition.
    py, px = uni([N_REGIONS], 0, h), uni([N_REGIONS], 0, w)
    region_cls = _pick(tf, next(s), N_REGIONS, stuff)
    warp = uni([4], 0, 1)
    wy = yy + 0.08 * size * tf.sin(xx / (0.1 + 0.25 * warp[0]) / size * 6.0 + 6.28 * warp[1])
    wx = xx + 0.08 * size * tf.sin(yy / (0.1 + 0.25 * warp[2]) / size * 6.0 + 6.28 * warp[3])
    dist = tf.square(wy[..., None] - py) + tf.square(wx[..., None] - px)
    label = tf.gather(region_cls, tf.argmin(dist, axis=-1, output_type=tf.int32))

    # Objects, small objects, thin structures: masks (H, W, S) painted in order (last wins).
    masks, classes = [], []
    cy, cx = uni([N_OBJECTS], 0, h), uni([N_OBJECTS], 0, w)
    ry, rx = uni([N_OBJECTS], 0.06, 0.25) * size, uni([N_OBJECTS], 0.06, 0.25) * size
    obj_cls = _pick(tf, next(s), N_OBJECTS, objects)
    dy, dx = tf.abs(yy3 - cy) / ry, tf.abs(xx3 - cx) / rx
    shape = tf.math.floormod(obj_cls, 3)  # each class keeps its shape: ellipse, box, diamond
    inside = tf.where(
        shape == 0,
        dy * dy + dx * dx <= 1.0,
        tf.where(shape == 1, tf.maximum(dy, dx) <= 1.0, dy + dx <= 1.0),
    )
    masks.append(inside & (uni([N_OBJECTS], 0, 1) < 0.8))
    classes.append(obj_cls)
    if small:
        cy, cx = uni([N_SMALL], 0, h), uni([N_SMALL], 0, w)
        r = uni([N_SMALL], 1.0, 1.5 + 0.025 * size)
        masks.append(
            (tf.square(yy3 - cy) + tf.square(xx3 - cx) <= r * r) & (uni([N_SMALL], 0, 1) < 0.7)
        )
        classes.append(_pick(tf, next(s), N_SMALL, small))
    if thin:
        cy, cx = uni([N_THIN], 0, h), uni([N_THIN], 0, w)
        theta = uni([N_THIN], 0, math.pi)
        half_len, width = uni([N_THIN], 0.2, 0.6) * size, uni([N_THIN], 1.0, 2.5)
        along = (yy3 - cy) * tf.sin(theta) + (xx3 - cx) * tf.cos(theta)
        across = (yy3 - cy) * tf.cos(theta) - (xx3 - cx) * tf.sin(theta)
        line = (tf.abs(across) <= width / 2) & (tf.abs(along) <= half_len)
        masks.append(line & (uni([N_THIN], 0, 1) < 0.7))
        classes.append(_pick(tf, next(s), N_THIN, thin))
    masks = tf.concat(masks, axis=-1)
    classes = tf.concat(classes, axis=0)
    order = tf.range(1, tf.shape(classes)[0] + 1)
    top = tf.reduce_max(tf.where(masks, order, 0), axis=-1)
    label = tf.where(top > 0, tf.gather(classes, tf.maximum(top - 1, 0)), label)

    # Appearance: per-image, per-class drift of colour and texture, then a global cast and noise.
    hsv, freq, angle, amp = (tf.constant(a) for a in _class_table(num_classes))
    k = num_classes
    hue = tf.math.floormod(hsv[:, 0] + uni([k], -0.06, 0.06), 1.0)
    sat = tf.clip_by_value(hsv[:, 1] * uni([k], 0.7, 1.3), 0.0, 1.0)
    val = tf.clip_by_value(hsv[:, 2] * uni([k], 0.75, 1.25), 0.0, 1.0)
    colours = tf.image.hsv_to_rgb(tf.stack([hue, sat, val], -1)) * 255.0  # (K, 3)
    freq = freq * uni([k], 0.8, 1.25)
    amp = amp * uni([k], 0.6, 1.4)
    phase = uni([k], 0.0, 2 * math.pi)
    f, a, t, p = (tf.gather(v, label) for v in (freq, angle, amp, phase))
    texture = t * tf.sin(f * (xx * tf.cos(a) + yy * tf.sin(a)) + p)
    cast = uni([3], 0.8, 1.2) * uni([], 0.75, 1.25)
    noise = tf.random.stateless_normal([h, w, 3], next(s), stddev=6.0)
    image = tf.gather(colours, label) * cast + texture[..., None] + noise
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    return image, label


def synthetic_numpy(config, split="train", count=None):
    """(images uint8 (N, H, W, 3), labels int32 (N, H, W)) of a synthetic split, eagerly (for tests,
    notebooks and `data check`)."""
    import numpy as np

    from ssaseg_keras.utils.tensorflow import import_tensorflow as import_tf

    tf = import_tf()
    n = count or (config["num_images"] if split == "train" else config["num_val_images"])
    offset = 0 if split == "train" else VAL_OFFSET
    pairs = [
        generate(
            tf.constant(offset + i, tf.int64),
            config["seed"],
            config["image_size"],
            config["num_classes"],
        )
        for i in range(n)
    ]
    return np.stack([p[0].numpy() for p in pairs]), np.stack([p[1].numpy() for p in pairs])
