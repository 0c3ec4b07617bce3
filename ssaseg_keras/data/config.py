"""Validation and defaults for a recipe's `data:` section (pure Python: no TensorFlow import).

`validate_data_config(section)` returns a new dict holding every key of the chosen source, defaults
filled in, sizes as tuples. Mistakes raise `RecipeError` naming the key (`data.<key>`) and what is
allowed.
"""

from __future__ import annotations

import numbers

from ssaseg_keras.data.catalog import DATASET_DEFAULTS, class_names
from ssaseg_keras.utils.conventions import MEAN, STD
from ssaseg_keras.utils.errors import RecipeError

SOURCES = ("ade20k", "coco_stuff10k", "pascal_context59", "folder", "tfds", "synthetic")
FILE_SOURCES = ("ade20k", "coco_stuff10k", "pascal_context59", "folder")

# Keys every source accepts, with their defaults (None: filled per source below).
COMMON_KEYS = {
    "source": None,
    "num_classes": None,
    "class_names": None,
    "reduce_zero_label": None,
    "crop_size": None,
    "scale": None,
    "ratio_range": (0.5, 2.0),
    "cat_max_ratio": 0.75,
    "flip_prob": 0.5,
    "photometric": True,
    "mean": MEAN,
    "std": STD,
    "cache": None,  # default: true for synthetic (generated once, then only augmented), else false
    "shuffle_buffer": None,
    "deterministic": True,
    "num_parallel_calls": "auto",
}
# Keys only some sources accept.
SOURCE_KEYS = {
    "ade20k": {"root": None, "skip_corrupt": False, "verify": True},
    "coco_stuff10k": {"root": None, "skip_corrupt": False, "verify": True},
    "pascal_context59": {"root": None, "skip_corrupt": False, "verify": True},
    "folder": {
        "root": None,
        "skip_corrupt": False,
        "verify": True,
        "image_dir": "images",
        "label_dir": "labels",
        "img_suffix": None,
        "label_suffix": ".png",
    },
    "tfds": {
        "name": None,
        "split": {"train": "train", "val": "validation"},
        "data_dir": None,
        "image_key": "image",
        "label_key": "segmentation_mask",
        "download": False,
    },
    "synthetic": {"num_images": 200, "num_val_images": 50, "image_size": (128, 128), "seed": 0},
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _err(key, message):
    return RecipeError(f"data.{key}: {message}")


def _bool(cfg, key):
    value = cfg[key]
    if not isinstance(value, bool):
        raise _err(key, f"must be true or false, got {value!r}")
    return value


def _number(cfg, key, low=None, high=None, integer=False, allow_none=False):
    value = cfg[key]
    if value is None and allow_none:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _err(key, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise _err(key, f"must be in [{low}, {high if high is not None else 'inf'}], got {value!r}")
    return int(value) if integer else float(value)


def _pair(cfg, key, integer=True, positive=True, allow_none=False):
    """An int/float or a 2-list -> 2-tuple."""
    value = cfg[key]
    if value is None and allow_none:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value)
    ok = isinstance(value, list | tuple) and len(value) == 2
    ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    if ok and integer:
        ok = all(float(v).is_integer() for v in value)
    if ok and positive:
        ok = all(v > 0 for v in value)
    if not ok:
        what = "positive integers" if integer else "positive numbers"
        raise _err(key, f"must be one or two {what} like [512, 512], got {value!r}")
    return tuple(int(v) for v in value) if integer else tuple(float(v) for v in value)


def _triple(cfg, key, positive=False):
    value = cfg[key]
    ok = isinstance(value, list | tuple) and len(value) == 3
    ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    if ok and positive:
        ok = all(v > 0 for v in value)
    if not ok:
        raise _err(
            key, f"must be three {'positive ' if positive else ''}numbers (R, G, B), got {value!r}"
        )
    return tuple(float(v) for v in value)


def _string(cfg, key, allow_none=False):
    value = cfg[key]
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        raise _err(key, f"must be a non-empty string, got {value!r}")
    return value


def validate_data_config(section):
    """A recipe's `data:` mapping -> a complete, validated dict (defaults filled, sizes as tuples).

    Raises RecipeError for an unknown key, a key the source does not take, or a bad type/value.
    """
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise RecipeError(
            f"data: must be a mapping with at least `source`, got {type(section).__name__}"
        )
    source = section.get("source")
    if source not in SOURCES:
        raise _err("source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
    allowed = dict(COMMON_KEYS)
    allowed.update(SOURCE_KEYS[source])
    for key in section:
        if key not in allowed:
            others = [s for s, keys in SOURCE_KEYS.items() if key in keys]
            where = f" (it applies to source {' / '.join(others)})" if others else ""
            raise _err(
                key,
                f"unknown key for source {source}{where}; allowed keys: {', '.join(sorted(allowed))}",
            )
    cfg = {key: section.get(key, default) for key, default in allowed.items()}
    defaults = DATASET_DEFAULTS[source]
    out = {"source": source}

    # Classes.
    names = cfg["class_names"]
    if names is not None:
        if (
            not isinstance(names, list | tuple)
            or not names
            or not all(isinstance(n, str) for n in names)
        ):
            raise _err("class_names", f"must be a non-empty list of strings, got {names!r}")
        if len(set(names)) != len(names):
            raise _err("class_names", "has duplicate names")
    num_classes = cfg["num_classes"]
    if num_classes is not None:
        num_classes = _number(cfg, "num_classes", 1, 254, integer=True)
    fixed = defaults.get("num_classes")
    if source in ("ade20k", "coco_stuff10k", "pascal_context59"):
        if num_classes is not None and num_classes != fixed:
            raise _err(
                "num_classes", f"{source} has {fixed} classes, got {num_classes}; remove the key"
            )
        num_classes = fixed
        if names is not None and len(names) != fixed:
            raise _err("class_names", f"{source} has {fixed} classes, got {len(names)} names")
    elif source == "folder":
        if names is None:
            raise _err(
                "class_names", "required for source folder: list your classes in label-id order"
            )
    elif source == "tfds" and num_classes is None and names is None:
        raise _err("num_classes", "required for source tfds (or give class_names)")
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise _err("class_names", f"has {len(names)} names but num_classes is {num_classes}")
    if num_classes is None:
        num_classes = len(names) if names is not None else fixed
    if source == "synthetic" and num_classes < 2:
        raise _err(
            "num_classes", f"the synthetic dataset needs at least 2 classes, got {num_classes}"
        )
    out["num_classes"] = num_classes
    out["class_names"] = class_names(source, num_classes, names)

    rzl = cfg["reduce_zero_label"]
    out["reduce_zero_label"] = (
        defaults["reduce_zero_label"] if rzl is None else _bool(cfg, "reduce_zero_label")
    )

    # Geometry.
    if source == "synthetic":
        image_size = _pair(cfg, "image_size")
        out["image_size"] = image_size
        if cfg["crop_size"] is None:
            cfg["crop_size"] = image_size
        if cfg["scale"] is None:
            cfg["scale"] = (4 * max(image_size), min(image_size))
    else:
        if cfg["crop_size"] is None:
            cfg["crop_size"] = defaults["crop_size"]
        if cfg["scale"] is None:
            cfg["scale"] = defaults["scale"]
    out["crop_size"] = _pair(cfg, "crop_size")
    out["scale"] = _pair(cfg, "scale")
    ratio = _pair(cfg, "ratio_range", integer=False, allow_none=True)
    if ratio is not None and ratio[0] > ratio[1]:
        raise _err("ratio_range", f"must be [low, high] with low <= high, got {list(ratio)}")
    out["ratio_range"] = ratio
    out["cat_max_ratio"] = _number(cfg, "cat_max_ratio", 0.0, 1.0)
    if out["cat_max_ratio"] <= 0:
        raise _err("cat_max_ratio", "must be in (0, 1]; 1 turns the check off")
    out["flip_prob"] = _number(cfg, "flip_prob", 0.0, 1.0)
    out["photometric"] = _bool(cfg, "photometric")
    out["mean"] = _triple(cfg, "mean")
    out["std"] = _triple(cfg, "std", positive=True)

    # Pipeline.
    out["cache"] = source == "synthetic" if cfg["cache"] is None else _bool(cfg, "cache")
    out["shuffle_buffer"] = _number(cfg, "shuffle_buffer", 1, integer=True, allow_none=True)
    out["deterministic"] = _bool(cfg, "deterministic")
    npc = cfg["num_parallel_calls"]
    if npc != "auto":
        npc = (
            _number(cfg, "num_parallel_calls", 1, integer=True) if not isinstance(npc, str) else npc
        )
        if isinstance(npc, str):
            raise _err("num_parallel_calls", f"must be 'auto' or a positive integer, got {npc!r}")
    out["num_parallel_calls"] = npc

    # Source-specific.
    if source in FILE_SOURCES:
        out["root"] = _string(cfg, "root")
        out["skip_corrupt"] = _bool(cfg, "skip_corrupt")
        out["verify"] = _bool(cfg, "verify")
    if source == "folder":
        out["image_dir"] = _string(cfg, "image_dir")
        out["label_dir"] = _string(cfg, "label_dir")
        suffix = cfg["img_suffix"]
        if suffix is None:
            suffix = IMAGE_SUFFIXES
        elif isinstance(suffix, str):
            suffix = (suffix,)
        if (
            not isinstance(suffix, list | tuple)
            or not suffix
            or not all(isinstance(s, str) and s for s in suffix)
        ):
            raise _err(
                "img_suffix",
                f"must be a suffix like .jpg or a list of them, got {cfg['img_suffix']!r}",
            )
        out["img_suffix"] = tuple(suffix)
        out["label_suffix"] = _string(cfg, "label_suffix")
    if source == "tfds":
        out["name"] = _string(cfg, "name")
        split = cfg["split"]
        if isinstance(split, str):
            split = {"train": split, "val": split}
        if not isinstance(split, dict) or not all(isinstance(v, str) and v for v in split.values()):
            raise _err(
                "split",
                f"must be a TFDS split string or a mapping like {{train: train, val: validation}}, got {split!r}",
            )
        extra = set(split) - {"train", "val"}
        if extra:
            raise _err("split", f"unknown split name(s) {sorted(extra)}; use train and val")
        out["split"] = {"train": split.get("train", "train"), "val": split.get("val", "validation")}
        out["data_dir"] = _string(cfg, "data_dir", allow_none=True)
        out["image_key"] = _string(cfg, "image_key")
        out["label_key"] = _string(cfg, "label_key")
        out["download"] = _bool(cfg, "download")
    if source == "synthetic":
        out["num_images"] = _number(cfg, "num_images", 1, integer=True)
        out["num_val_images"] = _number(cfg, "num_val_images", 1, integer=True)
        out["seed"] = _number(cfg, "seed", 0, 2**31 - 1, integer=True)
    return out
