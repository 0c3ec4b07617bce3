"""Time the training loss alone: SSA-Seg's eight terms (with the classifier and its teacher) next to
the baseline's cross-entropy, forward and backward, from fixed decode-head features.

This isolates what SSA adds after the decode head (the part the reference pays 3.1x for) from the
backbone. Usage, on any backend:

    KERAS_BACKEND=torch python benchmarks/loss_step.py --batch 2 --size 512 --iters 5

Prints the median milliseconds of each, their ratio, and (JAX) XLA's cost analysis of each
compiled function (FLOPs and bytes accessed, device-independent counts of the compiled graph).
`--resize banded` / `--resize gather` run the losses' upsampling with banded matmuls or two-tap
gathers instead of the default dense matmuls (the losses' `resize_method`, the recipe's
`train.loss_resize`; the same sampling); `--resize matmul banded gather` times all three in one
process, and `--json` writes every figure. On JAX each line also gives XLA's cost analysis and
its peak temporary memory of the compiled function (the memory side of the choice).
"""

from __future__ import annotations

import argparse
import json

import keras
import numpy as np

from ssaseg_keras.benchmark import device as dev
from ssaseg_keras.benchmark.runner import median_ms, random_batch
from ssaseg_keras.layers import SSAClassifier
from ssaseg_keras.losses import baseline_loss_terms, ssa_loss_terms
from ssaseg_keras.ops import resize as resize_ops


def loss_and_grad_fn(classifier, kind, resize_method):
    """(call, jitted, values): call(features, labels) -> (terms dict, gradients), compiled where the
    backend compiles; on JAX also the jitted function and its variable values (for cost analysis)."""

    def terms(features, labels):
        if kind == "baseline":
            return baseline_loss_terms(classifier.conv_seg(features), labels, resize_method=resize_method)
        student = classifier.forward_student(features, training=False)
        return ssa_loss_terms(classifier, features, labels, student=student, resize_method=resize_method)

    backend = keras.backend.backend()
    variables = classifier.trainable_variables
    if backend == "jax":
        import jax

        def total(values, features, labels):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                out = terms(features, labels)
            return sum(out.values()), out

        step = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))
        values = [v.value for v in variables]

        def call(features, labels):
            (_, out), grads = step(values, features, labels)
            return out, grads

        return call, step, values
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step(features, labels):
            with tf.GradientTape() as tape:
                tape.watch(features)
                out = terms(features, labels)
                total = tf.add_n(list(out.values()))
            return out, tape.gradient(total, [features] + [v.value for v in variables])

        return step, None, None

    def step(features, labels):
        features = features.detach().requires_grad_(True)
        out = terms(features, labels)
        sum(out.values()).backward()
        return out, features.grad

    return step, None, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="label (image) size; features are size/8")
    parser.add_argument("--classes", type=int, default=171)
    parser.add_argument("--channels", type=int, default=256, help="decode-head channels (SegNeXt-T: 256)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--resize", choices=resize_ops.RESIZE_METHODS, default=["matmul"], nargs="+",
                        help="how the losses upsample logits to label size (several: each in turn)")  # fmt: skip
    parser.add_argument("--json", help="write the figures (and conditions) to this file")
    args = parser.parse_args()
    if args.size < 8 or args.size % 8:
        parser.error(f"--size {args.size}: must be a positive multiple of 8 (features are size/8)")

    keras.utils.set_random_seed(0)
    small = args.size // 8
    _, labels = random_batch(args.batch, (args.size, args.size), args.classes)
    features = np.random.default_rng(0).standard_normal((args.batch, small, small, args.channels))
    features = keras.ops.convert_to_tensor(features.astype("float32"))
    labels = keras.ops.convert_to_tensor(labels)
    classifier = SSAClassifier(args.classes)
    classifier.build((None, small, small, args.channels))

    kind_device = dev.accelerator()[1]
    print(f"backend {keras.backend.backend()} {dev.backend_version()}  device {kind_device}")
    print(f"batch {args.batch}  labels {args.size}x{args.size}  features {small}x{small}x{args.channels}"
          f"  classes {args.classes}  float32  median of {args.iters} after {args.warmup}")
    report = {
        "backend": keras.backend.backend(), "backend_version": dev.backend_version(), "device": kind_device,
        "batch": args.batch, "size": args.size, "classes": args.classes, "channels": args.channels,
        "iters": args.iters, "warmup": args.warmup, "results": {},
    }  # fmt: skip
    for resize in args.resize:
        figures = report["results"][resize] = {}
        for kind in ("ssa", "baseline"):
            call, jitted, values = loss_and_grad_fn(classifier, kind, resize)

            def run(call=call):
                # Reading the eight loss scalars waits for the step (one compiled program on JAX and
                # TensorFlow; torch.cuda.synchronize on PyTorch) without copying gradients to the host.
                terms, _ = call(features, labels)
                dev.synchronize(terms)

            median, samples = median_ms(run, args.iters, args.warmup)
            figures[f"{kind}_ms"], figures[f"{kind}_samples_ms"] = median, samples
            line = f"resize {resize:6s} {kind:8s} loss forward+backward {median:9.1f} ms"
            if jitted is not None:
                compiled = jitted.lower(values, features, labels).compile()
                cost = compiled.cost_analysis()
                cost = cost[0] if isinstance(cost, list) else cost
                figures[f"{kind}_xla_gflop"] = cost.get("flops", 0) / 1e9
                figures[f"{kind}_xla_gb_accessed"] = cost.get("bytes accessed", 0) / 1e9
                line += (f"   XLA: {figures[f'{kind}_xla_gflop']:.1f} GFLOP,"
                         f" {figures[f'{kind}_xla_gb_accessed']:.2f} GB accessed")  # fmt: skip
                memory = compiled.memory_analysis()
                if memory is not None:
                    figures[f"{kind}_xla_temp_gib"] = memory.temp_size_in_bytes / 2**30
                    line += f", {figures[f'{kind}_xla_temp_gib']:.2f} GiB temporaries"
            print(line, flush=True)
        figures["ratio"] = figures["ssa_ms"] / figures["baseline_ms"]
        print(f"resize {resize:6s} ratio SSA / baseline: {figures['ratio']:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)

if __name__ == "__main__":
    main()
