"""ssaseg-keras: SSA-Seg (NeurIPS 2024) in Keras 3, on TensorFlow, JAX and PyTorch.

`import ssaseg_keras` registers every Keras-serializable class of the library (layers, backbones,
heads, the segmentor, the optimizer and its schedule), so `keras.saving.load_model` reads an
ssaseg-keras `.keras` file after it, on any backend. It imports Keras (with its backend) but not
TensorFlow (unless TensorFlow is the backend): TensorFlow is needed only by the data pipelines,
TensorBoard logs and the SavedModel export, which import it when used.
"""

import keras as _keras

from ssaseg_keras.version import __version__

if _keras.backend.backend() == "torch":  # Keras' PyTorch convolutions without layout copies
    from ssaseg_keras.ops import torch_layout as _torch_layout

    _torch_layout.install_from_environment()
elif _keras.backend.backend() == "jax":  # depthwise convolutions as shifted multiply-adds on the CPU
    from ssaseg_keras.ops import jax_depthwise as _jax_depthwise

    _jax_depthwise.install_from_environment()

# Registration happens on import; the reference-name mappings (`convert`) ride along, so parameter
# groups and checkpoint conversion find them whatever was imported first.
from ssaseg_keras import convert, layers, losses, models  # noqa: E402  isort: skip
from ssaseg_keras.training import optimizer as _optimizer  # noqa: E402,F401  isort: skip

from ssaseg_keras.models import (  # noqa: E402  isort: skip  (the Python API's entry points)
    ImageConverter,
    ImageSegmenter,
    ImageSegmenterPreprocessor,
    with_ssa,
)

__all__ = [
    "ImageConverter",
    "ImageSegmenter",
    "ImageSegmenterPreprocessor",
    "__version__",
    "convert",
    "layers",
    "losses",
    "models",
    "with_ssa",
]
