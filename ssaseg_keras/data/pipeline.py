"""`build_dataset`: the tf.data pipeline that feeds `fit`/`evaluate` on every Keras backend.

Train batches: images float32 (B, crop_h, crop_w, 3) normalised RGB, labels int32 (B, crop_h, crop_w)
with 255 = ignore (padding included). Eval batches: images resized keeping ratio to `scale`,
labels at the original resolution (after reduce_zero_label); with batch_size > 1 both are padded to
the largest in the batch (images with 0, labels with 255) and `return_meta=True` adds each image's
valid (h, w) and its label's (h, w) so predictions can be cropped and resized back per image.
"""

from __future__ import annotations

import contextlib
import logging

from ssaseg_keras.data.config import validate_data_config
from ssaseg_keras.data.transforms import eval_transform, reduce_zero_label, train_transform
from ssaseg_keras.utils.conventions import IGNORE_INDEX
from ssaseg_keras.utils.errors import DataError
from ssaseg_keras.utils.tensorflow import import_tensorflow as import_tf

log = logging.getLogger(__name__)
DECODED_SHUFFLE_BUFFER = 256  # shuffle buffer when whole decoded images are shuffled (cache, tfds)


# Words of TensorFlow's decode / read / size-check errors; any other error passes through unchanged.
DATA_ERROR_MARKERS = ("decode", "image format", "jpeg", "png", "sizes differ", "no such file")


@contextlib.contextmanager
def explain_data_errors(data_config, split="train"):
    """Turn TensorFlow's errors from inside the input pipeline (an image that does not decode, an
    image/label size mismatch) into one `DataError` naming the data section and the way to find the file."""
    tf = import_tf()
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError, tf.errors.NotFoundError) as error:
        text = getattr(error, "message", "") or str(error)
        if not any(key in text.lower() for key in DATA_ERROR_MARKERS):
            raise  # an error of the model's graph, not of the data
        message = text.strip().splitlines()
        detail = message[0] if message else type(error).__name__
        for line in message:  # the size check names both files
            if "sizes differ" in line:
                detail = line.strip()
        root = data_config.get("root") or data_config.get("source")
        raise DataError(
            f"the {split} data ({data_config.get('source')} at {root}) has a file that cannot be read: "
            f"{detail}. `ssaseg-keras data check RECIPE` lists every unreadable or mismatched file."
        ) from error


def _read_label_pil(path):
    """Label indices of a palette (or L) PNG via Pillow (TF's decoder would expand palettes to RGB)."""
    import numpy as np
    from PIL import Image

    with Image.open(path.decode() if isinstance(path, bytes) else path) as img:
        return np.asarray(img, dtype=np.uint8)


def _file_loader(label_mode):
    tf = import_tf()

    def load(image_path, label_path):
        image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
        if label_mode == "P":
            label = tf.numpy_function(_read_label_pil, [label_path], tf.uint8, stateful=False)
            label = tf.ensure_shape(label, [None, None])
        else:
            label = tf.io.decode_image(
                tf.io.read_file(label_path), channels=1, expand_animations=False
            )[..., 0]
        same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)))
        check = tf.debugging.Assert(same, ["image and label sizes differ:", image_path, label_path])
        with tf.control_dependencies([check]):
            label = tf.identity(label)
        return image, tf.cast(label, tf.int32)

    return load


def _source(config, split):
    """(dataset of (image uint8 (H, W, 3), label int32 (H, W)) before reduce_zero_label, its
    pre-decode part to shuffle cheaply (or None), number of elements or -1)."""
    tf = import_tf()
    source = config["source"]
    if source == "synthetic":
        from ssaseg_keras.data.synthetic import VAL_OFFSET, generate

        n = config["num_images"] if split == "train" else config["num_val_images"]
        offset = 0 if split == "train" else VAL_OFFSET
        index = tf.data.Dataset.range(offset, offset + n)

        def load(i):
            return generate(i, config["seed"], config["image_size"], config["num_classes"])

        return index, load, n
    if source == "tfds":
        return None, _tfds(config, split), -1
    from ssaseg_keras.data.sources import list_samples

    samples = list_samples(config, split)
    if samples.skipped:
        log.warning(
            "skipped %d unreadable file(s) in %s/%s (skip_corrupt: true), e.g. %s",
            len(samples.skipped),
            source,
            split,
            samples.skipped[0][0],
        )
    paths = tf.data.Dataset.from_tensor_slices((samples.images, samples.labels))
    return paths, _file_loader(samples.label_mode), len(samples)


