"""Training: schedule, parameter groups, the optimizer step, fit/evaluate and loss decrease, checkpoints, resume,
SIGKILL recovery, cross-backend checkpoints, mixed precision and the CLI's user errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml
from conftest import BACKEND
from models_helpers import TINY_BACKBONE, TINY_HEAD

from ssaseg_keras.recipes import validate_recipe
from ssaseg_keras.training import checkpoint as ckpt
from ssaseg_keras.training.optimizer import (
    GroupedAdamW,
    GroupedSGD,
    WarmupPolyDecay,
    parameter_groups,
)
from ssaseg_keras.training.trainer import build_training_model, train
from ssaseg_keras.utils.errors import CheckpointError, UserError


def tiny_recipe(**train_overrides):
    """A tiny SegNeXt + SSA on 32x32 synthetic images with 5 classes: seconds per step on a CPU."""
    recipe = {
        "name": "tiny",
        "model": {
            "family": "segnext", "size": "t", "ssa": True, "seed": 3,
            "backbone": dict(TINY_BACKBONE), "head": dict(TINY_HEAD),
        },
        "data": {
            "source": "synthetic", "num_classes": 5, "image_size": [32, 32], "crop_size": [32, 32],
            "num_images": 8, "num_val_images": 2,
        },
        "train": {
            "max_iters": 4, "batch_size": 2, "lr": 1e-3, "warmup_iters": 1, "log_interval": 2,
            "eval_interval": 4, "checkpoint_interval": 2, "keep_checkpoints": 5, **train_overrides,
        },
    }  # fmt: skip
    return validate_recipe(recipe)


def run_cli(*args, cwd=None, backend=BACKEND, timeout=600):
    env = {**os.environ, "KERAS_BACKEND": backend}
    code = "import sys; from ssaseg_keras_cli.main import main; sys.argv[0] = 'ssaseg-keras'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def run_cli_commands(*commands, cwd=None, backend=BACKEND, timeout=900):
    """Several CLI commands (argument lists) one after another in one process on `backend`: one
    start-up (imports, the backend's runtime) instead of one per command. Stops at the first that fails."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    code = (
        "import json, sys; from ssaseg_keras_cli.main import main; sys.argv[0] = 'ssaseg-keras'\n"
        "for arguments in json.loads(sys.argv[1]): main(arguments)"
    )
    arguments = json.dumps([list(command) for command in commands])
    return subprocess.run([sys.executable, "-c", code, arguments], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def quiet(_message):
    pass


# ------------------------------------------------------------------ schedule and optimizer
def test_schedule_is_mmcv_linear_warmup_times_poly():
    schedule = WarmupPolyDecay(6e-5, max_iters=80000, warmup_iters=1500, warmup_ratio=1e-6, power=1.0)

    def lr(i):
        return float(keras.ops.convert_to_numpy(schedule(i)))

    assert lr(0) == pytest.approx(6e-5 * 1e-6, rel=1e-4)
    assert lr(750) == pytest.approx(6e-5 * (1 - 750 / 80000) * (1 - 0.5 * (1 - 1e-6)), rel=1e-5)
    assert lr(1500) == pytest.approx(6e-5 * (1 - 1500 / 80000), rel=1e-5)
    assert lr(40000) == pytest.approx(3e-5, rel=1e-5)
    assert lr(80000) == 0.0
    accumulated = WarmupPolyDecay(1.0, max_iters=10, accumulate_steps=4)
    assert float(keras.ops.convert_to_numpy(accumulated(9))) == pytest.approx(0.8)  # update 2 of 10


def test_parameter_groups_follow_the_reference_names():
    model = build_training_model(tiny_recipe(), load_pretrained=False)
    from ssaseg_keras.convert import reference_mapping

    by_name = {name: variable for name, variable, _ in reference_mapping(model)}
    groups = parameter_groups(model, head_lr_mult=10.0)

    def group(name):
        return groups[by_name[name].path]

    assert group("backbone.block1.0.norm1.weight") == (1.0, 0.0)  # BN in a block: "norm"
    assert group("backbone.norm1.weight") == (1.0, 0.0)  # stage LayerNorm
    assert group("backbone.patch_embed1.proj.1.weight") == (1.0, 1.0)  # stem BN: no "norm" in its name
    assert group("backbone.block1.0.layer_scale_1") == (1.0, 1.0)
    assert group("decode_head.squeeze.gn.weight") == (10.0, 1.0)  # "head" wins; GN is named gn
    assert group("decode_head.center_pos.weight") == (10.0, 1.0)
    assert group("decode_head.conv_seg.weight") == (10.0, 1.0)
    assert len(groups) == len(model.trainable_variables)


def test_grouped_adamw_matches_torch_adamw_with_param_groups():
    import torch

    rng = np.random.default_rng(0)
    init = [rng.normal(size=(3, 4)).astype("float32") for _ in range(3)]
    grads = [[rng.normal(size=(3, 4)).astype("float32") for _ in range(3)] for _ in range(3)]
    mults = [(1.0, 1.0), (10.0, 1.0), (1.0, 0.0)]

    variables = [keras.Variable(v, name=f"w{i}") for i, v in enumerate(init)]
    optimizer = GroupedAdamW(
        groups={v.path: m for v, m in zip(variables, mults)},
        learning_rate=1e-2, weight_decay=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
    )  # fmt: skip
    for step in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)

    params = [torch.nn.Parameter(torch.tensor(v)) for v in init]
    reference = torch.optim.AdamW(
        [{"params": [p], "lr": 1e-2 * m[0], "weight_decay": 0.1 * m[1]} for p, m in zip(params, mults)],
        betas=(0.9, 0.999), eps=1e-8,
    )  # fmt: skip
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.tensor(g)
        reference.step()
    # Keras adds epsilon to sqrt(v) before bias correction, torch after: a difference of order eps.
    for ours, theirs in zip(variables, params):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), theirs.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_grouped_sgd_matches_torch_sgd_under_the_poly_schedule():
    """torch's SGD (momentum, coupled L2 decay) with mmcv's group multipliers, the learning rate
    changing every step as mmseg's PolyLR(power 0.9, eta_min 1e-4) changes it."""
    import torch

    rng = np.random.default_rng(1)
    init = [rng.normal(size=(3, 4)).astype("float32") for _ in range(3)]
    grads = [[rng.normal(size=(3, 4)).astype("float32") for _ in range(3)] for _ in range(4)]
    mults = [(1.0, 1.0), (10.0, 1.0), (1.0, 0.0)]
    schedule = WarmupPolyDecay(base_lr=0.01, max_iters=5, power=0.9, min_lr=1e-4)

    variables = [keras.Variable(v, name=f"w{i}") for i, v in enumerate(init)]
    optimizer = GroupedSGD(
        groups={v.path: m for v, m in zip(variables, mults)}, learning_rate=schedule, momentum=0.9, weight_decay=5e-4
    )
    for step in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)

    params = [torch.nn.Parameter(torch.tensor(v)) for v in init]
    reference = torch.optim.SGD(
        [{"params": [p], "lr": 0.01 * m[0], "weight_decay": 5e-4 * m[1]} for p, m in zip(params, mults)],
        momentum=0.9,
    )
    for index, step in enumerate(grads):
        lr = float(keras.ops.convert_to_numpy(schedule(index)))
        assert lr == pytest.approx((0.01 - 1e-4) * (1 - index / 5) ** 0.9 + 1e-4, rel=1e-6)
        for group, m in zip(reference.param_groups, mults):
            group["lr"] = lr * m[0]
        for p, g in zip(params, step):
            p.grad = torch.tensor(g)
        reference.step()
    for ours, theirs in zip(variables, params):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), theirs.detach().numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(keras.ops.convert_to_numpy(variables[1]), init[1])  # it moved


