"""The benchmark: analytic GFLOPs against the paper, and the command end to end on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from ssaseg_keras.benchmark import count_macs, format_report, random_batch
from ssaseg_keras.benchmark.flops import nmf_macs
from ssaseg_keras.models import build_segmentor, inference_model

TINY = [
    "model.backbone.depths=[1,1,1,1]",
    "model.backbone.embed_dims=[16,32,64,64]",
    "model.head.channels=64",
    "model.head.ham_channels=64",
    "model.head.groups=8",
    "model.head.rank=4",
]


def run_cli(*args):
    code = (
        "import sys; from ssaseg_keras_cli.main import main; sys.argv[0] = 'ssaseg-keras'; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=1200
    )


def _params(model):  # counted here independently of the library's count_parameters
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


@pytest.mark.parametrize("ssa, paper", [(False, 6.2), (True, 6.3)])
def test_segnext_t_gflops_match_the_paper(ssa, paper):
    """SegNeXt-T, 150 classes, 512x512: the paper's 6.2 (baseline) / 6.3 (SSA) GFLOPs within 3%."""
    model = build_segmentor(
        {"family": "segnext", "size": "t", "num_classes": 150, "ssa": ssa},
        training=False,
    )
    macs = count_macs(model, (512, 512))
    assert abs(macs["paper"] / 1e9 - paper) / paper < 0.03, macs
    assert macs["total"] == macs["paper"] + macs["matmul"] + macs["resize"]
    assert sum(macs["by_part"].values()) == macs["paper"]
    # NMF: 16 products of N*C*R plus the small R x R ones (7 inference steps, N = 64*64, C = 256, R = 16).
    nmf = nmf_macs(1, 64 * 64, 256, 16, 7)
    expected_matmul = nmf + (3 * 64 * 64 * 150 * 256 if ssa else 0)
    assert macs["matmul"] == expected_matmul
    # Counting is exact and linear in the batch; the layers are restored afterwards.
    assert count_macs(model, (512, 512), batch=2)["conv_dense"] == 2 * macs["conv_dense"]
    assert "call" not in model.backbone.layers[1].__dict__


def test_random_batch_is_blob_labels_with_ignore():
    images, labels = random_batch(2, (64, 96), 7, seed=3)
    assert images.shape == (2, 64, 96, 3) and images.dtype == np.float32
    assert labels.shape == (2, 64, 96) and labels.dtype == np.int32
    values = set(np.unique(labels).tolist())
    assert values <= set(range(7)) | {255} and len(values - {255}) >= 2
    # Blobs: most horizontal neighbours agree.
    assert np.mean(labels[:, :, 1:] == labels[:, :, :-1]) > 0.8


