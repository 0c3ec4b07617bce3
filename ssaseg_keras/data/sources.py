"""File listing and up-front checks for the file-based sources (pure Python + Pillow, no TF).

`list_samples(config, split)` finds every (image, label) pair of a split, fails fast with the file
name on a missing directory, an image without a label, an unreadable file or an image/label size
mismatch, and (with `skip_corrupt: true`) skips and counts unreadable pairs instead.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

from ssaseg_keras.utils.errors import DataError

SPLITS = ("train", "val")
# Folder names of the two splits in each benchmark's prepared layout.
_SPLIT_DIRS = {
    "ade20k": {"train": "training", "val": "validation"},
    "coco_stuff10k": {"train": "train2014", "val": "test2014"},
}


@dataclasses.dataclass
class SampleList:
    """Paths of one split. `skipped` holds (path, reason) for pairs left out by `skip_corrupt`.
    `label_mode` is the Pillow mode of the labels ('L', or 'P' for palette PNGs, whose indices are
    read with Pillow), None when not verified."""

    images: list
    labels: list
    skipped: list = dataclasses.field(default_factory=list)
    label_mode: str | None = None

    def __len__(self):
        return len(self.images)


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _require_dir(path, what, hint):
    if not os.path.isdir(path):
        raise DataError(f"{what} not found: {path}; {hint}")
    return path


def _problem(problems, message):
    if problems is None:
        raise DataError(message)
    problems.append(message)


def _pair_by_stem(image_dir, label_dir, img_suffixes, label_suffix, problems=None):
    """Images in image_dir (sorted) matched to `<stem><label_suffix>` in label_dir."""
    images, labels = [], []
    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(tuple(img_suffixes)))
    for name in names:
        stem = os.path.splitext(name)[0]
        label = os.path.join(label_dir, stem + label_suffix)
        if not os.path.isfile(label):
            image = os.path.join(image_dir, name)
            _problem(
                problems,
                f"image without label: {image} (expected {label}); add the label or remove the image",
            )
            continue
        images.append(os.path.join(image_dir, name))
        labels.append(label)
    return images, labels


def _pair_from_list(list_file, image_dir, label_dir, img_suffix, label_suffix, problems=None):
    """Pairs named by a split file (one base name per line)."""
    if not os.path.isfile(list_file):
        raise DataError(f"split list not found: {list_file}; check data.root")
    images, labels = [], []
    with open(list_file) as handle:
        stems = [line.strip() for line in handle if line.strip()]
    for stem in stems:
        image = os.path.join(image_dir, stem + img_suffix)
        label = os.path.join(label_dir, stem + label_suffix)
        if not os.path.isfile(image):
            _problem(problems, f"{list_file} names {stem} but the image {image} is missing")
        elif not os.path.isfile(label):
            _problem(
                problems,
                f"image without label: {image} (expected {label}); add the label or remove {stem} from {list_file}",
            )
        else:
            images.append(image)
            labels.append(label)
    return images, labels


def split_layout(config, split):
    """(image_dir, label_dir, list_file or None, label_suffix) of a file source's split; raises
    DataError when a directory is missing."""
    _check_split(split)
    source = config["source"]
    root = config["root"]
    _require_dir(root, "data.root directory", "set data.root to the dataset folder")
    if source in _SPLIT_DIRS:
        sub = _SPLIT_DIRS[source][split]
        label_suffix = ".png" if source == "ade20k" else "_labelTrainIds.png"
        layout = "images/ and annotations/"
        if source == "coco_stuff10k":
            layout += (
                " (convert the release with `ssaseg-keras data prepare coco-stuff-10k SRC DST`)"
            )
        hint = f"data.root must hold {layout}"
        image_dir = _require_dir(os.path.join(root, "images", sub), "image directory", hint)
        label_dir = _require_dir(os.path.join(root, "annotations", sub), "label directory", hint)
        return image_dir, label_dir, None, label_suffix
    if source == "pascal_context59":
        if os.path.isdir(os.path.join(root, "VOC2010")):
            root = os.path.join(root, "VOC2010")
        hint = (
            "data.root must be VOCdevkit/VOC2010 holding JPEGImages/ and SegmentationClassContext/"
        )
        image_dir = _require_dir(os.path.join(root, "JPEGImages"), "image directory", hint)
        label_dir = _require_dir(
            os.path.join(root, "SegmentationClassContext"), "label directory", hint
        )
        list_file = os.path.join(root, "ImageSets", "SegmentationContext", f"{split}.txt")
        return image_dir, label_dir, list_file, ".png"
    if source == "folder":
        image_dir = os.path.join(root, config["image_dir"])
        label_dir = os.path.join(root, config["label_dir"])
        hint = (
            f"data.root must hold {config['image_dir']}/ and {config['label_dir']}/ "
            "(optionally with train/ and val/ inside)"
        )
        _require_dir(image_dir, "image directory", hint)
        _require_dir(label_dir, "label directory", hint)
        if os.path.isdir(os.path.join(image_dir, split)):
            image_dir = os.path.join(image_dir, split)
            label_dir = _require_dir(os.path.join(label_dir, split), "label directory", hint)
        return image_dir, label_dir, None, config["label_suffix"]
    raise ValueError(f"source {source!r} has no files")


def find_pairs(config, split, problems=None):
    """(images, labels): sorted path lists of a split, without opening the files. A missing label
    raises DataError, or is appended to `problems` (a list) when given."""
    image_dir, label_dir, list_file, label_suffix = split_layout(config, split)
    if list_file is not None:
        images, labels = _pair_from_list(
            list_file, image_dir, label_dir, ".jpg", label_suffix, problems
        )
    else:
        suffixes = config.get("img_suffix") or (".jpg", ".jpeg", ".png")
        images, labels = _pair_by_stem(image_dir, label_dir, suffixes, label_suffix, problems)
    if not images and problems is None:
        raise DataError(
            f"no images found for split {split} in {image_dir}; check data.root and the layout"
        )
    return images, labels


def _header(path):
    """(width, height, mode) of an image file, or raises OSError/ValueError when unreadable."""
    from PIL import Image

    with Image.open(path) as img:
        return img.size[0], img.size[1], img.mode


def _probe(pair):
    image, label = pair
    try:
        iw, ih, _ = _header(image)
    except Exception as error:  # Pillow raises several types for bad files
        return "corrupt", image, f"unreadable image ({type(error).__name__})"
    try:
        lw, lh, mode = _header(label)
    except Exception as error:
        return "corrupt", label, f"unreadable label ({type(error).__name__})"
    if (iw, ih) != (lw, lh):
        return "size", image, f"image {image} is {iw}x{ih} but its label {label} is {lw}x{lh}"
    return "ok", mode, None


def verify_pairs(images, labels, skip_corrupt=False, workers=8):
    """Opens each pair's headers. Returns a SampleList; raises DataError on a size mismatch, on an
    unsupported label mode, and on an unreadable file unless skip_corrupt."""
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(_probe, zip(images, labels)))
    kept_i, kept_l, skipped, modes = [], [], [], set()
    for (image, label), (status, what, reason) in zip(zip(images, labels), results):
        if status == "size":
            raise DataError(f"size mismatch: {reason}; labels must have the image's size")
        if status == "corrupt":
            if not skip_corrupt:
                raise DataError(
                    f"{what}: {reason}; replace the file or set data.skip_corrupt: true"
                )
            skipped.append((what, reason))
            continue
        if what not in ("L", "P"):
            raise DataError(
                f"{label}: label mode {what} is not supported; save labels as 8-bit single-channel (L) or palette (P) PNGs"
            )
        modes.add(what)
        kept_i.append(image)
        kept_l.append(label)
    if not kept_i:
        raise DataError(
            f"every image was unreadable ({len(skipped)} skipped), e.g. {skipped[0][0]}"
        )
    return SampleList(kept_i, kept_l, skipped, "P" if "P" in modes else "L")


def list_samples(config, split):
    """The SampleList of a file source's split (verified unless `verify: false`)."""
    images, labels = find_pairs(config, split)
    if not config.get("verify", True):
        return SampleList(images, labels)
    return verify_pairs(images, labels, skip_corrupt=config.get("skip_corrupt", False))