def test_an_sgd_recipe_builds_grouped_sgd_without_custom_keys():
    recipe = tiny_recipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, custom_keys={}, warmup_iters=0)
    model = build_training_model(recipe, load_pretrained=False)
    optimizer = model.optimizer
    assert isinstance(optimizer, GroupedSGD) and optimizer.momentum == 0.9 and optimizer.coupled_weight_decay == 5e-4
    assert set(optimizer.groups.values()) == {(1.0, 1.0)}  # mmcv without paramwise_cfg: every parameter alike
    with pytest.raises(UserError, match="train.momentum: applies to train.optimizer: sgd only"):
        tiny_recipe(momentum=0.9)


def test_grouped_adamw_updates_a_group_at_once_on_torch(monkeypatch):
    """PyTorch runs Keras' foreach update per group, never the per-variable `update_step` (its eager
    ops made `apply` 5-9x slower on CPU, see BENCHMARKS.md); the result stays torch's AdamW (test above)."""
    if BACKEND != "torch":
        pytest.skip("backend: JAX and TensorFlow compile the per-variable update")
    variables = [keras.Variable(np.ones((2, 3), "float32"), name=f"w{i}") for i in range(4)]
    groups = {v.path: (10.0, 0.0) if i == 0 else (1.0, 1.0) for i, v in enumerate(variables)}
    optimizer = GroupedAdamW(groups=groups, learning_rate=1e-2, weight_decay=0.1)
    calls = []
    monkeypatch.setattr(GroupedAdamW, "update_step", lambda self, *a: calls.append(a))
    optimizer.apply([keras.ops.ones((2, 3))] * 4, variables)
    assert calls == []
    assert all(float(keras.ops.max(v)) < 1.0 for v in variables)  # every variable did move


