"""ssaseg-keras: SSA-Seg (NeurIPS 2024) in Keras 3, on TensorFlow, JAX and PyTorch.

Importing the package (and its layers, losses and models) does not import TensorFlow: TensorFlow is
needed only by the data pipelines and the SavedModel export, which import it when used.
"""

from ssaseg_keras.version import __version__

__all__ = ["__version__"]
