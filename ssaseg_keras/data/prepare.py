"""Dataset preparation: the official COCO-Stuff-10K v1.1 release -> mmsegmentation's prepared layout.

Release: SRC/images/<name>.jpg, SRC/annotations/<name>.mat (MATLAB, field `S`: ids 0..182, 0 =
unlabeled), SRC/imageLists/{train,test}.txt (one name per line).
Prepared: DST/images/{train2014,test2014}/<name>.jpg and
DST/annotations/{train2014,test2014}/<name>_labelTrainIds.png (ids 0..171, 0 = unlabeled; the
`coco_stuff10k` source then applies reduce_zero_label).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ssaseg_keras.data.catalog import coco_stuff_id_map
from ssaseg_keras.utils.errors import DataError

COCO_SPLITS = {"train": "train2014", "test": "test2014"}


def _read_list(path):
    if not os.path.isfile(path):
        raise DataError(
            f"image list not found: {path}; SRC must be the COCO-Stuff-10K v1.1 folder (imageLists/)"
        )
    with open(path) as handle:
        names = [os.path.splitext(line.strip())[0] for line in handle if line.strip()]
    if not names:
        raise DataError(f"image list {path} is empty")
    return names


def _convert_one(src, dst, name, sub, table):
    """Copies one image and writes its train-id PNG; returns the number of pixels whose id was
    outside 0..182 or unused (mapped to 0)."""
    from PIL import Image
    from scipy.io import loadmat

    image = os.path.join(src, "images", name + ".jpg")
    mat = os.path.join(src, "annotations", name + ".mat")
    if not os.path.isfile(image):
        raise DataError(f"image missing: {image} (named in imageLists); the release is incomplete")
    if not os.path.isfile(mat):
        raise DataError(f"annotation missing: {mat} for image {image}; the release is incomplete")
    try:
        record = loadmat(mat)
    except Exception as error:  # scipy raises several types for a bad file
        raise DataError(f"unreadable annotation {mat} ({type(error).__name__}: {error})") from error
    if "S" not in record:
        raise DataError(
            f"annotation {mat} has no field S (keys: {sorted(k for k in record if not k.startswith('__'))})"
        )
    ids = np.asarray(record["S"])
    if ids.ndim != 2:
        raise DataError(f"annotation {mat}: field S must be a 2-D label map, got shape {ids.shape}")
    with Image.open(image) as img:
        width, height = img.size
    if (height, width) != ids.shape:
        raise DataError(
            f"size mismatch: image {image} is {width}x{height} but {mat} field S is {ids.shape[1]}x{ids.shape[0]}"
        )
    ids = ids.astype(np.int64)
    bad = (ids < 0) | (ids > 182)
    train_ids = table[np.clip(ids, 0, 255)]
    unused = int(np.count_nonzero(bad | ((ids > 0) & (train_ids == 0))))
    shutil.copyfile(image, os.path.join(dst, "images", sub, name + ".jpg"))
    out = os.path.join(dst, "annotations", sub, name + "_labelTrainIds.png")
    Image.fromarray(train_ids.astype(np.uint8), mode="L").save(out)
    return unused


def prepare_coco_stuff10k(src, dst, workers=8, progress=None):
    """Converts the release in `src` into the prepared layout in `dst`.

    Returns {"train": n, "test": n, "unmapped_pixels": n} (unmapped: ids outside 0..182 or unused by
    COCO, written as 0 = unlabeled). `progress(done, total)` is called after each image if given.
    """
    try:
        import scipy.io  # noqa: F401
    except ImportError as error:
        raise DataError("reading the .mat annotations needs scipy: pip install scipy") from error
    for folder in ("images", "annotations"):
        if not os.path.isdir(os.path.join(src, folder)):
            raise DataError(
                f"{os.path.join(src, folder)} not found; SRC must be the COCO-Stuff-10K v1.1 folder"
            )
    lists = {
        split: _read_list(os.path.join(src, "imageLists", f"{split}.txt")) for split in COCO_SPLITS
    }
    table = np.asarray(coco_stuff_id_map(), np.int64)
    jobs = []
    for split, sub in COCO_SPLITS.items():
        os.makedirs(os.path.join(dst, "images", sub), exist_ok=True)
        os.makedirs(os.path.join(dst, "annotations", sub), exist_ok=True)
        jobs += [(name, sub) for name in lists[split]]
    unmapped = 0
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_convert_one, src, dst, name, sub, table) for name, sub in jobs]
        for done, future in enumerate(futures, 1):
            unmapped += future.result()
            if progress is not None:
                progress(done, len(futures))
    return {"train": len(lists["train"]), "test": len(lists["test"]), "unmapped_pixels": unmapped}
