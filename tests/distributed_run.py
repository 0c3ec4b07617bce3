"""A few iterations of a tiny SegNeXt + SSA on N data-parallel devices, for tests/test_distributed.py.

Run as its own process (the device set-up must come before JAX / TensorFlow start):

    python tests/distributed_run.py WORK_DIR --devices N [--emulate-replicas R]
        JAX: XLA_FLAGS=--xla_force_host_platform_device_count=2; TensorFlow: the trainer splits the
        CPU into N logical devices; PyTorch: under torchrun, one process per device.

Randomness that would differ between a global batch and its per-device parts is removed: no dropout
or drop-path, and NMF bases that are the same for every image (the library draws them per image);
the few weights whose gradient is exactly 0 are frozen (`freeze_biases_before_batch_norm`).
`--emulate-replicas R` (one device) computes the loss as a DistributedDataParallel / MirroredStrategy
run over R replicas defines it: the forward pass over the whole batch (BatchNorm statistics of the
global batch, as synchronised BatchNorm), then the mean of the loss of each contiguous 1/R of the
batch. Each run writes its checkpoints and log.jsonl into WORK_DIR (process 0) and a
`summary.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from keras import ops  # noqa: E402
from models_helpers import TINY_BACKBONE, TINY_HEAD, fixed_bases  # noqa: E402

from ssaseg_keras.models.heads.ham_head import NMF2D  # noqa: E402
from ssaseg_keras.models.segmentor import Segmentor  # noqa: E402
from ssaseg_keras.recipes import validate_recipe  # noqa: E402
from ssaseg_keras.training import trainer  # noqa: E402
from ssaseg_keras.training.trainer import train  # noqa: E402

ITERATIONS = 3
GLOBAL_BATCH = 4


def recipe(max_iters=ITERATIONS):
    return validate_recipe({
        "name": "distributed",
        "model": {
            "family": "segnext", "size": "t", "ssa": True, "seed": 3, "dropout": 0.0, "drop_path": 0.0,
            "backbone": dict(TINY_BACKBONE), "head": dict(TINY_HEAD),
        },
        "data": {
            "source": "synthetic", "num_classes": 5, "image_size": [32, 32], "crop_size": [32, 32],
            "num_images": 16, "num_val_images": 3,
        },
        "train": {
            "max_iters": max_iters, "batch_size": GLOBAL_BATCH, "lr": 1e-3, "warmup_iters": 0,
            "log_interval": 1, "eval_interval": ITERATIONS, "checkpoint_interval": ITERATIONS,
        },
    })  # fmt: skip


def same_bases_for_every_image(self, batch, channels):
    bases = ops.convert_to_tensor(fixed_bases(1, int(channels), self.rank))
    return ops.broadcast_to(bases, (batch, channels, self.rank))


def freeze_biases_before_batch_norm(build):
    """`build_training_model` with the MSCAN patch embeddings' conv biases frozen. Each feeds a
    BatchNorm, which subtracts it again: its true gradient is 0, so what the backward pass gives is
    rounding noise, which Adam turns into steps of +-lr whose signs depend on the summation order
    (different on one and two devices). Frozen, every other weight can be compared tightly."""

    def wrapped(*args, **kwargs):
        model = build(*args, **kwargs)
        for layer in model.backbone._flatten_layers(include_self=False):
            if layer.name in ("conv1", "conv2", "proj") and "patch_embed" in layer.path and layer.bias is not None:
                layer.bias.trainable = False
        return model

    return wrapped


def emulate_replicas(replicas):
    """Make `Segmentor.compute_loss` the mean of the losses of `replicas` contiguous batch parts."""
    original = Segmentor.compute_loss

    def part(value, index, size):
        return value[index * size : (index + 1) * size]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, dict):  # evaluation: as usual
            return original(self, x, y, y_pred, sample_weight, training)
        size = y.shape[0] // replicas
        losses = [
            original(
                self, part(x, r, size), part(y, r, size),
                {k: part(v, r, size) for k, v in y_pred.items()}, sample_weight, training,
            )
            for r in range(replicas)
        ]  # fmt: skip
        return sum(losses[1:], losses[0]) / replicas

    Segmentor.compute_loss = compute_loss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("work_dir")
    parser.add_argument("--devices", default="1")
    parser.add_argument("--emulate-replicas", type=int, default=1)
    parser.add_argument("--max-iters", type=int, default=ITERATIONS)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--coordinator")  # JAX multi-host
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    args = parser.parse_args()
    multi_host = None
    if args.num_processes:
        multi_host = {"coordinator": args.coordinator, "num_processes": args.num_processes, "process_id": args.process_id}
    NMF2D.random_bases = same_bases_for_every_image
    trainer.build_training_model = freeze_biases_before_batch_norm(trainer.build_training_model)
    if args.emulate_replicas > 1:
        emulate_replicas(args.emulate_replicas)
    devices = "auto" if args.devices == "auto" else int(args.devices)
    summary = train(
        recipe(args.max_iters), args.work_dir, resume=args.resume, devices=devices, load_pretrained=False,
        echo=print, multi_host=multi_host,
    )  # fmt: skip
    from ssaseg_keras.utils.distribution import is_chief

    if is_chief():
        keep = {k: summary[k] for k in ("iteration", "devices", "engine", "best_miou")}
        with open(os.path.join(args.work_dir, "summary.json"), "w", encoding="utf-8") as handle:
            json.dump({**keep, "backend": keras.backend.backend()}, handle)


if __name__ == "__main__":
    main()
