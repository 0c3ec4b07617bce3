"""`benchmark(recipe, ...)`: parameters, GFLOPs, training step time, inference latency and throughput,
and peak device memory of a recipe's model and of its `ssa: false` baseline, side by side.

No dataset and no pretrained weights: random weights, random normal images and blob-like random
labels (rectangular class regions, a few ignore pixels). Each timing is the median of `iters`
synchronised calls after `warmup` calls (the first compiles). Training uses the recipe's compiled
training step (`model.train_on_batch`, GroupedAdamW, the whole SSA-Seg objective); inference uses the
teacher-free model and times images -> argmax class map, compiled like `predict`.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import statistics
import time

import keras
import numpy as np

from ssaseg_keras.benchmark import device as dev
from ssaseg_keras.benchmark.flops import count_macs
from ssaseg_keras.utils.conventions import IGNORE_INDEX
from ssaseg_keras.utils.errors import UserError
from ssaseg_keras.utils.variables import count_parameters


def torch_conv_layout():
    """PyTorch: which layout Keras' convolutions run with (`ops.torch_layout`); None on other backends."""
    if keras.backend.backend() != "torch":
        return None
    from ssaseg_keras.ops import torch_layout

    return torch_layout.layout_in_use()


def jax_depthwise_mode():
    """JAX: how depthwise convolutions run (`ops.jax_depthwise`: auto, shifted or keras); None on other
    backends."""
    if keras.backend.backend() != "jax":
        return None
    from ssaseg_keras.ops import jax_depthwise

    return jax_depthwise.mode_in_use()