def _tfds(config, split):
    tf = import_tf()
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:  # pragma: no cover - it is a dependency
        raise DataError(
            "data.source tfds needs tensorflow-datasets: pip install tensorflow-datasets"
        ) from error
    name, tfds_split = config["name"], config["split"][split]
    try:
        ds = tfds.load(name, split=tfds_split, data_dir=config["data_dir"], download=config["download"],
                       shuffle_files=False)  # fmt: skip
    except Exception as error:  # tfds raises many kinds (not found, not prepared, bad split)
        where = config["data_dir"] or "the default TFDS data dir"
        raise DataError(
            f"cannot load TFDS dataset {name!r} split {tfds_split!r} from {where}: {error}; prepare it "
            "with tfds (or set data.download: true) and point data.data_dir at the cache"
        ) from error
    image_key, label_key = config["image_key"], config["label_key"]
    spec = ds.element_spec
    for key in (image_key, label_key):
        if key not in spec:
            field = "image_key" if key == image_key else "label_key"
            raise DataError(
                f"TFDS dataset {name} has no feature {key!r} (data.{field}); its features are {sorted(spec)}"
            )

    def convert(features):
        image = features[image_key]
        channels = spec[image_key].shape[-1]
        image = tf.image.grayscale_to_rgb(image) if channels == 1 else image[..., :3]
        label = features[label_key]
        if len(spec[label_key].shape) == 3:
            label = label[..., 0]
        return tf.cast(image, tf.uint8), tf.cast(label, tf.int32)

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def build_dataset(data_config, split="train", batch_size=8, seed=0, *, repeat=None, shuffle=None,
                  augment=None, drop_remainder=None, return_meta=False, pad_multiple=None,
                  skip_batches=0, shard=None, normalize=True):  # fmt: skip
    """The tf.data pipeline of a recipe's `data:` section.

    Args:
        data_config: the `data:` mapping (validated here with `validate_data_config`).
        split: "train" or "val".
        batch_size: images per batch. Eval batches of more than one image are padded (see module doc).
        seed: pipeline seed; shuffling and augmentation are a pure function of it.
        repeat: loop forever (default: True for train, False for val).
        shuffle: shuffle the samples (default: True for train).
        augment: True = the training transforms (random rescale, crop, flip, photometric, pad), False
            = the eval transforms (default: True for train).
        drop_remainder: drop a last partial batch (default: True with augment, else False).
        return_meta: eval only; add a third element {"image_shape": (B, 2), "label_shape": (B, 2)}
            int32 holding each image's resized (h, w) and original label (h, w) before padding.
        skip_batches: train only; start after this many batches of the same seeded sequence, without
            decoding or augmenting them (resuming a run continues its data order exactly; with
            `skip_corrupt`, skipped corrupt files shift the sequence).
        shard: (shards, index) to read one process's part in multi-process training or evaluation
            (None: everything). Train: the stream of global batches of `batch_size * shards` samples
            is the one a single process reads, and this process takes rows
            [index * batch_size, (index + 1) * batch_size) of each, selected by position before
            anything is decoded; augmentation is seeded by the global position, so the shards of
            a global batch together are exactly the single-process batch. Eval: every
            `shards`-th image from `index`. `batch_size` is the per-shard batch; `skip_batches`
            counts global batches.
        normalize: train only; False yields 0-255 images (padding filled with the mean colour) for
            a model whose preprocessor normalises (`ImageSegmenter.fit`; the trainer).
        pad_multiple: eval only; pad each resized image (bottom/right, with 0) up to a multiple of
            this, so that compiled backends see few distinct shapes. Crop predictions back to
            meta["image_shape"] before resizing them to the label (use with return_meta=True).

    Returns:
        tf.data.Dataset of (images float32 (B, H, W, 3), labels int32 (B, H', W')[, meta]).
    """
    tf = import_tf()
    config = validate_data_config(data_config)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    is_train = split == "train"
    repeat = is_train if repeat is None else repeat
    shuffle = is_train if shuffle is None else shuffle
    augment = is_train if augment is None else augment
    drop_remainder = augment if drop_remainder is None else drop_remainder
    if return_meta and augment:
        raise ValueError("return_meta applies to eval pipelines (augment=False)")
    if not normalize and not augment:
        raise ValueError("normalize=False applies to training pipelines (augment=True)")
    if pad_multiple is not None and (augment or int(pad_multiple) < 1):
        raise ValueError("pad_multiple is a positive int for eval pipelines (augment=False)")
    parallel = (
        tf.data.AUTOTUNE if config["num_parallel_calls"] == "auto" else config["num_parallel_calls"]
    )
    reduce = config["reduce_zero_label"]

    def decoded(image, label):
        return image, reduce_zero_label(label) if reduce else label

    if skip_batches and not augment:
        raise ValueError("skip_batches applies to training pipelines (augment=True)")
    num_shards, shard_index = (1, 0) if shard is None else (int(shard[0]), int(shard[1]))
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard must be (shards >= 1, 0 <= index < shards), got {shard!r}")
    global_batch = int(batch_size) * num_shards
    skip_samples = first_index = int(skip_batches) * global_batch
    head, load, count = _source(config, split)

    @tf.autograph.experimental.do_not_convert
    def in_shard(position, _item):
        return tf.equal((position % global_batch) // int(batch_size), shard_index)

    def load_item(item):
        return decoded(*load(*(item if isinstance(item, tuple) else (item,))))

    enumerated = False  # whether the stream already carries each sample's global position
    # A repeated (training) stream is shuffled AFTER repeat, with a fixed order: the sample at each
    # position is then a pure function of the seed, however many iterators Keras creates over the
    # dataset (reshuffle_each_iteration would give each new iterator another order), and skipping
    # N samples to resume lands exactly where the interrupted run was.
    if head is None:  # tfds: already decoded
        ds = load
        if not augment and num_shards > 1:
            ds = ds.shard(num_shards, shard_index)
        ds = ds.map(decoded, num_parallel_calls=parallel)
        decoded_shuffle = True
    else:  # shuffle the cheap indices/paths unless decoded samples are cached
        decoded_shuffle = config["cache"]
        if not decoded_shuffle:
            if repeat:
                head = head.repeat()
            if shuffle:
                buffer = config["shuffle_buffer"] or max(count, 1)
                head = head.shuffle(buffer, seed=seed, reshuffle_each_iteration=not repeat)
            if repeat:  # skip the cheap paths, before decoding
                head = head.skip(skip_samples)
                repeat, skip_samples = False, 0
        if augment and not decoded_shuffle:  # positions (and this process's shard) before decoding
            if skip_samples:
                head, skip_samples = head.skip(skip_samples), 0
            head = head.enumerate(start=first_index)
            if num_shards > 1:
                head = head.filter(in_shard)
            enumerated = True
            ds = head.map(lambda position, item: (position, load_item(item)), num_parallel_calls=parallel)
        else:
            if not augment and num_shards > 1:
                head = head.shard(num_shards, shard_index)
            ds = head.map(lambda *a: load_item(a if len(a) > 1 else a[0]), num_parallel_calls=parallel)
        if config.get("skip_corrupt"):  # files that fail to decode (verify only reads headers)
            ds = ds.ignore_errors(log_warning=True)
    if config["cache"]:
        ds = ds.cache()
    if decoded_shuffle:
        if repeat:
            ds = ds.repeat()
        if shuffle:
            ds = ds.shuffle(
                config["shuffle_buffer"] or DECODED_SHUFFLE_BUFFER,
                seed=seed,
                reshuffle_each_iteration=not repeat,
            )
    elif repeat:
        ds = ds.repeat()
    if skip_samples:
        ds = ds.skip(skip_samples)

    if augment:
        base = tf.constant(seed, tf.int64)

        @tf.autograph.experimental.do_not_convert  # plain graph code: nothing for AutoGraph to do
        def train_map(index, sample):
            element_seed = tf.stack([base, index])
            return train_transform(sample[0], sample[1], element_seed, config, normalize_image=normalize)

        if not enumerated:  # decoded samples (cache, tfds): positions and shard after decoding
            ds = ds.enumerate(start=first_index)
            if num_shards > 1:
                ds = ds.filter(in_shard)
        ds = ds.map(train_map, num_parallel_calls=parallel)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    else:

        @tf.autograph.experimental.do_not_convert
        def eval_map(image, label):
            resized = eval_transform(image, config)
            meta = {"image_shape": tf.shape(resized)[:2], "label_shape": tf.shape(label)}
            if pad_multiple:
                target = -(-meta["image_shape"] // pad_multiple) * pad_multiple
                extra = target - meta["image_shape"]
                resized = tf.pad(resized, [[0, extra[0]], [0, extra[1]], [0, 0]])
            return (resized, label, meta) if return_meta else (resized, label)

        ds = ds.map(eval_map, num_parallel_calls=parallel)
        if batch_size == 1 or (config["source"] == "synthetic" and not pad_multiple):
            ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        else:
            shapes = ([None, None, 3], [None, None]) + (
                ({"image_shape": [2], "label_shape": [2]},) if return_meta else ()
            )
            values = (0.0, IGNORE_INDEX) + (
                ({"image_shape": 0, "label_shape": 0},) if return_meta else ()
            )
            ds = ds.padded_batch(
                batch_size,
                padded_shapes=shapes,
                padding_values=values,
                drop_remainder=drop_remainder,
            )
    options = tf.data.Options()
    options.deterministic = config["deterministic"]
    ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


def dataset_size(data_config, split="train"):
    """Number of samples of a split (lists files; -1 when unknown, e.g. some TFDS splits)."""
    config = validate_data_config(data_config)
    if config["source"] == "synthetic":
        return config["num_images"] if split == "train" else config["num_val_images"]
    if config["source"] == "tfds":
        tf = import_tf()
        _, ds, _ = _source(config, split)
        n = int(ds.cardinality().numpy()) if isinstance(ds, tf.data.Dataset) else -1
        return n if n >= 0 else -1
    from ssaseg_keras.data.sources import find_pairs

    return len(find_pairs(config, split)[0])


def dataset_info(data_config):
    """{"source", "num_classes", "class_names", "palette", "ignore_index"} of a `data:` section."""
    from ssaseg_keras.data.catalog import palette

    config = validate_data_config(data_config)
    return {
        "source": config["source"],
        "num_classes": config["num_classes"],
        "class_names": list(config["class_names"]),
        "palette": palette(config["num_classes"]),
        "ignore_index": IGNORE_INDEX,
    }
