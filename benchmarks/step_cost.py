"""XLA's cost analysis of the whole compiled training step (JAX): SSA next to its baseline.

Compiles (does not run) `model.train_step` -- forward, the whole objective, backward and the
GroupedAdamW update, exactly what `fit` runs -- for the recipe's model and its `ssa: false` twin on
abstract inputs (no image-size arrays are allocated), and prints XLA's FLOP and bytes-accessed counts
of each. These are counts of the compiled graph for the device JAX compiles for here (the CPU in
the sandbox: its fusion decisions differ from a GPU's), so they are a proxy, not a speed:

    KERAS_BACKEND=jax python benchmarks/step_cost.py recipes/segnext_t_coco.yaml --batch 16 --size 512
"""

from __future__ import annotations

import argparse
import copy
import time

import keras

from ssaseg_keras.ops.resize import RESIZE_METHODS


def step_cost(recipe, batch, size):
    """{"gflop", "gb_accessed", "compile_s"} of the recipe's compiled training step."""
    import jax

    from ssaseg_keras.training.trainer import build_training_model

    model = build_training_model(recipe, load_pretrained=False)
    model.optimizer.build(model.trainable_variables)
    state = model._get_jax_state(  # the state tuple Keras' own jitted train step takes
        trainable_variables=True, non_trainable_variables=True, optimizer_variables=True,
        metrics_variables=True, purge_model_variables=False,
    )  # fmt: skip
    images = jax.ShapeDtypeStruct((batch, size, size, 3), "float32")
    labels = jax.ShapeDtypeStruct((batch, size, size), "int32")
    start = time.perf_counter()
    compiled = jax.jit(model.train_step).lower(state, (images, labels)).compile()
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "gflop": cost.get("flops", 0.0) / 1e9,
        "gb_accessed": cost.get("bytes accessed", 0.0) / 1e9,
        "compile_s": seconds,
    }


def main():
    from ssaseg_keras.benchmark import device as dev
    from ssaseg_keras.recipes import PRECISIONS, load_recipe
    from ssaseg_keras.training.trainer import set_precision
    from ssaseg_keras.utils.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--resize", nargs="+", default=["matmul", "gather"], choices=RESIZE_METHODS,
                        help="train.loss_resize values")  # fmt: skip
    args = parser.parse_args()
    if keras.backend.backend() != "jax":
        parser.error("set KERAS_BACKEND=jax: the counts come from XLA's compiled JAX program")
    if args.batch < 1 or args.size < 32 or args.size % 32:
        parser.error(f"--batch must be >= 1 and --size a multiple of 32, got {args.batch} and {args.size}")
    try:
        recipe = load_recipe(args.recipe)
    except UserError as error:  # a missing file or a bad key: one line, no traceback
        parser.error(str(error))
    set_precision(args.precision)
    print(f"{recipe['name']}  batch {args.batch}  {args.size}x{args.size}  {args.precision}  "
          f"device {dev.accelerator()[1]}  (XLA cost analysis of the compiled step; not run)")  # fmt: skip
    for resize in args.resize:
        figures = {}
        for name, ssa in (("SSA", True), ("baseline", False)):
            variant = copy.deepcopy(recipe)
            variant["model"]["ssa"] = ssa
            variant["train"]["loss_resize"] = resize
            variant["train"]["batch_size"] = args.batch
            try:
                figures[name] = step_cost(variant, args.batch, args.size)
            except UserError as error:  # e.g. a keras-cv backbone without keras-cv: one line
                parser.exit(2, f"{parser.prog}: error: {error}\n")
            f = figures[name]
            print(f"loss_resize {resize:6s} {name:8s} {f['gflop']:9.1f} GFLOP  {f['gb_accessed']:8.2f} GB accessed"
                  f"  (compiled in {f['compile_s']:.0f} s)", flush=True)  # fmt: skip
        s, b = figures["SSA"], figures["baseline"]
        print(f"loss_resize {resize:6s} SSA / baseline: {s['gflop'] / b['gflop']:.3f}x FLOP, "
              f"{s['gb_accessed'] / b['gb_accessed']:.3f}x bytes", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
