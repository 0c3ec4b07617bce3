"""Issue 7's GPU figures in one device call: steps in priority order under a time budget.

A lent GPU session has ~15 device-minutes, at most 10 per call, and a fresh machine each session, so
this runs what matters most first and never starts a step it cannot finish:

    loss:jax                  the losses alone (benchmarks/loss_step.py): matmul, banded, gather
    bench:jax:mixed_bfloat16  `ssaseg-keras benchmark` SegNeXt-T 171 classes, SSA and baseline
    loss:torch
    bench:torch:mixed_float16
    bench:jax:float32
    bench:torch:float32

A `bench` step uses the upsampling method (`train.loss_resize`) that was faster for the SSA loss in
its backend's `loss` step of this run (`--loss-resize auto`, the default; matmul when that step did
not run). Each step runs in its own process under the time left; a step is skipped when less than
`--min-step` seconds remain. Everything goes to $OUT (default ./gpu_out): `gpu_issue7.log` (all
output, nvidia-smi first), `loss_<backend>.json`, `<backend>_<precision>.json` (at most 7 files:
the device tool returns 8), and a summary table is printed last.

Run through `benchmarks/gpu_issue7.sh`, which installs the wheels the GPU machine lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

DEFAULT_STEPS = (
    "loss:jax",
    "bench:jax:mixed_bfloat16",
    "loss:torch",
    "bench:torch:mixed_float16",
    "bench:jax:float32",
    "bench:torch:float32",
)
RECIPE = "recipes/segnext_t_coco.yaml"


def parse_step(step):
    """'loss:jax' -> ('loss', 'jax', None); 'bench:torch:float32' -> ('bench', 'torch', 'float32')."""
    parts = step.split(":")
    ok = (parts[0] == "loss" and len(parts) == 2) or (parts[0] == "bench" and len(parts) == 3)
    if not ok or parts[1] not in ("jax", "torch", "tensorflow"):
        raise SystemExit(f"bad step {step!r}: write loss:BACKEND or bench:BACKEND:PRECISION")
    return parts[0], parts[1], (parts[2] if len(parts) == 3 else None)


def faster_method(loss_json):
    """The upsampling method (`train.loss_resize`) with the lower SSA loss time in a loss_step.py
    JSON, or None."""
    try:
        with open(loss_json) as f:
            results = json.load(f)["results"]
        return min(results, key=lambda method: results[method]["ssa_ms"])
    except (OSError, ValueError, KeyError):
        return None


def command_for(step, args, out):
    kind, backend, precision = parse_step(step)
    sizes = ["--batch", str(args.batch), "--iters", str(args.iters), "--warmup", str(args.warmup)]
    if kind == "loss":
        path = os.path.join(out, f"loss_{backend}.json")
        return backend, path, [sys.executable, "benchmarks/loss_step.py", *sizes, "--size", str(args.size),
                               "--resize", "matmul", "banded", "gather", "--json", path]  # fmt: skip
    method = args.loss_resize
    if method == "auto":
        method = faster_method(os.path.join(out, f"loss_{backend}.json")) or "matmul"
    path = os.path.join(out, f"{backend}_{precision}.json")
    cli = "from ssaseg_keras_cli.main import main; main()"
    compiled = ["--set", "train.compile_loss=true"] if args.compile_loss and backend == "torch" else []
    return backend, path, [sys.executable, "-c", cli, "benchmark", RECIPE, *sizes, "--size", str(args.size),
                           "--precision", precision, "--set", f"train.loss_resize={method}", *compiled,
                           "--json", path]  # fmt: skip


def summary_lines(out, steps):
    """A short table of what the JSON files hold (the device tool returns the output's end)."""
    lines = []
    for step in steps:
        kind, backend, precision = parse_step(step)
        name = f"loss_{backend}.json" if kind == "loss" else f"{backend}_{precision}.json"
        try:
            with open(os.path.join(out, name)) as f:
                report = json.load(f)
        except (OSError, ValueError):
            lines.append(f"{step:26s} no result")
            continue
        if kind == "loss":
            for method, r in report["results"].items():
                lines.append(f"{step:26s} {method:6s} SSA loss {r['ssa_ms']:8.1f} ms  baseline {r['baseline_ms']:7.1f} ms  ({r['ratio']:.2f}x)")  # fmt: skip
            continue
        m, b, r = report["models"]["model"], report["models"]["baseline"], report["ratios"]
        resize = report["conditions"].get("loss_resize")
        lines.append(
            f"{step:26s} {resize:6s} train SSA {m['train_step_ms']:7.1f} ms ({m['train_images_per_s']:6.1f} img/s)"
            f"  baseline {b['train_step_ms']:7.1f} ms  ratio {r['train_step_ms']:.3f}x"
            f" | latency b1 SSA {m['inference_latency_ms']:6.2f} ms  baseline {b['inference_latency_ms']:6.2f} ms"
            f"  ratio {r['inference_latency_ms']:.3f}x"
        )  # fmt: skip
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="*", default=list(DEFAULT_STEPS), help="default: " + " ".join(DEFAULT_STEPS))
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all steps (device calls: 600 at most)")
    parser.add_argument("--min-step", type=float, default=60.0, help="skip a step when fewer seconds remain")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--loss-resize", choices=("auto", "matmul", "banded", "gather"), default="auto")
    parser.add_argument("--compile-loss", action="store_true",
                        help="PyTorch steps: train.compile_loss=true (the loss terms through torch.compile)")  # fmt: skip
    args = parser.parse_args(argv)
    for step in args.steps:
        parse_step(step)
    deadline = time.monotonic() + args.budget
    out = os.environ.get("OUT") or "gpu_out"
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "gpu_issue7.log")
    with open(log_path, "a") as log:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
                             capture_output=True, text=True, check=False) if shutil.which("nvidia-smi") else None  # fmt: skip
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}  steps {' '.join(args.steps)}\n")
        log.write(smi.stdout if smi else "nvidia-smi: not found\n")
        log.flush()
        for step in args.steps:
            left = deadline - time.monotonic()
            if left < args.min_step:
                print(f"[{step}] skipped: {left:.0f} s left", flush=True)
                log.write(f"=== {step}: skipped, {left:.0f} s left\n")
                continue
            backend, _, command = command_for(step, args, out)
            env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}
            log.write(f"=== {step}: {' '.join(command)}\n")
            log.flush()
            print(f"[{step}] running (at most {left:.0f} s)", flush=True)
            start = time.monotonic()
            try:
                done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=left, check=False)
                status = f"exit {done.returncode}"
            except subprocess.TimeoutExpired:
                status = "stopped at the budget"
            elapsed = time.monotonic() - start
            log.write(f"=== {step}: {status} after {elapsed:.0f} s\n")
            log.flush()
            print(f"[{step}] {status} after {elapsed:.0f} s", flush=True)
    print("\n".join(summary_lines(out, args.steps)))


if __name__ == "__main__":
    main()
