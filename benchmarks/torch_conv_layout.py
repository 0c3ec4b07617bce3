"""PyTorch backend: a training step with Keras' layout copies around every convolution, and without.

Keras' torch `conv` turns an NHWC input into NCHW with `permute(...).contiguous()` (a full copy) and
then back into channels-last memory with `.contiguous(memory_format=torch.channels_last)` (a second
full copy) before `conv2d`; `ssaseg_keras.ops.torch_layout` (installed by `import ssaseg_keras` on
this backend) passes the permuted view instead, with the same numbers. This script times a training
step of a recipe's model (baseline and SSA) both ways in one process, checks that the logits agree,
and counts aten copies with torch.profiler.

    KERAS_BACKEND=torch python benchmarks/torch_conv_layout.py recipes/segnext_t_coco.yaml --batch 2 --size 256
"""

from __future__ import annotations

import argparse
import contextlib

import keras
import numpy as np

from ssaseg_keras.ops import torch_layout


@contextlib.contextmanager
def layout(mode):
    """'keras': Keras' copies; 'views': the channels-last views (restored to the views after)."""
    torch_layout.use_channels_last_views(mode == "views")
    try:
        yield
    finally:
        torch_layout.use_channels_last_views(True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    assert keras.backend.backend() == "torch", "run with KERAS_BACKEND=torch"
    import time

    import torch

    from ssaseg_keras.recipes import load_recipe
    from ssaseg_keras.training.trainer import build_training_model

    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch, args.size, args.size, 3)).astype("float32")
    results = {}
    for ssa in (False, True):
        recipe = load_recipe(args.recipe, overrides=[f"model.ssa={str(ssa).lower()}"])
        model = build_training_model(recipe, load_pretrained=False)
        labels = rng.integers(0, recipe["model"]["num_classes"], size=(args.batch, args.size, args.size)).astype("int32")
        # SegNeXt's Hamburger draws fresh NMF bases at every call (as the reference does): restore the
        # seed state (every non-trainable variable) so that both layouts see the same bases.
        state = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]
        logits = {}
        for mode in ("keras", "views"):
            for variable, value in zip(model.non_trainable_variables, state):
                variable.assign(value)
            with layout(mode):
                logits[mode] = keras.ops.convert_to_numpy(model(images, training=False))
        reference, viewed = logits["keras"], logits["views"]
        print(f"{'SSA' if ssa else 'baseline'}: logits differ by at most {np.abs(viewed - reference).max():.2e} with the view")
        times = {"keras": [], "views": []}
        for step in range(args.warmup + args.iters):  # the two layouts alternate: shared noise
            for mode in times:
                with layout(mode):
                    start = time.perf_counter()
                    model.train_on_batch(images, labels)
                    if step >= args.warmup:
                        times[mode].append((time.perf_counter() - start) * 1000)
        for mode in times:
            with layout(mode), torch.profiler.profile() as prof:
                model.train_on_batch(images, labels)
            copies = [e for e in prof.key_averages() if e.key == "aten::copy_"]
            copy_ms = sum(e.self_cpu_time_total for e in copies) / 1000
            total_ms = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1000
            results[(ssa, mode)] = float(np.median(times[mode]))
            print(f"{'SSA' if ssa else 'baseline':8s} {mode:5s} step median {results[(ssa, mode)]:8.1f} ms "
                  f"(samples {', '.join(f'{t:.0f}' for t in times[mode])}); profiled step: aten::copy_ "
                  f"{copy_ms:.0f} ms of {total_ms:.0f} ms self CPU", flush=True)
    for ssa in (False, True):
        print(f"{'SSA' if ssa else 'baseline'}: views / keras = {results[(ssa, 'views')] / results[(ssa, 'keras')]:.3f}")


if __name__ == "__main__":
    main()