@pytest.mark.slow
def test_benchmark_command_end_to_end(tmp_path):
    """Tiny SegNeXt + SSA and its baseline, 64x64, batch 1, 2 timed steps: real, consistent figures.
    The losses upsample with `train.loss_resize: gather` here (the default, matmul, trains everywhere
    else in the suite), so both methods run inside a compiled training step on every backend.

    Batch 1 lets the throughput measurement reuse the latency one's compiled function (fast CI)."""
    out = tmp_path / "bench" / "result.json"
    overrides = [arg for item in TINY for arg in ("--set", item)]
    done = run_cli(
        "benchmark", "recipes/quickstart.yaml", "--batch", "1", "--size", "64", "--iters", "2",
        "--warmup", "1", "--json", str(out), *overrides, "--set", "train.loss_resize=gather",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    report = json.loads(out.read_text())
    c = report["conditions"]
    assert (
        c["backend"] == keras.backend.backend() and c["batch"] == 1 and c["image_size"] == [64, 64]
    )
    assert c["num_classes"] == 21 and c["precision"] == "float32" and c["loss_resize"] == "gather"
    ssa, base = report["models"]["model"], report["models"]["baseline"]
    assert ssa["ssa"] and not base["ssa"]

    # Parameter counts equal those of the models themselves.
    from ssaseg_keras.recipes import load_recipe

    recipe = load_recipe("recipes/quickstart.yaml", TINY)
    trained = build_segmentor(recipe["model"], training=True)
    assert ssa["params_training"] == _params(trained)
    assert ssa["params_inference"] == _params(inference_model(trained))
    assert ssa["params_training"] > ssa["params_inference"] > base["params_inference"]
    plain = build_segmentor({**recipe["model"], "ssa": False})
    assert base["params_training"] == base["params_inference"] == _params(plain)
    assert ssa["macs"]["paper"] == count_macs(inference_model(trained), (64, 64))["paper"]

    for figures in (ssa, base):
        assert figures["gflops_total"] > figures["gflops"] > 0
        assert (
            len(figures["train_step_samples_ms"]) == 2 and min(figures["train_step_samples_ms"]) > 0
        )
        assert figures["train_step_ms"] == pytest.approx(
            float(np.median(figures["train_step_samples_ms"]))
        )
        assert figures["train_images_per_s"] == pytest.approx(1e3 / figures["train_step_ms"])
        assert figures["inference_latency_ms"] > 0 and figures["inference_images_per_s"] > 0
        assert np.isfinite(figures["train_loss"]) and figures["train_loss"] > 0
        assert figures["peak_train_memory_bytes"] is None or figures["peak_train_memory_bytes"] > 0
    ratios = report["ratios"]
    assert ratios["train_step_ms"] == pytest.approx(ssa["train_step_ms"] / base["train_step_ms"])
    assert ratios["params_inference"] == pytest.approx(
        ssa["params_inference"] / base["params_inference"]
    )
    assert ratios["gflops"] > 1.0

    # The printed table holds the same figures.
    assert format_report(report) in done.stdout and "loss upsampling gather" in done.stdout
    assert f"{ssa['params_training']:,}" in done.stdout and "ratio" in done.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "50"], "multiples of 32"),
        (["--size", "big"], "--size"),
        (["--batch", "0"], "--batch"),
        (["--iters", "0"], "--iters"),
        (["--precision", "float8"], "--precision"),
        (["--set", "model.size=zz"], "model.size"),
        (["--set", "model.nope=1"], "model.nope"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    """Checked before any model is built: in-process, one line on stderr, exit code 2."""
    from ssaseg_keras_cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["benchmark", "recipes/quickstart.yaml", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert keras.config.dtype_policy().name == "float32"


def test_missing_recipe_exits_2_from_the_console_script():
    done = run_cli("benchmark", "recipes/no_such_recipe.yaml")
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def _fake_report(backend, baseline_ms, ssa_ms):
    conditions = {
        "recipe": "quickstart", "family": "segnext", "size_name": "t", "num_classes": 21, "precision": "float32",
        "batch": 2, "image_size": [64, 64], "iters": 2, "warmup": 1, "device": "CPU", "backend": backend,
        "backend_version": "1.0", "keras_version": "3",
    }  # fmt: skip
    models = {
        "model": {"ssa": True, "train_step_ms": ssa_ms, "inference_latency_ms": 10.0, "peak_train_memory_bytes": None},
        "baseline": {"ssa": False, "train_step_ms": baseline_ms, "inference_latency_ms": 9.0},
    }
    ratios = {"train_step_ms": ssa_ms / baseline_ms, "inference_latency_ms": 10.0 / 9.0}
    return {"conditions": conditions, "models": models, "ratios": ratios}


def test_compare_backends_runs_each_backend_in_turn_and_joins_one_table():
    """One process per backend with KERAS_BACKEND set and --json; a failed backend is reported, the
    others still run; the table holds each backend's figures and its SSA step against the fastest."""
    from types import SimpleNamespace

    from ssaseg_keras.benchmark.compare import compare_backends, format_backend_comparison

    calls = []

    def fake_run(command, env, **kwargs):
        backend = env["KERAS_BACKEND"]
        calls.append((backend, command[command.index("benchmark") + 1 :]))
        if backend == "jax":
            return SimpleNamespace(returncode=2, stderr="Error: jax is not installed\n", stdout="")
        figures = {"tensorflow": (100.0, 125.0), "torch": (200.0, 300.0)}[backend]
        with open(command[command.index("--json") + 1], "w") as handle:
            json.dump(_fake_report(backend, *figures), handle)
        return SimpleNamespace(returncode=0, stderr="[SSA] training step ...\nnoise\n", stdout="")

    echoed = []
    results = compare_backends(["recipes/quickstart.yaml", "--iters", "2"], ("tensorflow", "jax", "torch"),
                               echo=echoed.append, run=fake_run)  # fmt: skip
    assert [backend for backend, _ in calls] == ["tensorflow", "jax", "torch"]
    assert all(arguments[:3] == ["recipes/quickstart.yaml", "--iters", "2"] for _, arguments in calls)
    assert results["jax"] == {"error": "Error: jax is not installed"}
    assert "[torch] [SSA] training step ..." in echoed and not any("noise" in line for line in echoed)
    table = format_backend_comparison(results)
    assert "1.250x" in table and "1.500x" in table  # SSA / baseline per backend
    assert "2.40x" in table  # torch's SSA step against TensorFlow's (300 / 125)
    assert "jax: not measured (Error: jax is not installed)" in table