def test_grouped_adamw_refuses_variables_without_a_group():
    variables = [keras.Variable(np.ones((2,), "float32"), name=f"v{i}") for i in range(2)]
    optimizer = GroupedAdamW(groups={variables[0].path: (10.0, 0.0)}, learning_rate=1e-2)
    with pytest.raises(ValueError, match="1 variables have no group"):
        optimizer.build(variables)


# ------------------------------------------------------------------ training
@pytest.mark.slow
def test_fit_reports_every_term_the_loss_falls_and_evaluate_runs():
    """The recipe's training model (GroupedAdamW, its schedule) under plain `fit` / `evaluate`: every
    loss term is logged, and the loss on one fixed batch falls. (Keras compiles one training step for
    `fit` and `train_on_batch` alike, so this also covers the trainer's steps.) With
    `train.compile_loss`: on PyTorch the image-size loss terms train through torch.compile here."""
    from ssaseg_keras.losses import LOSS_TERMS

    recipe = tiny_recipe(lr=2e-3, warmup_iters=0, max_iters=100, compile_loss=True)
    model = build_training_model(recipe, load_pretrained=False)
    assert model.compile_pixel_losses is True
    from ssaseg_keras.losses.ssa import pixel_loss_terms
    from ssaseg_keras.ops import compile as compile_module
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    labels = np.zeros((2, 32, 32), "int32")
    labels[:, :, 16:] = 1
    labels[:, 8:14, 4:10] = 3
    labels[1, :4] = 255
    images[..., 0] += 2.0 * (labels == 1)
    converter = model.preprocessor.image_converter
    raw = images * np.asarray(converter.std, "float32") + np.asarray(converter.mean, "float32")  # 0-255 RGB
    # The task's `fit` takes raw images: its preprocessor normalises them back to `images`.
    traces = []
    train_step = model.train_step
    model.train_step = lambda *args: (traces.append(1), train_step(*args))[1]  # JAX: (state, data)
    history = model.fit(raw, labels, batch_size=2, epochs=8, verbose=0).history
    # Compiled once: on TensorFlow the optimizer is built before the first trace (Keras would build it
    # inside, and tf.function would trace the whole step again). PyTorch runs the Python step each time.
    assert len(traces) == (8 if BACKEND == "torch" else 1), traces
    for name in ("loss", *LOSS_TERMS):
        assert len(history[name]) == 8 and np.isfinite(history[name]).all(), name
    losses = history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert (pixel_loss_terms in compile_module._compiled) == (BACKEND == "torch")  # the flag reached the loss
    # Keras' `evaluate` (the task's `evaluate_loss`, on preprocessed images) runs the inference
    # model: only `main_ce` is computed, so only it is reported.
    result = model.evaluate_loss(images, labels, verbose=0, return_dict=True)
    assert set(result) == {"loss", "main_ce"} and result["main_ce"] > 0 and result["loss"] == pytest.approx(result["main_ce"])
    assert model.test_on_batch(images, labels, return_dict=True).keys() == {"loss", "main_ce"}
    with pytest.raises(UserError, match="takes no sample_weight"):
        model.fit(raw, labels, sample_weight=np.ones((2, 32, 32), "float32"), epochs=1, verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_stays_finite(precision):
    """Each backend trains in the precision its GPU runs use (BENCHMARKS.md): bfloat16 on JAX, float16
    with Keras' loss scaling on TensorFlow and PyTorch. The policy code is shared; each training
    compile costs CI time."""
    if precision != ("mixed_bfloat16" if BACKEND == "jax" else "mixed_float16"):
        pytest.skip(f"backend: {BACKEND} trains in the other mixed precision here")
    from ssaseg_keras.training.trainer import set_precision

    try:
        set_precision(precision)
        model = build_training_model(tiny_recipe(warmup_iters=0), load_pretrained=False)
        images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
        labels = np.random.default_rng(1).integers(0, 5, size=(2, 32, 32)).astype("int32")
        logs = [model.train_on_batch(images, labels, return_dict=True) for _ in range(2)]
    finally:
        set_precision("float32")
    assert all(np.isfinite(float(v)) for log in logs for v in log.values()), logs
    assert set(logs[-1]) >= {"loss", "main_ce", "spatial_distill"}


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """(work dir, summary) of one 4-iteration tiny run (checkpoints at 2 and 4), shared by the tests
    of the `trained_tiny` xdist group: every `train` call compiles a new training step."""
    work_dir = tmp_path_factory.mktemp("trained") / "wd"
    return work_dir, train(tiny_recipe(), str(work_dir), echo=quiet, load_pretrained=False)


@pytest.mark.slow
@pytest.mark.xdist_group("trained_tiny")
def test_train_writes_checkpoints_logs_and_evaluates(trained_tiny):
    tmp_path, summary = trained_tiny
    assert summary["iteration"] == 4
    assert [it for it, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    assert (tmp_path / "checkpoints" / "best" / "state.json").is_file()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["iteration"] for r in train_records] == [2, 4]
    assert all(np.isfinite(r[term]) for r in train_records for term in ("main_ce", "response_distill", "lr"))
    evals = [r for r in records if "val/mIoU" in r]
    assert len(evals) == 1 and 0.0 <= evals[0]["val/mIoU"] <= 100.0
    assert summary["best_miou"] == pytest.approx(evals[0]["val/mIoU"])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
    saved = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert saved["train"]["max_iters"] == 4


@pytest.mark.xdist_group("trained_tiny")
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, trained_tiny):
    once = trained_tiny[0]
    resumed = tmp_path / "resumed"
    shutil.copytree(once / "checkpoints" / "iter_0000002", resumed / "checkpoints" / "iter_0000002")
    messages = []
    summary = train(tiny_recipe(), str(resumed), resume=True, echo=messages.append, load_pretrained=False)
    assert summary["iteration"] == 4
    assert any("resumed from" in m and "iteration 2" in m for m in messages)
    assert any(m.startswith("parameter groups (mmcv rule on the reference names") for m in messages)
    assert any(m.strip().startswith("lr x10 decay x1: ") for m in messages)
    for name in ("variables.npz", "optimizer.npz"):
        with np.load(once / "checkpoints" / "iter_0000004" / name, allow_pickle=False) as a, np.load(
            resumed / "checkpoints" / "iter_0000004" / name, allow_pickle=False
        ) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


