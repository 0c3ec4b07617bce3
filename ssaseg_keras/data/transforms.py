"""The reference's (mmsegmentation 0.30) image/label transforms as TensorFlow ops for tf.data.

Images are float32 (H, W, 3) RGB holding uint8 values until `normalize`; labels int32 (H, W), 255 =
ignore. Randomness is stateless: every random function takes a `seed` int32/int64 tensor of shape
(2,), so a sample's augmentation depends only on (pipeline seed, element index).
"""

from __future__ import annotations

from ssaseg_keras.utils.conventions import IGNORE_INDEX, normalize
from ssaseg_keras.utils.tensorflow import import_tensorflow as import_tf


def split_seed(seed, n):
    """n independent (2,) seeds from one."""
    tf = import_tf()
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def reduce_zero_label(label):
    """0 -> 255 (ignored), 255 stays 255, any other v -> v - 1."""
    tf = import_tf()
    return tf.where((label == 0) | (label == IGNORE_INDEX), IGNORE_INDEX, label - 1)


def rescale_size(height, width, long_edge, short_edge):
    """mmcv's keep-ratio target size: scale by min(long/max(h, w), short/min(h, w)), round half up.
    Arguments are scalar tensors; returns int32 (new_h, new_w)."""
    tf = import_tf()
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    factor = tf.minimum(
        tf.cast(long_edge, tf.float64) / tf.maximum(h, w),
        tf.cast(short_edge, tf.float64) / tf.minimum(h, w),
    )
    return tf.cast(h * factor + 0.5, tf.int32), tf.cast(w * factor + 0.5, tf.int32)


def resize_image(image, size):
    """Bilinear, half-pixel centres, no antialiasing (cv2 INTER_LINEAR), rounded to uint8 values."""
    tf = import_tf()
    out = tf.image.resize(image, size, method="bilinear", antialias=False)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def resize_label(label, size):
    """Nearest neighbour taking source pixel floor(i * in / out) (cv2 INTER_NEAREST)."""
    tf = import_tf()
    out = tf.raw_ops.ResizeNearestNeighbor(
        images=label[None, :, :, None], size=size, align_corners=False, half_pixel_centers=False
    )
    return out[0, :, :, 0]


def rescale(image, label, scale, ratio=None):
    """Keep-ratio resize to `scale` (long, short) multiplied by `ratio` (a scalar tensor, or None = 1);
    the label (optional) follows with nearest neighbour."""
    tf = import_tf()
    long_edge, short_edge = max(scale), min(scale)
    if ratio is None:
        long_t, short_t = tf.constant(long_edge), tf.constant(short_edge)
    else:  # int(scale * ratio), as mmseg's Resize with ratio_range
        long_t = tf.cast(tf.cast(long_edge, tf.float64) * ratio, tf.int32)
        short_t = tf.cast(tf.cast(short_edge, tf.float64) * ratio, tf.int32)
    shape = tf.shape(image)
    size = tf.stack(rescale_size(shape[0], shape[1], long_t, short_t))
    image = resize_image(image, size)
    if label is not None:
        label = resize_label(label, size)
    return image, label


def random_rescale(image, label, seed, scale, ratio_range):
    """mmseg Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)."""
    tf = import_tf()
    if ratio_range is None:
        return rescale(image, label, scale)
    ratio = tf.random.stateless_uniform([], seed, ratio_range[0], ratio_range[1], dtype=tf.float64)
    return rescale(image, label, scale, ratio)


def _crop_ok(label, oy, ox, ch, cw, num_classes, cat_max_ratio):
    """True when the crop holds more than one class and none covers >= cat_max_ratio of its
    non-ignored pixels (mmseg RandomCrop's acceptance test)."""
    tf = import_tf()
    crop = tf.reshape(tf.slice(label, [oy, ox], [ch, cw]), [-1])
    ids = tf.where((crop >= 0) & (crop < num_classes), crop, num_classes)
    counts = tf.math.bincount(ids, minlength=num_classes + 1, maxlength=num_classes + 1)[
        :num_classes
    ]
    present = tf.math.count_nonzero(counts)
    total = tf.cast(tf.reduce_sum(counts), tf.float64)
    biggest = tf.cast(tf.reduce_max(counts), tf.float64)
    return (present > 1) & (biggest / tf.maximum(total, 1.0) < cat_max_ratio)


