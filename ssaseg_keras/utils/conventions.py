"""The conventions every part shares: the ignore label, image normalisation, the size divisor.

Pure Python and NumPy (no Keras, no TensorFlow), so the data pipeline, the losses, the metrics, the
evaluation and the export all import them from here.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255  # the label of pixels no loss or metric counts (mmseg's ignore_index)
MEAN = (123.675, 116.28, 103.53)  # RGB mean of 0-255 images (ImageNet, the reference's)
STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32  # every backbone's input sides are multiples of this (its total stride)


def normalize(images, mean=MEAN, std=STD):
    """(images - mean) / std per RGB channel.

    `images` is float32 with 0-255 values, channels last: a NumPy array, or a TensorFlow tensor
    (tf.data and the SavedModel graph; the constants broadcast into its graph).
    """
    return (images - np.asarray(mean, "float32")) / np.asarray(std, "float32")