# ------------------------------------------------------------------ checkpoint format
@pytest.fixture(scope="module")
def tiny_model():
    """A tiny training model with a built optimizer (what `save_checkpoint` writes)."""
    model = build_training_model(tiny_recipe(), load_pretrained=False)
    model.optimizer.build(model.trainable_variables)
    return model


def _set_distinct_values(model):
    """Every variable a different value, so a swap between same-shaped variables shows."""
    for index, variable in enumerate(model.variables):
        if "float" in str(variable.dtype):
            variable.assign(np.full(variable.shape, 0.25 + index, "float32"))


def _values(keyed):
    return {key: np.array(keras.ops.convert_to_numpy(v.value)) for key, v in keyed.items()}


@pytest.mark.xdist_group("tiny_model")
def test_checkpoints_hold_plain_arrays_keyed_by_variable(tmp_path, tiny_model):
    folder = ckpt.save_checkpoint(str(tmp_path), tiny_model, tiny_model.optimizer, 2, tiny_recipe())
    with np.load(os.path.join(folder, "variables.npz"), allow_pickle=False) as data:
        assert {"backbone/block1_0/norm1/gamma", "classifier/conv_seg/kernel", "decode_head/hamburger/ham_in/kernel"} <= set(data.files)
        assert all(data[key].dtype.kind in "fiub" for key in data.files)
        assert len(data.files) == len(ckpt.model_variables(tiny_model))
    with np.load(os.path.join(folder, "optimizer.npz"), allow_pickle=False) as data:
        assert {"iteration", "slots/classifier/conv_seg/kernel/momentum", "slots/classifier/conv_seg/kernel/velocity"} <= set(data.files)
    assert json.loads(open(os.path.join(folder, "state.json")).read())["format"] == ckpt.FORMAT_VERSION


