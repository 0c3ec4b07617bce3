"""TF Serving REST request bodies for an image file (no TensorFlow needed)."""

from __future__ import annotations

import json

import numpy as np

from ssaseg_keras.utils.errors import UserError

FORMATS = ("instances", "inputs")


def read_rgb(path):
    """An image file -> uint8 array (H, W, 3). Raises UserError when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype="uint8")
    except FileNotFoundError:
        raise UserError(f"image {path!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{path!r} is a folder; give an image file (PNG, JPEG, ...)") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{path!r} is not an image file Pillow can read ({error})") from None


def request_body(path, request_format="instances"):
    """JSON for POST /v1/models/<name>:predict: row format {"instances": [image]} or
    columnar {"inputs": {"images": [image]}}; the image as nested [H][W][3] integers 0-255."""
    if request_format not in FORMATS:
        raise UserError(f"request format {request_format!r}: allowed {', '.join(FORMATS)}")
    batch = [read_rgb(path).tolist()]
    body = {"instances": batch} if request_format == "instances" else {"inputs": {"images": batch}}
    return json.dumps(body, separators=(",", ":"))
