"""Per-dataset facts: class names, colour palettes and the reference's defaults (pure Python, no TF).

Class names follow mmsegmentation 0.30's order (train id k is `CLASS_NAMES[name][k]`, after
`reduce_zero_label` for the three benchmarks).
"""

from __future__ import annotations

import colorsys

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
    "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box",
    "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet",
    "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)  # fmt: skip

COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow",
    "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road",
    "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other",
    "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)  # fmt: skip

PASCAL_CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
    "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

# The synthetic dataset's 21 default classes: 6 "stuff" regions, 11 objects, 2 small, 2 thin.
SYNTHETIC_CLASSES = (
    "sky", "ground", "water", "wall", "field", "road",
    "disc", "box", "blob", "ring", "tile", "cross", "kite", "slab", "drop", "leaf", "panel",
    "dot", "speck",
    "pole", "wire",
)  # fmt: skip

# COCO-Stuff ids (1-based, of 182) that COCO never uses; the prepared train id of any other id is its
# rank among the used ids (0 = unlabeled stays 0).
COCO_STUFF_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)

# Reference defaults per source: classes, reduce_zero_label, crop (h, w), scale (long, short).
DATASET_DEFAULTS = {
    "ade20k": dict(
        num_classes=150, reduce_zero_label=True, crop_size=(512, 512), scale=(2048, 512)
    ),
    "coco_stuff10k": dict(
        num_classes=171, reduce_zero_label=True, crop_size=(512, 512), scale=(2048, 512)
    ),
    "pascal_context59": dict(
        num_classes=59, reduce_zero_label=True, crop_size=(480, 480), scale=(520, 520)
    ),
    "folder": dict(reduce_zero_label=False, crop_size=(512, 512), scale=(2048, 512)),
    "tfds": dict(reduce_zero_label=False, crop_size=(512, 512), scale=(2048, 512)),
    "synthetic": dict(num_classes=21, reduce_zero_label=False),
}

_NAMED = {
    "ade20k": ADE20K_CLASSES,
    "coco_stuff10k": COCO_STUFF_CLASSES,
    "pascal_context59": PASCAL_CONTEXT59_CLASSES,
}


def coco_stuff_id_map():
    """list of 256 ints: the official COCO-Stuff id (0..182) -> prepared id (0..171); unused and
    out-of-range ids map to 0 (unlabeled), which `reduce_zero_label` then ignores."""
    table = [0] * 256
    rank = 0
    for cid in range(1, 183):
        if cid not in COCO_STUFF_UNUSED_IDS:
            rank += 1
            table[cid] = rank
    return table


def class_names(source, num_classes=None, names=None):
    """Tuple of class names for a source: the dataset's own, the recipe's `class_names`, the
    synthetic names (`class_<k>` beyond 21), or `class_<k>` for a tfds source."""
    if names:
        return tuple(names)
    if source in _NAMED:
        return _NAMED[source]
    n = num_classes or DATASET_DEFAULTS.get(source, {}).get("num_classes", 0)
    if source == "synthetic" and n == len(SYNTHETIC_CLASSES):
        return SYNTHETIC_CLASSES
    return tuple(f"class_{k}" for k in range(n))


def palette(num_classes):
    """list of `num_classes` (r, g, b) uint8 triples, distinct and deterministic (golden-ratio hues,
    three lightness bands); used for colourised label maps and reports."""
    colours = []
    for k in range(num_classes):
        hue = (k * 0.6180339887) % 1.0
        light = (0.45, 0.6, 0.3)[k % 3]
        sat = (0.75, 0.55, 0.9)[(k // 3) % 3]
        r, g, b = colorsys.hls_to_rgb(hue, light, sat)
        colours.append((int(round(r * 255)), int(round(g * 255)), int(round(b * 255))))
    return colours


def colorize(label, colours=None, num_classes=None, ignore_colour=(0, 0, 0)):
    """label int (H, W) -> uint8 RGB (H, W, 3) with `palette(num_classes)` (or `colours`); 255 and
    out-of-range ids get `ignore_colour`."""
    import numpy as np

    label = np.asarray(label)
    if colours is None:
        colours = palette(
            num_classes if num_classes is not None else int(label[label != 255].max(initial=0)) + 1
        )
    table = np.tile(np.asarray(ignore_colour, np.uint8), (256, 1))
    table[: len(colours)] = np.asarray(colours, np.uint8)[:256]
    return table[np.clip(label, 0, 255).astype(np.int64)]
