"""BatchNormalization whose training statistics are those of the global batch (SyncBN).

The reference trains with mmseg's `SyncBN`: on 4 GPUs of 4 images each, every BatchNorm normalises
with the mean and variance of all 16 images. `SyncBatchNormalization` does that on every backend's
data-parallel engine: under a TensorFlow MirroredStrategy or PyTorch DistributedDataParallel the
per-replica sums are added over the replicas (`utils.distribution.cross_replica_sum`, whose
gradient flows back to every replica); a JAX `DataParallel` step is already one program over the
global batch. With one device it is exactly `keras.layers.BatchNormalization`, and it holds the
same variables under the same names (checkpoints and converters do not see a difference).
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.utils.distribution import cross_replica_sum, replicas_in_step


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SyncBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with cross-replica batch statistics in training.

    Same arguments, inputs and outputs; the statistics are computed in float32 (Keras' BatchNorm
    upcasts half-precision inputs first) as mean and mean squared deviation over the global batch
    (two reductions, not E[x^2] - E[x]^2, which loses precision).
    """

    def _moments(self, inputs, mask):
        if mask is not None or replicas_in_step() == 1:
            return super()._moments(inputs, mask)
        axes = tuple(self._reduction_axes)
        count = ops.convert_to_tensor(1.0, dtype=inputs.dtype)
        for axis in axes:
            count = count * ops.cast(ops.shape(inputs)[axis], inputs.dtype)
        total = cross_replica_sum(count)
        mean = cross_replica_sum(ops.sum(inputs, axis=axes, keepdims=True)) / total
        variance = cross_replica_sum(ops.sum(ops.square(inputs - mean), axis=axes, keepdims=True)) / total
        return ops.squeeze(mean, axis=axes), ops.squeeze(variance, axis=axes)
