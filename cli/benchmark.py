"""`ssaseg-keras benchmark`: parameters, GFLOPs, step time, latency, throughput and memory of a
recipe's model next to its `ssa: false` baseline (random weights and data: no download, no dataset)."""

from __future__ import annotations

import json
import os
import re

import click

from ssaseg_keras.utils.errors import UserError


def parse_size(text):
    """ "512" -> (512, 512); "512x1024" or "512,1024" -> (512, 1024) (height, width)."""
    if text is None:
        return None
    parts = [p for p in re.split(r"[x,\s]+", text.strip().lower()) if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise UserError(f"--size must be N or HxW (e.g. 512 or 512x1024), got {text!r}")
    return tuple(values)


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option(
    "--batch",
    type=int,
    default=None,
    help="Training and throughput batch (default: the recipe's train.batch_size).",
)
@click.option(
    "--size",
    default=None,
    help="Image size N or HxW, multiples of 32 (default: the recipe's data.crop_size).",
)
@click.option(
    "--iters",
    type=int,
    default=20,
    show_default=True,
    help="Timed calls per measurement (the median is reported).",
)
@click.option(
    "--warmup",
    type=int,
    default=10,
    show_default=True,
    help="Untimed calls before timing (the first compiles).",
)
@click.option(
    "--precision",
    default=None,
    help="float32 | mixed_float16 | mixed_bfloat16 (default: the recipe's train.precision).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write every figure to this JSON file.",
)
@click.option("--no-baseline", is_flag=True, help="Skip the `ssa: false` baseline.")
@click.option(
    "--devices", default="1", show_default=True, metavar="1|N|auto",
    help="Data-parallel devices for the training step (JAX; PyTorch under torchrun); --batch is "
    "the global batch. Inference is measured on one device only.",
)  # fmt: skip
@click.option(
    "--compare-backends", is_flag=True,
    help="Run the benchmark on each backend of --backends in turn (one process each) and print one "
    "table with the SSA / baseline ratios side by side.",
)
@click.option(
    "--backends", default="tensorflow,jax,torch", show_default=True, metavar="LIST",
    help="Comma-separated Keras backends for --compare-backends.",
)  # fmt: skip
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. --set model.num_classes=150 (repeatable).",
)
def benchmark(recipe, batch, size, iters, warmup, precision, json_path, no_baseline, overrides, devices,
              compare_backends, backends):  # fmt: skip
    """Benchmark RECIPE's model and its baseline on the active backend (KERAS_BACKEND).

    Reports trainable parameters (training and inference models), GFLOPs (multiply-adds), the median
    training step and images/s, inference latency at batch 1 (to the argmax map) and images/s at the
    batch, and peak device memory where the backend exposes it, with the model/baseline ratio.
    Example: ssaseg-keras benchmark recipes/segnext_t_coco.yaml --batch 16 --size 512 --json bench.json
    (--compare-backends: the same on TensorFlow, JAX and PyTorch, one after the other, in one table.)
    """
    from ssaseg_keras.benchmark import benchmark as run_benchmark
    from ssaseg_keras.benchmark import format_report
    from ssaseg_keras.recipes import load_recipe
    from ssaseg_keras.training.distribute import parse_devices
    from ssaseg_keras.utils.distribution import is_chief

    devices = parse_devices(devices, key="--devices")
    parsed_size = parse_size(size)
    config = load_recipe(recipe, overrides)  # a bad recipe or key fails here, before any backend runs
    if compare_backends:
        _compare(recipe, batch, size, iters, warmup, precision, json_path, no_baseline, overrides, devices, backends)
        return
    size = parsed_size
    report = run_benchmark(
        config,
        batch=batch,
        size=size,
        iters=iters,
        warmup=warmup,
        precision=precision,
        baseline=not no_baseline,
        echo=lambda message: click.echo(message, err=True),
        devices=devices,
    )
    if not is_chief():
        return
    click.echo(format_report(report))
    if json_path:
        folder = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(folder, exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        click.echo(f"wrote {json_path}")


def _compare(recipe, batch, size, iters, warmup, precision, json_path, no_baseline, overrides, devices, backends):
    """--compare-backends: the command once per backend, then one table (and one JSON)."""
    from ssaseg_keras.benchmark.compare import BACKENDS, compare_backends, format_backend_comparison

    names = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if not names or unknown:
        raise UserError(f"--backends: {', '.join(unknown) or 'empty'} is not a Keras backend; use some of {', '.join(BACKENDS)}")
    arguments = [recipe, "--iters", str(iters), "--warmup", str(warmup), "--devices", str(devices)]
    for flag, value in (("--batch", batch), ("--size", size), ("--precision", precision)):
        if value is not None:
            arguments += [flag, str(value)]
    if no_baseline:
        arguments.append("--no-baseline")
    for item in overrides:
        arguments += ["--set", item]
    results = compare_backends(arguments, names, echo=lambda message: click.echo(message, err=True))
    click.echo(format_backend_comparison(results))
    if json_path:
        folder = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(folder, exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump({"backends": results}, handle, indent=2)
        click.echo(f"wrote {json_path}")
    if all("error" in r for r in results.values()):
        raise UserError("--compare-backends: no backend finished (reasons above)")
