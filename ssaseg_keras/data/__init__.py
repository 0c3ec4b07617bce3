"""tf.data pipelines, dataset sources and preparation (TensorFlow is imported lazily, on first use).

Main entry points:
    validate_data_config(section) -> dict           (pure Python)
    build_dataset(config, split, batch_size, seed)  -> tf.data.Dataset of (images, labels)
    dataset_info(config) -> {"num_classes", "class_names", "palette", "ignore_index", ...}
"""

from ssaseg_keras.data.catalog import class_names, colorize, palette
from ssaseg_keras.data.config import validate_data_config


def build_dataset(*args, **kwargs):
    """See `ssaseg_keras.data.pipeline.build_dataset` (imported on call: it needs TensorFlow)."""
    from ssaseg_keras.data.pipeline import build_dataset as build

    return build(*args, **kwargs)


def dataset_info(data_config):
    """See `ssaseg_keras.data.pipeline.dataset_info`."""
    from ssaseg_keras.data.pipeline import dataset_info as info

    return info(data_config)


def dataset_size(data_config, split="train"):
    """See `ssaseg_keras.data.pipeline.dataset_size`."""
    from ssaseg_keras.data.pipeline import dataset_size as size

    return size(data_config, split)


__all__ = [
    "build_dataset",
    "class_names",
    "colorize",
    "dataset_info",
    "dataset_size",
    "palette",
    "validate_data_config",
]