def random_crop(image, label, seed, crop_size, num_classes, cat_max_ratio=1.0, max_tries=10):
    """mmseg RandomCrop: a crop of min(crop, image) size at a uniform offset, redrawn up to
    `max_tries` times while it fails the cat_max_ratio test (the last draw is kept)."""
    tf = import_tf()
    shape = tf.shape(label)
    ch = tf.minimum(crop_size[0], shape[0])
    cw = tf.minimum(crop_size[1], shape[1])

    def draw(i):
        s = tf.random.experimental.stateless_fold_in(seed, i)
        sy, sx = split_seed(s, 2)
        oy = tf.random.stateless_uniform([], sy, 0, shape[0] - ch + 1, dtype=tf.int32)
        ox = tf.random.stateless_uniform([], sx, 0, shape[1] - cw + 1, dtype=tf.int32)
        return oy, ox

    oy, ox = draw(0)
    if cat_max_ratio < 1.0:

        def cond(i, oy, ox):
            return (i < max_tries) & tf.logical_not(
                _crop_ok(label, oy, ox, ch, cw, num_classes, cat_max_ratio)
            )

        def body(i, oy, ox):
            return (i + 1, *draw(i + 1))

        _, oy, ox = tf.while_loop(cond, body, (tf.constant(0), oy, ox))
    image = tf.slice(image, [oy, ox, 0], [ch, cw, 3])
    label = tf.slice(label, [oy, ox], [ch, cw])
    return image, label


def random_flip(image, label, seed, prob=0.5):
    """Horizontal flip of both with probability prob."""
    tf = import_tf()
    flip = tf.random.stateless_uniform([], seed) < prob
    return tf.cond(flip, lambda: (image[:, ::-1], label[:, ::-1]), lambda: (image, label))


def _to_uint8(x):
    """clip to [0, 255] then truncate, as numpy's astype(np.uint8) after np.clip."""
    tf = import_tf()
    return tf.floor(tf.clip_by_value(x, 0.0, 255.0))


def _hsv_adjust(image, saturation=None, hue_shift=None):
    """OpenCV 8-bit HSV round trip (H in [0, 180), S and V in [0, 255]) with S scaled by
    `saturation` (then truncated) or H shifted by `hue_shift` units (mod 180)."""
    tf = import_tf()
    hsv = tf.image.rgb_to_hsv(image / 255.0)
    h = tf.math.floormod(tf.round(hsv[..., 0] * 180.0), 180.0)
    s = tf.round(hsv[..., 1] * 255.0)
    v = hsv[..., 2]
    if saturation is not None:
        s = _to_uint8(s * saturation)
    if hue_shift is not None:
        h = tf.math.floormod(h + hue_shift, 180.0)
    rgb = tf.image.hsv_to_rgb(tf.stack([h / 180.0, s / 255.0, v], axis=-1))
    return tf.clip_by_value(tf.round(rgb * 255.0), 0.0, 255.0)