def random_batch(batch, size, num_classes, seed=0):
    """Images (B, H, W, 3) float32 ~ N(0, 1) and labels (B, H, W) int32 made of random rectangular
    blobs of classes, about 5% of them ignore (255)."""
    rng = np.random.default_rng(seed)
    height, width = size
    images = rng.standard_normal((batch, height, width, 3), dtype=np.float32)
    labels = np.empty((batch, height, width), np.int32)
    for b in range(batch):
        cell = int(rng.choice([8, 16, 32]))
        grid = rng.integers(0, num_classes, (-(-height // cell), -(-width // cell)))
        grid[rng.random(grid.shape) < 0.05] = IGNORE_INDEX
        labels[b] = np.repeat(np.repeat(grid, cell, 0), cell, 1)[:height, :width]
    return images, labels


class ArgmaxModel(keras.Model):
    """images -> argmax class map of a segmentor's logits (what a deployed model returns)."""

    def __init__(self, segmentor, **kwargs):
        super().__init__(**kwargs)
        self.segmentor = segmentor

    def call(self, images):
        return keras.ops.argmax(self.segmentor(images, training=False), axis=-1)


def median_ms(fn, iters, warmup):
    """(median ms, all samples ms) of `fn()`, which must return only when the device is done."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), samples


def measure_model(recipe, batch, size, iters, warmup, echo=None, plan=None):
    """The figures of one recipe's model (see `benchmark`); the global dtype policy is already set.

    With a several-device `plan` (`training.distribute`), `batch` is the global batch: this process
    feeds its part, and only the training step is measured (inference runs on one device)."""
    from ssaseg_keras.models import inference_model
    from ssaseg_keras.training.trainer import build_training_model

    say = echo or (lambda message: None)
    model_cfg = recipe["model"]
    num_classes = int(model_cfg["num_classes"])
    label = "SSA" if model_cfg["ssa"] else "baseline"
    keras.utils.set_random_seed(int(recipe["train"]["seed"]))

    distributed = plan is not None and plan.devices > 1
    with plan.scope() if plan is not None else contextlib.nullcontext():
        model = build_training_model(recipe, load_pretrained=False)
    if plan is not None:
        plan.prepare_model(model)
    result = {"ssa": bool(model_cfg["ssa"]), "params_training": count_parameters(model.trainable_variables)}

    local_batch = plan.per_process_batch if plan is not None else batch
    images, labels = random_batch(local_batch, size, num_classes, seed=int(recipe["train"]["seed"]))
    x = keras.ops.convert_to_tensor(images)
    y = keras.ops.convert_to_tensor(labels)

    def train_step():
        # The logs come back as numpy values: reading them waits for the step.
        logs = model.train_on_batch(x, y, return_dict=True)
        dev.synchronize()
        return logs

    say(f"[{label}] training step: compiling and {warmup} warm-up + {iters} timed steps ...")
    reset = dev.reset_peak_memory()
    train_ms, train_samples = median_ms(train_step, iters, warmup)
    logs = train_step()
    if not np.isfinite(float(logs["loss"])):
        raise UserError(
            f"the {label} training step gave a non-finite loss ({logs['loss']}); try --precision float32"
        )
    result.update(
        train_step_ms=train_ms,
        train_step_samples_ms=train_samples,
        train_images_per_s=batch * 1e3 / train_ms,
        train_loss=float(logs["loss"]),
        peak_train_memory_bytes=dev.peak_memory_bytes(),
        peak_memory_window="per phase" if reset else "since process start",
    )
    # The inference model is made after training: JAX's compiled step donates (frees) the training
    # model's old weight buffers, which a copy made earlier would still point to.
    if distributed:
        result.update(params_inference=count_parameters(inference_model(model).trainable_variables))
        return result
    infer = inference_model(model)
    result["params_inference"] = count_parameters(infer.trainable_variables)
    macs = count_macs(infer, size)
    result.update(gflops=macs["paper"] / 1e9, gflops_total=macs["total"] / 1e9, macs=macs)

    predictor = ArgmaxModel(infer, name="argmax_model")
    predictor.compile(jit_compile="auto")
    one = keras.ops.convert_to_tensor(images[:1])

    def predict(inputs):
        def run():
            out = predictor.predict_on_batch(inputs)  # numpy: synchronised
            dev.synchronize()
            return out

        return run

    say(f"[{label}] inference: batch 1 latency and batch {batch} throughput ...")
    dev.reset_peak_memory()
    latency_ms, latency_samples = median_ms(predict(one), iters, warmup)
    throughput_ms, _ = median_ms(predict(x), iters, warmup)
    prediction = predict(one)()
    if tuple(prediction.shape) != (1, size[0], size[1]):
        raise RuntimeError(f"unexpected prediction shape {prediction.shape}")
    result.update(
        inference_latency_ms=latency_ms,
        inference_latency_samples_ms=latency_samples,
        inference_batch_ms=throughput_ms,
        inference_images_per_s=batch * 1e3 / throughput_ms,
        peak_inference_memory_bytes=dev.peak_memory_bytes(),
    )
    return result


RATIO_KEYS = (
    "params_training",
    "params_inference",
    "gflops",
    "gflops_total",
    "train_step_ms",
    "train_images_per_s",
    "inference_latency_ms",
    "inference_images_per_s",
    "peak_train_memory_bytes",
    "peak_inference_memory_bytes",
)


def ratios(model, baseline):
    """model / baseline for every figure both have (None where either is missing or zero)."""
    out = {}
    for key in RATIO_KEYS:
        a, b = model.get(key), baseline.get(key)
        out[key] = (a / b) if (a is not None and b) else None
    return out


def benchmark(
    recipe, batch=None, size=None, iters=20, warmup=10, precision=None, baseline=True, echo=None, devices=1
):
    """Benchmark a validated recipe's model and (unless `baseline=False`) its `ssa: false` twin.

    Args:
        recipe: a validated recipe (`load_recipe`).
        batch: training / throughput batch (default: the recipe's train.batch_size).
        size: (H, W), multiples of 32 (default: the recipe's data.crop_size, else 512x512).
        iters / warmup: timed and untimed calls of each measurement.
        precision: float32 | mixed_float16 | mixed_bfloat16 (default: the recipe's train.precision).

    Returns:
        {"conditions": {...}, "models": {"model": {...}, "baseline": {...}}, "ratios": {...}}; each
        model's figures: params_training / params_inference, gflops (conv + dense multiply-adds and
        bias adds, the papers' convention) and gflops_total (also NMF / SSA matmuls and resizes),
        train_step_ms (median), train_images_per_s, inference_latency_ms (batch 1, to argmax),
        inference_images_per_s (at `batch`), peak_*_memory_bytes (None where not exposed).
    """
    from ssaseg_keras.recipes import PRECISIONS
    from ssaseg_keras.training.trainer import set_precision

    batch = int(recipe["train"]["batch_size"] if batch is None else batch)
    if size is None:
        size = (
            (recipe.get("data") or {}).get("crop_size")
            or recipe["model"].get("image_size")
            or (512, 512)
        )
    size = (int(size[0]), int(size[1]))
    precision = precision or recipe["train"]["precision"]
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    if size[0] < 32 or size[1] < 32 or size[0] % 32 or size[1] % 32:
        raise UserError(f"--size must be multiples of 32 (and >= 32), got {size[0]}x{size[1]}")
    if iters < 1 or warmup < 0:
        raise UserError(f"--iters must be >= 1 and --warmup >= 0, got {iters} and {warmup}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")

    plan = None
    if devices != 1:
        from ssaseg_keras.training.distribute import setup_distribution

        if keras.backend.backend() == "tensorflow":
            raise UserError(
                "benchmark --devices is for JAX and PyTorch (a TensorFlow strategy needs a distributed "
                "dataset); on TensorFlow, `ssaseg-keras train --devices N` logs images/s"
            )
        plan = setup_distribution(devices, batch)
    recipe = copy.deepcopy(recipe)
    recipe["train"]["batch_size"] = batch
    recipe["train"]["precision"] = precision
    if recipe["model"]["family"] == "segformer":
        recipe["model"]["image_size"] = list(size)
    # The baseline runs first: JAX's peak memory cannot be reset, so the (smaller) baseline's peak is
    # its own and the model's is max(both), i.e. its own too when it is the larger.
    variants = {}
    if baseline:
        twin = copy.deepcopy(recipe)
        twin["model"]["ssa"] = False
        variants["baseline"] = twin
    variants["model"] = recipe

    kind, description = dev.accelerator()
    conditions = {
        "recipe": recipe["name"],
        "family": recipe["model"]["family"],
        "size_name": recipe["model"]["size"],
        "num_classes": int(recipe["model"]["num_classes"]),
        "ssa": bool(recipe["model"]["ssa"]),
        "backend": keras.backend.backend(),
        "backend_version": dev.backend_version(),
        "keras_version": keras.__version__,
        "device_kind": kind,
        "device": description,
        "precision": precision,
        "loss_resize": recipe["train"]["loss_resize"],
        "compile_loss": bool(recipe["train"]["compile_loss"]),
        "torch_conv_layout": torch_conv_layout(),
        "jax_depthwise": jax_depthwise_mode(),
        "batch": batch,
        "image_size": list(size),
        "devices": plan.devices if plan is not None else 1,
        "engine": plan.engine if plan is not None else "single device",
        "iters": int(iters),
        "warmup": int(warmup),
        "date": datetime.date.today().isoformat(),
    }
    previous_policy = keras.config.dtype_policy()
    results = {}
    try:
        set_precision(precision)
        for name, variant in variants.items():
            results[name] = measure_model(variant, batch, size, int(iters), int(warmup), echo=echo, plan=plan)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    ordered = {key: results[key] for key in ("model", "baseline") if key in results}
    report = {"conditions": conditions, "models": ordered}
    if "baseline" in results:
        report["ratios"] = ratios(results["model"], results["baseline"])
    return report
