"""Data-parallel training on several devices and hosts, with each backend's own engine.

`setup_distribution(devices, global_batch, ...)` is called before the model is built and returns a
`DistributionPlan` that the trainer follows:

- JAX (recommended): `keras.distribution.DataParallel` over the devices (set before the model is
  built); several hosts join with `keras.distribution.initialize` (arguments or the
  `KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID` variables). A step is one
  program over the global batch, so BatchNorm statistics and every loss term are the global
  batch's, exactly as on one device.
- TensorFlow: `tf.distribute.MirroredStrategy` over the local GPUs (on a machine without GPUs the
  CPU is split into logical devices: a test set-up, not a speed-up); the model is built and
  compiled in its scope. Each replica computes the loss of its part of the batch, Keras sums the
  gradients and `Segmentor.compute_loss` divides by the replica count: the update is the mean of
  the replicas' losses, as the reference's DistributedDataParallel computes it. Several hosts are
  refused (MultiWorkerMirroredStrategy does not work with Keras 3, keras-team/keras#20585).
- PyTorch: one process per device under `torchrun`; the trainer's forward goes through
  `torch.nn.parallel.DistributedDataParallel` (gloo on CPU, NCCL on GPU), which averages the
  gradients during the backward pass of Keras' own `fit` step. Each rank reads its shard.

BatchNorm statistics are synchronised on all three (`layers.SyncBatchNormalization`). The global
batch (`train.batch_size`) is split evenly: `global = per device x devices`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import keras
import numpy as np

from ssaseg_keras.utils.errors import UserError

AUTO = "auto"
MULTI_HOST_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
JAX_CPU_DEVICES_HINT = "XLA_FLAGS=--xla_force_host_platform_device_count=N"


@dataclasses.dataclass
class DistributionPlan:
    """How one run is spread: engine, devices, processes and the batch each one reads.

    Attributes:
        backend: the Keras backend.
        engine: the engine's name, e.g. "keras.distribution.DataParallel".
        devices: data-parallel replicas in all (1: a single device).
        device_kind: e.g. "cpu", "gpu", "cpu (2 logical devices)".
        processes: processes taking part (JAX hosts, PyTorch ranks; TensorFlow: 1).
        process_index: this process's index; 0 writes checkpoints and logs.
        global_batch: images per step over all devices (`train.batch_size`).
        strategy: the TensorFlow strategy, else None.
    """

    backend: str
    engine: str
    devices: int
    device_kind: str
    processes: int
    process_index: int
    global_batch: int
    strategy: object = None

    @property
    def per_device_batch(self):
        return self.global_batch // self.devices

    @property
    def per_process_batch(self):
        """Images per step that this process's input pipeline yields."""
        return self.global_batch // self.processes

    @property
    def data_shard(self):
        """(shards, index) of `data.build_dataset` for this process, or None when it reads all."""
        return (self.processes, self.process_index) if self.processes > 1 else None

    @property
    def is_chief(self):
        return self.process_index == 0

    def scope(self):
        """The context to build and compile the model in (the TensorFlow strategy's scope)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self):
        return (
            f"backend {self.backend}  engine {self.engine}  devices {self.devices} ({self.device_kind})  "
            f"hosts/processes {self.processes}  batch {self.per_device_batch} per device x {self.devices} "
            f"= global {self.global_batch}"
        )

    def prepare_model(self, model):
        """Attach what the engine needs to the built model (PyTorch: DistributedDataParallel)."""
        if self.backend == "torch" and self.devices > 1:
            attach_ddp(model)
        return model


def parse_devices(value, key="train.devices"):
    """`auto` or a positive int (from a recipe or the CLI) -> "auto" or int."""
    if value is None or value == AUTO:
        return AUTO
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise UserError(f"{key}: must be auto or a number of devices >= 1, got {value!r}")
    return int(value)


def setup_distribution(devices=AUTO, global_batch=16, coordinator=None, num_processes=None, process_id=None):
    """Set up this backend's engine for `devices` ("auto": every local accelerator, or N) and
    return the plan. Call it before building the model (and, on TensorFlow, before anything else
    initialises TensorFlow's devices).

    Args:
        devices: "auto" or the number of data-parallel devices in all.
        global_batch: `train.batch_size`, split evenly over the devices.
        coordinator, num_processes, process_id: JAX multi-host (else the KERAS_DISTRIBUTION_*
            variables); refused on TensorFlow, and on PyTorch (torchrun sets that up).

    Raises:
        UserError: more devices than present, a batch that does not split evenly, multi-host on
            TensorFlow, several PyTorch devices without torchrun.
    """
    devices = parse_devices(devices)
    backend = keras.backend.backend()
    env_processes = _env_process_count()
    multi_host = (num_processes is not None and int(num_processes) > 1) or env_processes > 1
    if (coordinator or process_id is not None) and not multi_host:
        raise UserError(
            "--coordinator / --process-id describe a multi-host run: give --num-processes N (> 1) too "
            f"(or {MULTI_HOST_ENV}), or leave all three out for one host"
        )
    if backend == "jax":
        plan = _setup_jax(devices, global_batch, coordinator, num_processes, process_id)
    elif backend == "tensorflow":
        if multi_host or os.environ.get("TF_CONFIG"):
            raise UserError(
                "multi-host training is not available on TensorFlow: MultiWorkerMirroredStrategy does not "
                "work with Keras 3 (keras-team/keras#20585). Train on several hosts with the JAX backend "
                "(--backend jax with --coordinator/--num-processes/--process-id; README, 'Training on "
                "several GPUs / machines')"
            )
        plan = _setup_tensorflow(devices, global_batch)
    elif backend == "torch":
        if multi_host:
            raise UserError(
                "on PyTorch, several machines are set up by torchrun, not --coordinator/--num-processes: "
                "torchrun --nnodes M --nproc-per-node N --rdzv-endpoint HOST:PORT -m ssaseg_keras_cli.main "
                "train RECIPE (README, 'Training on several GPUs / machines')"
            )
        plan = _setup_torch(devices, global_batch)
    else:  # pragma: no cover - Keras has no other trainable backend
        raise UserError(f"training on backend {backend!r} is not supported")
    _check_batch(plan)
    return plan


def _env_process_count():
    """KERAS_DISTRIBUTION_NUM_PROCESSES as an int (1 when unset)."""
    text = os.environ.get(MULTI_HOST_ENV, "").strip()
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{MULTI_HOST_ENV}={text!r}: must be the number of hosts, an integer >= 1")
    return int(text)


def _check_batch(plan):
    if plan.global_batch % plan.devices:
        raise UserError(
            f"train.batch_size {plan.global_batch} (the global batch) does not split evenly over "
            f"{plan.devices} devices: make it a multiple of {plan.devices} (e.g. "
            f"{max(plan.global_batch // plan.devices, 1) * plan.devices}), or change --devices / train.devices"
        )


def _too_many(asked, present, kind, hint):
    return UserError(f"asked for {asked} devices but {present} {kind} device(s) are present; {hint}")


# ------------------------------------------------------------------------ JAX
def _setup_jax(devices, global_batch, coordinator, num_processes, process_id):
    import jax

    processes = int(num_processes) if num_processes is not None else _env_process_count()
    if processes > 1 and not jax.distributed.is_initialized():
        # CPU hosts exchange over gloo (a test set-up); GPU hosts use NCCL whatever this says.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            keras.distribution.initialize(
                job_addresses=coordinator, num_processes=num_processes, process_id=process_id
            )
        except (RuntimeError, ValueError) as error:
            raise UserError(
                f"could not join the multi-host run ({error}); give --coordinator HOST:PORT (process 0's "
                "address), --num-processes and --process-id, or the KERAS_DISTRIBUTION_* variables"
            ) from error
    present = jax.devices()
    kind = present[0].platform
    count = len(present) if devices == AUTO else devices
    if count > len(present):
        hint = (
            f"on a CPU machine, test with {JAX_CPU_DEVICES_HINT} virtual devices"
            if kind == "cpu"
            else "use --devices auto (every device) or fewer"
        )
        raise _too_many(count, len(present), kind, hint)
    if jax.process_count() > 1 and count != len(present):
        raise UserError(
            f"a multi-host run uses every device of every host ({len(present)}): use --devices auto "
            f"(asked for {count})"
        )
    if count > 1:
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=present[:count], auto_shard_dataset=False)
        )
        engine = "keras.distribution.DataParallel"
    else:
        keras.distribution.set_distribution(None)
        engine = "single device"
    return DistributionPlan("jax", engine, count, kind, jax.process_count(), jax.process_index(), global_batch)


# ----------------------------------------------------------------- TensorFlow
def _setup_tensorflow(devices, global_batch):
    from ssaseg_keras.utils.tensorflow import import_tensorflow

    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    count = (len(gpus) or 1) if devices == AUTO else devices
    if count == 1:
        return DistributionPlan("tensorflow", "single device", 1, "gpu" if gpus else "cpu", 1, 0, global_batch)
    if gpus:
        if count > len(gpus):
            raise _too_many(count, len(gpus), "GPU", "use --devices auto (every GPU) or fewer")
        names, kind = [f"/gpu:{i}" for i in range(count)], "gpu"
    else:
        names, kind = _logical_cpus(tf, count), f"cpu split into {count} logical devices: a test set-up"
    strategy = tf.distribute.MirroredStrategy(devices=names)
    return DistributionPlan(
        "tensorflow", "tf.distribute.MirroredStrategy", count, kind, 1, 0, global_batch, strategy=strategy
    )


def _logical_cpus(tf, count):
    """Names of `count` logical CPU devices, splitting the CPU if TensorFlow has not started yet."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:  # TensorFlow already initialised its devices: use what it has
        pass
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < count:
        raise _too_many(
            count, len(logical), "CPU",
            "TensorFlow set its devices up before the run asked for more: start a new process",
        )  # fmt: skip
    return [device.name for device in logical[:count]]


# -------------------------------------------------------------------- PyTorch
TORCHRUN_HINT = "torchrun --nproc-per-node {n} -m ssaseg_keras_cli.main train RECIPE --backend torch --devices {n}"


def _setup_torch(devices, global_batch):
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local_gpus = torch.cuda.device_count()
    kind = "gpu" if torch.cuda.is_available() else "cpu"
    if world == 1:
        if devices != AUTO and devices > 1:
            raise UserError(
                f"PyTorch trains on {devices} devices as {devices} processes, one per device: start the "
                f"run with `{TORCHRUN_HINT.format(n=devices)}` (on a CPU, gloo processes: a test set-up)"
            )
        engine = "single device"
        if devices == AUTO and local_gpus > 1:
            engine += f" (1 of {local_gpus} GPUs; for all: {TORCHRUN_HINT.format(n=local_gpus)})"
        return DistributionPlan("torch", engine, 1, kind, 1, 0, global_batch)
    if devices != AUTO and devices != world:
        raise UserError(
            f"torchrun started {world} processes but --devices / train.devices asks for {devices}: make "
            "them equal (or use --devices auto)"
        )
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= local_gpus:
            raise _too_many(local_rank + 1, local_gpus, "GPU", "start at most one process per GPU")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistributionPlan(
        "torch",
        f"torch.nn.parallel.DistributedDataParallel ({dist.get_backend()})",
        world,
        kind,
        world,
        dist.get_rank(),
        global_batch,
    )


class _DDPForward:
    """Routes `Segmentor`'s training forward through DistributedDataParallel.

    Keras' PyTorch `fit` step calls `model(x, training=True)`; the segmentor hands that call here,
    DDP runs the module below (which calls the segmentor again, now `active`), and so DDP's
    gradient hooks average every gradient over the ranks during Keras' own `loss.backward()`.
    """

    def __init__(self, model):
        import torch
        from torch.nn.parallel import DistributedDataParallel

        class TrainingForward(torch.nn.Module):
            def __init__(self, segmentor):
                super().__init__()
                self.segmentor = segmentor  # registers the Keras model's parameters

            def forward(self, images):
                return self.segmentor(images, training=True)

        device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
        self.active = False
        self.ddp = DistributedDataParallel(TrainingForward(model), device_ids=device_ids)

    def __call__(self, images):
        self.active = True
        try:
            return self.ddp(images)
        finally:
            self.active = False


def attach_ddp(model):
    """Wrap a built PyTorch-backend segmentor's training forward in DistributedDataParallel (which
    also broadcasts rank 0's weights to every rank)."""
    # object.__setattr__: neither torch nor Keras may track the wrapper as a sub-module or layer.
    object.__setattr__(model, "_training_forward", _DDPForward(model))
    return model
