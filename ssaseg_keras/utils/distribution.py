"""What the running distribution looks like, asked of each backend's own engine.

Training on several devices uses the backends' engines (`keras.distribution` on JAX,
`tf.distribute` on TensorFlow, `torch.distributed` on PyTorch; set up by
`ssaseg_keras.training.distribute`). The few places outside training that must know about it ask
here: synchronised BatchNorm (`cross_replica_sum`), the loss scaling TensorFlow's replicas need,
evaluation (padding a batch to the data-parallel width, sharding images over PyTorch ranks) and the
writers (only process 0 writes). Nothing here imports TensorFlow, JAX or PyTorch unless it is the
Keras backend; with one device every function is the identity or says 0 / 1.
"""

from __future__ import annotations

import keras
import numpy as np


def _backend():
    return keras.backend.backend()


def _torch_world():
    """(world size, rank) of an initialised torch.distributed group, else (1, 0)."""
    if _backend() != "torch":
        return 1, 0
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _tf_replicas():
    """Replicas of the tf.distribute strategy in whose replica context this runs (1 outside one)."""
    if _backend() != "tensorflow":
        return 1
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return 1
    return tf.distribute.get_replica_context().num_replicas_in_sync


def cross_replica_sum(x):
    """x summed over the replicas of a data-parallel step, differentiably (its gradient is summed
    back), for statistics of the global batch such as synchronised BatchNorm.

    TensorFlow: the replica context's all-reduce (MirroredStrategy). PyTorch: torch.distributed's
    autograd all-reduce under DistributedDataParallel. JAX: the identity -- under
    `keras.distribution.DataParallel` a step is one program over the global batch (GSPMD), so a
    mean over the batch axis already is the global mean.
    """
    if _tf_replicas() > 1:
        import tensorflow as tf

        return tf.distribute.get_replica_context().all_reduce("sum", x)
    world, _ = _torch_world()
    if world > 1:
        import warnings

        import torch.distributed.nn.functional as dist_fn

        with warnings.catch_warnings():  # its successor (_functional_collectives) is private
            warnings.simplefilter("ignore", FutureWarning)
            return dist_fn.all_reduce(x)
    return x


def replicas_in_step():
    """How many replicas `cross_replica_sum` adds over here (1: a global or single-device step)."""
    tf_replicas = _tf_replicas()
    if tf_replicas > 1:
        return tf_replicas
    world, _ = _torch_world()
    return world


def scale_loss_for_replicas(loss):
    """loss / replicas inside a TensorFlow replica context, else loss unchanged.

    MirroredStrategy SUMS the replicas' gradients; Keras divides only the losses of its own `Loss`
    objects by the replica count, and a model's own `compute_loss` must do the same so that the update
    is the mean's (Keras' TensorFlow trainer multiplies the logged loss back). DistributedDataParallel
    (PyTorch) averages gradients itself, and a JAX step is global: both need nothing.
    """
    replicas = _tf_replicas()
    if replicas > 1:
        return loss * (1.0 / replicas)
    return loss


def process_count():
    """Processes taking part in training: JAX hosts or PyTorch ranks (TensorFlow: 1)."""
    if _backend() == "jax":
        import jax

        return jax.process_count()
    return _torch_world()[0]


def process_index():
    """This process's index among `process_count()`; 0 is the one that writes."""
    if _backend() == "jax":
        import jax

        return jax.process_index()
    return _torch_world()[1]


def is_chief():
    """True in the process that writes checkpoints, logs and TensorBoard (process 0)."""
    return process_index() == 0


def local_batch_multiple(model=None):
    """The multiple a batch fed to `model.predict_on_batch` from this process must be: the local
    devices of a JAX `DataParallel` mesh, or a TensorFlow strategy's replicas (1 otherwise)."""
    if _backend() == "jax":
        distribution = keras.distribution.distribution()
        if distribution is None:
            return 1
        devices = np.asarray(distribution.device_mesh.devices).size
        return max(devices // process_count(), 1)
    if _backend() == "tensorflow" and model is not None:
        strategy = getattr(model, "distribute_strategy", None)
        return int(getattr(strategy, "num_replicas_in_sync", 1) or 1)
    return 1


def evaluation_shard():
    """(shards, index) of the validation images this process evaluates: PyTorch ranks share them
    out (each image once; `host_sum` adds the counts), JAX hosts run every image in lockstep (a
    step is one program over all hosts) and TensorFlow has one process: (1, 0)."""
    return _torch_world()


def host_sum(array):
    """A NumPy array summed over the PyTorch ranks (e.g. confusion matrices); unchanged otherwise."""
    world, _ = _torch_world()
    if world == 1:
        return array
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.as_tensor(np.ascontiguousarray(array), device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def host_mean_of(values):
    """{name: float} averaged over the PyTorch ranks (the per-rank loss logs of one chunk)."""
    world, _ = _torch_world()
    if world == 1 or not values:
        return dict(values)
    names = sorted(values)
    summed = host_sum(np.array([float(values[n]) for n in names], dtype="float64"))
    return {name: float(value) / world for name, value in zip(names, summed)}


def barrier():
    """Wait for every PyTorch rank (a no-op elsewhere)."""
    world, _ = _torch_world()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def to_host(value):
    """A variable's or tensor's value as a NumPy array, also for a JAX array replicated over
    several hosts (read from this host's copy; `np.asarray` refuses arrays with remote parts)."""
    if isinstance(value, keras.Variable):
        value = value.value
    if getattr(value, "is_fully_addressable", True) is False:
        return np.asarray(value.addressable_data(0))
    return np.asarray(keras.ops.convert_to_numpy(value))
