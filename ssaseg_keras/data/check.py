"""`check_data`: a full scan of a dataset's splits that reports every problem instead of stopping at
the first (counts, missing pairs, unreadable files, size mismatches, out-of-range label values after
reduce_zero_label, class pixel frequencies)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ssaseg_keras.data.config import FILE_SOURCES, validate_data_config
from ssaseg_keras.data.sources import find_pairs, split_layout
from ssaseg_keras.utils.conventions import IGNORE_INDEX

MAX_EXAMPLES = 5


def _reduced(values, reduce_zero_label):
    """A label map (uint8 values) after reduce_zero_label, as int64."""
    v = values.astype(np.int64)
    if reduce_zero_label:
        v = np.where((v == 0) | (v == IGNORE_INDEX), IGNORE_INDEX, v - 1)
    return v


def _scan_pair(pair, quick):
    """(status, detail, histogram of 256 label values or None)."""
    from PIL import Image

    image, label = pair
    try:
        with Image.open(image) as img:
            size = img.size
            if not quick:
                img.load()
    except Exception as error:  # Pillow raises several types for bad files
        return "unreadable", (image, f"{type(error).__name__}: {error}"), None
    try:
        with Image.open(label) as lab:
            if lab.mode not in ("L", "P"):
                return "unreadable", (label, f"label mode {lab.mode}: use 8-bit L or P PNGs"), None
            values = np.asarray(lab, dtype=np.uint8)
    except Exception as error:
        return "unreadable", (label, f"{type(error).__name__}: {error}"), None
    if values.shape != (size[1], size[0]):
        detail = f"image {image} is {size[0]}x{size[1]} but label {label} is {values.shape[1]}x{values.shape[0]}"
        return "size_mismatch", detail, None
    return "ok", label, values


def _new_report(split):
    return {
        "split": split,
        "images": 0,
        "label_files": None,
        "pairs_checked": 0,
        "missing_labels": [],
        "orphan_labels": [],
        "unreadable": [],
        "size_mismatch": [],
        "out_of_range_files": [],
        "out_of_range_values": {},
        "class_pixels": None,
        "ignored_pixels": 0,
    }


def _add_labels(report, name, values, num_classes, reduce_zero_label):
    counts = np.bincount(_reduced(values, reduce_zero_label).ravel(), minlength=256)
    report["class_pixels"] = report["class_pixels"] + counts[:num_classes]
    report["ignored_pixels"] += int(counts[IGNORE_INDEX])
    bad = {int(v): int(counts[v]) for v in np.nonzero(counts)[0] if num_classes <= v < IGNORE_INDEX}
    if bad:
        report["out_of_range_files"].append(name)
        for v, n in bad.items():
            report["out_of_range_values"][v] = report["out_of_range_values"].get(v, 0) + n


def _check_files(config, split, limit, quick, workers):
    report = _new_report(split)
    report["class_pixels"] = np.zeros(config["num_classes"], np.int64)
    image_dir, label_dir, list_file, label_suffix = split_layout(config, split)
    problems = []
    images, labels = find_pairs(config, split, problems)
    report["images"] = len(images) + len(problems)
    report["missing_labels"] = problems
    if list_file is None:
        files = sorted(n for n in os.listdir(label_dir) if n.endswith(label_suffix))
        report["label_files"] = len(files)
        paired = {os.path.basename(p) for p in labels}
        report["orphan_labels"] = [os.path.join(label_dir, n) for n in files if n not in paired]
    pairs = list(zip(images, labels))[: limit or None]
    with ThreadPoolExecutor(workers) as pool:
        for status, detail, values in pool.map(lambda p: _scan_pair(p, quick), pairs):
            report["pairs_checked"] += 1
            if status == "ok":
                _add_labels(
                    report, detail, values, config["num_classes"], config["reduce_zero_label"]
                )
            else:
                report[status].append(detail)
    return report


def _check_generated(config, split, limit):
    """Synthetic and TFDS sources: iterate the decoded samples."""
    report = _new_report(split)
    report["class_pixels"] = np.zeros(config["num_classes"], np.int64)
    if config["source"] == "synthetic":
        from ssaseg_keras.data.synthetic import synthetic_numpy

        n = config["num_images"] if split == "train" else config["num_val_images"]
        _, labels = synthetic_numpy(config, split, count=min(n, limit or n))
        samples = ((f"synthetic/{split}/{i}", lab) for i, lab in enumerate(labels))
    else:
        from ssaseg_keras.data.pipeline import _tfds

        ds = _tfds(config, split)
        if limit:
            ds = ds.take(limit)
        samples = (
            (f"{config['name']}/{split}/{i}", lab)
            for i, (_, lab) in enumerate(ds.as_numpy_iterator())
        )
    for name, values in samples:
        report["images"] += 1
        report["pairs_checked"] += 1
        if values.min() < 0 or values.max() > 255:
            report["out_of_range_files"].append(name)
            values = np.clip(values, 0, 255)
        _add_labels(
            report,
            name,
            values.astype(np.uint8),
            config["num_classes"],
            config["reduce_zero_label"],
        )
    return report


def check_data(data_config, splits=("train", "val"), limit=None, quick=False, workers=8):
    """Scans the splits of a `data:` section. Returns {"config": validated config, "splits":
    [per-split report], "ok": bool}. A per-split report holds counts (images, label_files,
    pairs_checked), problem lists (missing_labels, orphan_labels, unreadable, size_mismatch,
    out_of_range_files), out_of_range_values {value: pixels}, class_pixels (K,) and ignored_pixels.
    `limit` checks only the first N samples; `quick` reads image headers instead of decoding."""
    config = validate_data_config(data_config)
    reports = []
    for split in splits:
        if config["source"] in FILE_SOURCES:
            reports.append(_check_files(config, split, limit, quick, workers))
        else:
            reports.append(_check_generated(config, split, limit))
    ok = all(
        not (
            r["missing_labels"] or r["unreadable"] or r["size_mismatch"] or r["out_of_range_files"]
        )
        and r["pairs_checked"] > 0
        for r in reports
    )
    return {"config": config, "splits": reports, "ok": ok}


def format_report(result, top=10):
    """Human-readable lines of a `check_data` result."""
    config = result["config"]
    names = config["class_names"]
    lines = [
        f"source {config['source']}: {config['num_classes']} classes, reduce_zero_label "
        f"{str(config['reduce_zero_label']).lower()}"
    ]
    for r in result["splits"]:
        labels = "" if r["label_files"] is None else f", {r['label_files']} label files"
        lines.append(
            f"[{r['split']}] {r['images']} images{labels}, {r['pairs_checked']} pairs checked"
        )
        for key, title in (
            ("missing_labels", "missing pairs"),
            ("orphan_labels", "labels without image"),
            ("unreadable", "unreadable files"),
            ("size_mismatch", "image/label size mismatches"),
            ("out_of_range_files", "files with out-of-range labels"),
        ):
            items = r[key]
            if items:
                lines.append(f"  {title}: {len(items)}")
                for item in items[:MAX_EXAMPLES]:
                    lines.append(
                        f"    {item[0]}: {item[1]}" if isinstance(item, tuple) else f"    {item}"
                    )
        if r["out_of_range_values"]:
            values = ", ".join(f"{v} ({n} px)" for v, n in sorted(r["out_of_range_values"].items()))
            lines.append(
                f"  out-of-range values (not < {config['num_classes']} and not 255 after reduce_zero_label): {values}"
            )
        pixels = r["class_pixels"]
        total = int(pixels.sum()) + r["ignored_pixels"] + sum(r["out_of_range_values"].values())
        if total:
            absent = [names[k] for k in np.nonzero(pixels == 0)[0]]
            lines.append(
                f"  pixels: {total}, ignored {100.0 * r['ignored_pixels'] / total:.1f}%, "
                f"classes present {len(names) - len(absent)}/{len(names)}"
            )
            order = np.argsort(-pixels)[:top]
            freq = ", ".join(
                f"{names[k]} {100.0 * pixels[k] / total:.1f}%" for k in order if pixels[k] > 0
            )
            lines.append(f"  most frequent: {freq}")
            if absent:
                lines.append(
                    f"  absent classes: {', '.join(absent[:20])}{' ...' if len(absent) > 20 else ''}"
                )
    lines.append("OK" if result["ok"] else "PROBLEMS FOUND")
    return lines
