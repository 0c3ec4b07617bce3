"""Data-parallel training on each backend's engine (ssaseg_keras.training.distribute).

The two-device runs are real: JAX on 2 virtual CPU devices (`XLA_FLAGS`), TensorFlow's
MirroredStrategy on the CPU split into 2 logical devices, PyTorch DistributedDataParallel over 2
gloo processes under torchrun. Each is compared with a one-device run at the same global batch:
- JAX: a DataParallel step is one program over the global batch, so it must equal the plain
  one-device run (losses, weights, BatchNorm moving statistics).
- TensorFlow and PyTorch: each replica's loss is its part's (as the reference's DDP), with
  synchronised BatchNorm, so the one-device run computes exactly that (tests/distributed_run.py
  --emulate-replicas 2): the forward over the whole batch and the mean of the parts' losses.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKEND

from ssaseg_keras.data import build_dataset
from ssaseg_keras.utils.errors import RecipeError, UserError

HERE = pathlib.Path(__file__).parent
RUNNER = HERE / "distributed_run.py"
ITERATIONS = 3  # checkpoint and evaluation interval (tests/distributed_run.py)
MAX_ITERS = ITERATIONS + 1  # each run goes one step past the checkpoint the resume test starts from


def _env(**extra):
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    return env


def _run(command, env, timeout=900):
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=HERE.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


def _records(work_dir):
    lines = (pathlib.Path(work_dir) / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _arrays(work_dir):
    folder = pathlib.Path(work_dir) / "checkpoints" / f"iter_{ITERATIONS:07d}"
    with np.load(folder / "variables.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _two_device_command(work_dir):
    if BACKEND == "torch":
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
        assert torchrun, "torchrun (installed with torch) not found"
        return [torchrun, "--nproc-per-node", "2", "--master-port", "29517", str(RUNNER), str(work_dir), "--devices", "2"]
    return [sys.executable, str(RUNNER), str(work_dir), "--devices", "2"]


@pytest.fixture(scope="module")
def one_and_two_devices(tmp_path_factory):
    """(one-device work dir, two-device work dir, the two-device run's stdout): MAX_ITERS iterations
    each, checkpoints at ITERATIONS and MAX_ITERS."""
    root = tmp_path_factory.mktemp("distributed")
    one, two = root / "one", root / "two"
    env = _env()
    if BACKEND == "jax":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    emulate = [] if BACKEND == "jax" else ["--emulate-replicas", "2"]
    _run([sys.executable, str(RUNNER), str(one), "--devices", "1", "--max-iters", str(MAX_ITERS), *emulate], env)
    stdout = _run([*_two_device_command(two), "--max-iters", str(MAX_ITERS)], env)
    return one, two, stdout


@pytest.mark.slow
@pytest.mark.xdist_group("distributed")
def test_two_devices_train_like_one_at_the_same_global_batch(one_and_two_devices):
    one, two, stdout = one_and_two_devices
    summary = json.loads((two / "summary.json").read_text())
    assert summary["devices"] == 2 and summary["iteration"] == MAX_ITERS
    engine = {"jax": "DataParallel", "tensorflow": "MirroredStrategy", "torch": "DistributedDataParallel"}[BACKEND]
    assert engine in summary["engine"]
    assert "devices 2" in stdout and "batch 2 per device x 2 = global 4" in stdout, stdout

    train_one = [r for r in _records(one) if "loss" in r]
    train_two = [r for r in _records(two) if "loss" in r]
    assert [r["iteration"] for r in train_two] == list(range(1, MAX_ITERS + 1))
    for a, b in zip(train_one, train_two):
        for term in ("loss", "main_ce", "coarse_ce", "semantic_distill", "response_distill", "dice_refined"):
            assert b[term] == pytest.approx(a[term], rel=1e-4, abs=1e-6), (term, a, b)
    assert train_two[-1]["loss"] != pytest.approx(train_two[0]["loss"], rel=1e-3)  # it trained

    weights_one, weights_two = _arrays(one), _arrays(two)
    assert sorted(weights_one) == sorted(weights_two)
    statistics = [k for k in weights_one if k.endswith("moving_mean") or k.endswith("moving_variance")]
    assert len(statistics) >= 10
    # Adam divides by sqrt(v): an element whose gradient is near rounding noise may step by a
    # fraction of lr (1e-3) differently when the replicas' sums are added in another order. Bound:
    # a tenth of one step for any element, and 99.9% of all elements within 2e-5.
    close, total = 0, 0
    for key in weights_one:
        np.testing.assert_allclose(weights_two[key], weights_one[key], rtol=2e-4, atol=1e-4, err_msg=key)
        close += int(np.sum(np.abs(weights_two[key] - weights_one[key]) <= 2e-5 + 2e-4 * np.abs(weights_one[key])))
        total += weights_one[key].size
    assert close >= 0.999 * total, (close, total)
    # The statistics moved from their initial values (0 / 1): BatchNorm ran on the global batch.
    moved = [k for k in statistics if k.endswith("moving_mean") and np.abs(weights_two[k]).max() > 1e-3]
    assert moved, "no BatchNorm moving mean moved"

    val_one = [r for r in _records(one) if "val/mIoU" in r]
    val_two = [r for r in _records(two) if "val/mIoU" in r]
    assert [r["iteration"] for r in val_two] == [ITERATIONS, MAX_ITERS]
    for a, b in zip(val_one, val_two):
        assert b["val/mIoU"] == pytest.approx(a["val/mIoU"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.xdist_group("distributed")
def test_only_process_zero_writes_and_prints(one_and_two_devices):
    _, two, stdout = one_and_two_devices
    records = _records(two)
    assert len([r for r in records if "loss" in r]) == MAX_ITERS  # one line per iteration, not per process
    assert stdout.count(f"iter {MAX_ITERS}/{MAX_ITERS}") == 1, stdout
    assert stdout.count("parameter groups") == 1, stdout
    checkpoints = sorted(p.name for p in (two / "checkpoints").iterdir())
    assert f"iter_{ITERATIONS:07d}" in checkpoints and not [p for p in checkpoints if p.startswith(".tmp")]


@pytest.mark.slow
@pytest.mark.xdist_group("distributed")
def test_a_two_device_checkpoint_resumes_on_one_device(one_and_two_devices, tmp_path):
    """Checkpoints do not depend on the device count: the two-device run's checkpoint at ITERATIONS,
    resumed on one device, gives the next iteration of the uninterrupted one-device run (same data
    position, weights, optimizer state and schedule)."""
    one, two, _ = one_and_two_devices
    emulate = [] if BACKEND == "jax" else ["--emulate-replicas", "2"]
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"iter_{MAX_ITERS:07d}")
    stdout = _run([sys.executable, str(RUNNER), str(resumed), "--devices", "1", "--resume", "--max-iters", str(MAX_ITERS),
                   *emulate], _env())  # fmt: skip
    assert f"iteration {ITERATIONS}" in stdout and "resumed from" in stdout, stdout
    continued = [r for r in _records(resumed) if "loss" in r][-1]
    uninterrupted = [r for r in _records(one) if "loss" in r][-1]
    assert continued["iteration"] == uninterrupted["iteration"] == MAX_ITERS
    for term in ("loss", "main_ce", "semantic_distill", "response_distill", "lr"):
        assert continued[term] == pytest.approx(uninterrupted[term], rel=1e-4, abs=1e-6), (term, uninterrupted, continued)


# ------------------------------------------------------------------- data shards
SYNTHETIC = {
    "source": "synthetic", "num_classes": 5, "image_size": [32, 32], "crop_size": [24, 24],
    "num_images": 7, "num_val_images": 5,
}  # fmt: skip


def _batches(dataset, count):
    return [tuple(np.asarray(part) for part in batch) for batch, _ in zip(dataset.as_numpy_iterator(), range(count))]


@pytest.mark.parametrize("skip_batches", [0, 3])
def test_train_shards_together_are_the_single_process_batches(skip_batches):
    """Each process's rows of every global batch, by position before decoding: no image twice or
    missing in an epoch (7 images, batches of 4: the epochs' borders fall inside batches), and the
    augmentation of each image is the single-process one (seeded by the global position)."""
    full = _batches(build_dataset(SYNTHETIC, "train", batch_size=4, seed=5, skip_batches=skip_batches), 4)
    parts = [
        _batches(build_dataset(SYNTHETIC, "train", batch_size=2, seed=5, skip_batches=skip_batches, shard=(2, i)), 4)
        for i in range(2)
    ]  # fmt: skip
    for step, whole in enumerate(full):
        for k in range(2):  # images, labels
            np.testing.assert_array_equal(np.concatenate([parts[0][step][k], parts[1][step][k]]), whole[k])


def test_eval_shards_hold_every_image_once():
    def images(shard):
        return [b[0] for b in build_dataset(SYNTHETIC, "val", batch_size=1, shard=shard).as_numpy_iterator()]

    everything = images(None)
    first, second = images((2, 0)), images((2, 1))
    assert len(first) + len(second) == len(everything) == 5
    for position, image in enumerate(everything):
        shard, index = (first, position // 2) if position % 2 == 0 else (second, position // 2)
        np.testing.assert_array_equal(shard[index], image)


# ------------------------------------------------------------------- user errors
def test_a_global_batch_that_does_not_split_is_a_recipe_error():
    from ssaseg_keras.recipes import validate_recipe

    with pytest.raises(RecipeError, match=r"train.batch_size: 6 \(the global batch\) does not split evenly over train.devices=4"):
        validate_recipe({"model": {"family": "segnext", "size": "t"}, "data": SYNTHETIC, "train": {"batch_size": 6, "devices": 4}})
    with pytest.raises(RecipeError, match="train.devices: must be auto or a number"):
        validate_recipe({"model": {"family": "segnext", "size": "t"}, "data": SYNTHETIC, "train": {"devices": 0}})


@pytest.mark.skipif(BACKEND != "jax", reason="backend: JAX's device count")
def test_jax_more_devices_than_present_names_the_cpu_test_set_up():
    import jax

    from ssaseg_keras.training.distribute import setup_distribution

    present = len(jax.devices())
    with pytest.raises(UserError, match=f"asked for {present + 1} devices but {present} cpu") as error:
        setup_distribution(present + 1, 4 * (present + 1))
    assert "xla_force_host_platform_device_count" in str(error.value)
    plan = setup_distribution("auto", 4 * present)
    assert plan.devices == present and plan.per_process_batch == 4 * present


@pytest.mark.skipif(BACKEND != "tensorflow", reason="backend: TensorFlow's strategy")
def test_tensorflow_refuses_multi_host_and_devices_it_cannot_make():
    import tensorflow as tf

    from ssaseg_keras.training.distribute import setup_distribution

    with pytest.raises(UserError, match=r"keras-team/keras#20585.*JAX"):
        setup_distribution(1, 4, num_processes=2)
    tf.config.list_logical_devices()  # TensorFlow has started: the CPU can no longer be split
    present = len(tf.config.list_logical_devices("CPU"))
    with pytest.raises(UserError, match=f"asked for {present + 2} devices but {present} CPU"):
        setup_distribution(present + 2, 4 * (present + 2))


@pytest.mark.skipif(BACKEND != "torch", reason="backend: torchrun's processes")
def test_torch_several_devices_need_torchrun(monkeypatch):
    from ssaseg_keras.training.distribute import setup_distribution

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UserError, match="torchrun --nproc-per-node 2 -m ssaseg_keras_cli.main train"):
        setup_distribution(2, 4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="torchrun started 2 processes but --devices / train.devices asks for 3"):
        setup_distribution(3, 6)
    with pytest.raises(UserError, match="set up by torchrun"):
        setup_distribution("auto", 4, coordinator="localhost:1234", num_processes=2)


def test_multi_host_flags_without_a_process_count_are_refused(monkeypatch):
    """--coordinator / --process-id alone would otherwise be ignored (a one-host run)."""
    from ssaseg_keras.training.distribute import setup_distribution

    monkeypatch.delenv("KERAS_DISTRIBUTION_NUM_PROCESSES", raising=False)
    with pytest.raises(UserError, match="give --num-processes N"):
        setup_distribution(1, 4, coordinator="localhost:1234")
    with pytest.raises(UserError, match="give --num-processes N"):
        setup_distribution(1, 4, process_id=1)
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "two")
    with pytest.raises(UserError, match="KERAS_DISTRIBUTION_NUM_PROCESSES='two'"):
        setup_distribution(1, 4)


# ------------------------------------------------------------------- JAX multi-host
@pytest.mark.skipif(BACKEND != "jax", reason="backend: JAX multi-host")
@pytest.mark.skipif(os.environ.get("SSASEG_MULTIHOST_TESTS") != "1", reason="opt-in: SSASEG_MULTIHOST_TESTS=1 (two processes on localhost)")
def test_jax_two_hosts_on_localhost_train_like_one_device(tmp_path, one_and_two_devices):
    one, _, _ = one_and_two_devices
    hosts = tmp_path / "hosts"
    env = _env(JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    processes = [
        subprocess.Popen(
            [sys.executable, str(RUNNER), str(hosts), "--coordinator", "localhost:29531", "--num-processes", "2",
             "--process-id", str(i), "--devices", "auto"],
            env=env, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs[0][-3000:] + outputs[1][-3000:]
    assert "hosts/processes 2" in outputs[0] and "iter" not in outputs[1]
    for a, b in zip([r for r in _records(one) if "loss" in r], [r for r in _records(hosts) if "loss" in r]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    weights_one, weights_hosts = _arrays(one), _arrays(hosts)
    for key in weights_one:
        np.testing.assert_allclose(weights_hosts[key], weights_one[key], rtol=2e-4, atol=1e-4, err_msg=key)
