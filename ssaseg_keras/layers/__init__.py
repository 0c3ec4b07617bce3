"""Keras layers of ssaseg-keras. `SSAClassifier` is SSA-Seg's drop-in replacement for a head's classifier."""

from ssaseg_keras.layers.batch_norm import SyncBatchNormalization
from ssaseg_keras.layers.drop_path import DropPath
from ssaseg_keras.layers.ssa import PrototypeMLP, SSAClassifier, l2_normalize

__all__ = ["DropPath", "PrototypeMLP", "SSAClassifier", "SyncBatchNormalization", "l2_normalize"]