@pytest.mark.xdist_group("tiny_model")
def test_restore_matches_by_key_whatever_the_order_and_process_names(tmp_path, tiny_model):
    """Keys name a variable by its place in the model, not by Keras' process-wide auto names (a model
    built after others gets other `variable.path`s) nor by position in the file."""
    _set_distinct_values(tiny_model)
    folder = ckpt.save_checkpoint(str(tmp_path), tiny_model, tiny_model.optimizer, 2, tiny_recipe())
    expected = _values(ckpt.model_variables(tiny_model))
    path = os.path.join(folder, "variables.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in reversed(data.files)}  # same keys, opposite order
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    keras.layers.Dense(2).build((None, 3))  # shifts the auto-generated names of what follows
    other = build_training_model(tiny_recipe(), load_pretrained=False)
    assert [v.path for v in other.variables] != [v.path for v in tiny_model.variables]
    ckpt.restore_model(folder, other)
    restored = _values(ckpt.model_variables(other))
    assert restored.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(restored[key], expected[key], err_msg=key)
    ckpt.restore_optimizer(folder, other.optimizer, other)
    np.testing.assert_array_equal(
        _values(ckpt.optimizer_variables(other.optimizer, other))["slots/classifier/conv_seg/kernel/momentum"],
        _values(ckpt.optimizer_variables(tiny_model.optimizer, tiny_model))["slots/classifier/conv_seg/kernel/momentum"],
    )


@pytest.mark.xdist_group("tiny_model")
def test_a_checkpoint_of_another_model_names_what_does_not_fit(tmp_path, tiny_model):
    folder = ckpt.save_checkpoint(str(tmp_path), tiny_model, tiny_model.optimizer, 2, tiny_recipe())
    recipe = tiny_recipe()
    recipe["model"] = {**recipe["model"], "ssa": False, "num_classes": 6}
    from ssaseg_keras.models import build_segmentor

    other = build_segmentor(recipe["model"])
    with pytest.raises(CheckpointError) as error:
        ckpt.restore_model(folder, other)
    message = str(error.value)
    assert "17 arrays of the file have no place in the model: classifier/center_pos," in message
    assert "another shape: classifier/conv_seg/kernel (32, 5) (the model's: (32, 6))" in message


@pytest.mark.xdist_group("tiny_model")
def test_checkpoint_files_never_unpickle(tmp_path, tiny_model):
    """A work dir someone sent runs no code: an object array is refused, not loaded."""
    import builtins

    class Payload:
        def __reduce__(self):
            return (exec, ("import builtins; builtins.SSASEG_PWNED = True",))

    folder = ckpt.save_checkpoint(str(tmp_path), tiny_model, tiny_model.optimizer, 2, tiny_recipe())
    path = os.path.join(folder, "variables.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["classifier/conv_seg/kernel"] = np.array([Payload()], dtype=object)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        ckpt.restore_model(folder, tiny_model)
    assert not hasattr(builtins, "SSASEG_PWNED")
    with open(path, "wb") as handle:
        handle.write(b"not a zip file")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        ckpt.restore_model(folder, tiny_model)


@pytest.mark.xdist_group("tiny_model")
def test_a_0_1_checkpoint_is_refused_with_the_fix_and_upgrades(tmp_path, tiny_model, capsys):
    """The 0.1 format (positional `v00000` arrays, pickled `__paths__`) gets one line naming
    `ssaseg-keras upgrade-checkpoint`, which rewrites it without unpickling anything."""
    from ssaseg_keras_cli.main import main

    _set_distinct_values(tiny_model)
    folder = ckpt.save_checkpoint(str(tmp_path), tiny_model, tiny_model.optimizer, 2, tiny_recipe())
    metric_ids = {id(v) for m in tiny_model.metrics for v in m.variables}
    for name, variables in (
        ("variables.npz", [v for v in tiny_model.variables if id(v) not in metric_ids]),
        ("optimizer.npz", list(tiny_model.optimizer.variables)),
    ):  # exactly as 0.1 wrote them
        arrays = {f"v{i:05d}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(variables)}
        arrays["__paths__"] = np.array([v.path for v in variables], dtype=object)
        with open(os.path.join(folder, name), "wb") as handle:
            np.savez(handle, **arrays)
    with pytest.raises(CheckpointError, match="upgrade-checkpoint"):
        ckpt.restore_model(folder, tiny_model)
    expected = _values(ckpt.model_variables(tiny_model))
    assert main(["upgrade-checkpoint", str(tmp_path)]) == 0
    assert "upgraded" in capsys.readouterr().out
    assert not ckpt.is_legacy_checkpoint(folder)
    other = build_training_model(tiny_recipe(), load_pretrained=False)
    ckpt.restore_model(folder, other)
    ckpt.restore_optimizer(folder, other.optimizer, other)
    restored = _values(ckpt.model_variables(other))
    for key in expected:
        np.testing.assert_array_equal(restored[key], expected[key], err_msg=key)


def test_incomplete_checkpoints_are_never_picked(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "iter_0000002").mkdir(parents=True)
    (root / "iter_0000002" / "state.json").write_text('{"iteration": 2}')
    (root / "iter_0000004").mkdir()  # killed before state.json: incomplete
    (root / ".tmp-abc123").mkdir()  # a temporary folder being written
    assert ckpt.latest_checkpoint(str(tmp_path)) == str(root / "iter_0000002")
    ckpt.prune_checkpoints(str(root), keep=3)
    assert not (root / ".tmp-abc123").exists()


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "torch", reason="backend: one backend is enough for the SIGKILL scenario (slow)")
def test_a_run_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    recipe = tiny_recipe(max_iters=8, eval_interval=8)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    code = "import sys; from ssaseg_keras_cli.main import main; sys.argv[0] = 'ssaseg-keras'; main()"
    args = [sys.executable, "-c", code, "train", "tiny.yaml", "--work-dir", "wd"]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline and not ckpt.list_checkpoints(tmp_path / "wd" / "checkpoints"):
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = ckpt.list_checkpoints(tmp_path / "wd" / "checkpoints")
    assert done_before and done_before[-1][0] < 8
    done = run_cli("train", "tiny.yaml", "--work-dir", "wd", "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout and "done: iteration 8" in done.stdout


NEXT_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}


@pytest.mark.xdist_group("trained_tiny")
def test_checkpoint_resumes_evaluates_and_predicts_on_another_backend(tmp_path, trained_tiny):
    """Each backend's env writes a checkpoint that the next backend resumes, evaluates and predicts
    with (tensorflow -> jax -> torch -> tensorflow), so every pair direction is exercised in tox."""
    from PIL import Image

    recipe = tiny_recipe()
    shutil.copytree(trained_tiny[0], tmp_path / "wd")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**recipe, "train": {**recipe["train"], "max_iters": 6}}))
    other = NEXT_BACKEND[BACKEND]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    done = run_cli_commands(
        ("train", "tiny.yaml", "--work-dir", "wd", "--resume"),
        ("evaluate", "tiny.yaml", "--checkpoint", "wd", "--json", "eval.json"),
        ("predict", "wd", "a.png", "--output", "out", "--logits", "--overlay"),
        cwd=tmp_path,
        backend=other,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"trained on {BACKEND}" in done.stdout and "done: iteration 6" in done.stdout
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["mode"] == "whole" and results["num_images"] == 2 and 0 <= results["mIoU"] <= 100
    labels = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert labels.shape == (40, 56) and labels.max() < 5
    assert np.load(tmp_path / "out" / "a_logits.npy").shape == (40, 56, 5)
    overlay = np.asarray(Image.open(tmp_path / "out" / "a_overlay.png"))
    assert overlay.shape[1] > 56 and overlay.shape[0] >= 40  # the image and its legend


# ------------------------------------------------------------------ the CLI's user errors
BAD_RECIPE = "model: {family: segnext, size: t}\ndata: {source: synthetic}\ntrain: {max_iter: 10}\n"


@pytest.mark.parametrize(
    "args, expected",
    [
        (("train", "missing.yaml"), "does not exist"),
        (("train", "bad.yaml"), "train.max_iter: unknown key"),
        (("train", "bad.yaml", "--set", "train.lr"), "write it as key.sub=value"),
        (("evaluate", "bad.yaml", "--checkpoint", "nowhere"), "train.max_iter"),
        (("predict", "nowhere", "img.png", "--output", "out"), "does not exist"),
        (("evaluate", "quickstart", "--checkpoint", "nowhere", "--tta", "flop"), "--tta"),
        (("train", "quickstart", "--devices", "3"), "does not split evenly over train.devices=3"),
        (("train", "quickstart", "--devices", "two"), "--devices: must be auto or a number"),
    ],
)
def test_cli_user_mistakes_give_one_line_and_exit_code_2(args, expected, tmp_path, monkeypatch, capsys):
    """In-process through the console script's `main` (any other exception would fail the test with
    its traceback); `test_missing_recipe_exits_2_from_the_console_script` runs the real script."""
    from ssaseg_keras_cli.main import main

    (tmp_path / "bad.yaml").write_text(BAD_RECIPE)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1, err