def photometric_distortion(image, seed, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):  # fmt: skip
    """mmseg PhotoMetricDistortion, same order and ranges: brightness (+-32), then contrast (x0.5..1.5)
    either first or last (coin flip), saturation (x0.5..1.5), hue (+-18 of 180); each step applied with
    probability 0.5, each result truncated to uint8 values."""
    tf = import_tf()
    s = split_seed(seed, 11)

    def coin(i):
        return tf.random.stateless_uniform([], s[i]) < 0.5

    def brightness(img):
        delta = tf.random.stateless_uniform([], s[1], -brightness_delta, brightness_delta)
        return tf.cond(coin(0), lambda: _to_uint8(img + delta), lambda: img)

    def contrast(img, i):
        alpha = tf.random.stateless_uniform([], s[i + 1], *contrast_range)
        return tf.cond(coin(i), lambda: _to_uint8(img * alpha), lambda: img)

    def saturation(img):
        alpha = tf.random.stateless_uniform([], s[6], *saturation_range)
        return tf.cond(coin(5), lambda: _hsv_adjust(img, saturation=alpha), lambda: img)

    def hue(img):  # np.random.randint(-18, 18): -18 .. 17
        shift = tf.cast(
            tf.random.stateless_uniform([], s[8], -hue_delta, hue_delta, dtype=tf.int32), tf.float32
        )
        return tf.cond(coin(7), lambda: _hsv_adjust(img, hue_shift=shift), lambda: img)

    image = brightness(image)
    contrast_first = coin(10)
    image = tf.cond(contrast_first, lambda: contrast(image, 2), lambda: image)
    image = saturation(image)
    image = hue(image)
    image = tf.cond(contrast_first, lambda: image, lambda: contrast(image, 3))
    return image


def pad_to(image, label, size, fill=None):
    """Pads bottom/right to `size` (h, w): image with 0 (or the per-channel `fill`), label with 255;
    sets static shapes."""
    tf = import_tf()
    shape = tf.shape(label)
    pads = [[0, tf.maximum(size[0] - shape[0], 0)], [0, tf.maximum(size[1] - shape[1], 0)]]
    if fill is None:
        image = tf.pad(image, pads + [[0, 0]], constant_values=0.0)
    else:  # inside: the image; outside: exactly `fill` (no arithmetic on the pixels)
        inside = tf.pad(tf.ones_like(image[..., :1], tf.bool), pads + [[0, 0]], constant_values=False)
        image = tf.where(inside, tf.pad(image, pads + [[0, 0]]), tf.constant(fill, tf.float32))
    label = tf.pad(label, pads, constant_values=IGNORE_INDEX)
    image = tf.ensure_shape(image, [size[0], size[1], 3])
    label = tf.ensure_shape(label, [size[0], size[1]])
    return image, label


def train_transform(image, label, seed, config, normalize_image=True):
    """The reference training pipeline on one sample. image uint8/float (H, W, 3), label int32 (H, W)
    (already reduced), seed (2,). Returns float32 (crop_h, crop_w, 3) normalised, int32 (crop_h, crop_w).

    `normalize_image=False` returns the 0-255 image for a model whose preprocessor normalises
    (`ImageSegmenter.fit`): padding then holds the mean colour, so normalising afterwards gives
    exactly what normalising first and padding with 0 gives (the reference's order)."""
    tf = import_tf()
    s = split_seed(seed, 4)
    image = tf.cast(image, tf.float32)
    image, label = random_rescale(image, label, s[0], config["scale"], config["ratio_range"])
    image, label = random_crop(
        image, label, s[1], config["crop_size"], config["num_classes"], config["cat_max_ratio"]
    )
    if config["flip_prob"] > 0:
        image, label = random_flip(image, label, s[2], config["flip_prob"])
    if config["photometric"]:
        image = photometric_distortion(image, s[3])
    if not normalize_image:
        return pad_to(image, label, config["crop_size"], fill=[float(v) for v in config["mean"]])
    image = normalize(image, config["mean"], config["std"])
    return pad_to(image, label, config["crop_size"])


def eval_transform(image, config):
    """The reference test pipeline on one image: keep-ratio resize to `scale`, normalise.
    Returns float32 (h, w, 3); the label is not touched (the metric uses original resolution)."""
    tf = import_tf()
    image, _ = rescale(tf.cast(image, tf.float32), None, config["scale"])
    return normalize(image, config["mean"], config["std"])
