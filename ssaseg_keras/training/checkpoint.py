"""Training checkpoints: model + optimizer + iteration + random-generator state, written atomically.

A checkpoint is a folder `iter_0000800/` in `<work_dir>/checkpoints/` holding
    variables.npz   every model variable (weights, BatchNorm statistics, random-generator states),
                    by index, with their paths (checked on load)
    optimizer.npz   every optimizer variable (iteration counter, Adam moments, loss scale, ...)
    state.json      iteration, best mIoU so far, backend, precision, time
    recipe.yaml     the resolved recipe the model was built from
It is written into a hidden temporary folder and renamed into place, so a run killed at any moment
leaves either a whole checkpoint or none; temporary leftovers are never picked and are cleaned up.
NumPy arrays are backend-neutral: a checkpoint written on one backend resumes on the others.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time

import numpy as np
import yaml

from ssaseg_keras.utils.errors import CheckpointError

CHECKPOINT_PATTERN = re.compile(r"^iter_(\d{7,})$")
BEST_NAME = "best"


def _array(variable):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable.value))


def model_variables(model):
    """The model's variables that a checkpoint holds, in a fixed order (metrics excluded)."""
    metric_ids = {id(v) for metric in model.metrics for v in metric.variables}
    return [v for v in model.variables if id(v) not in metric_ids]


def _write_arrays(path, variables):
    arrays = {f"v{i:05d}": _array(v) for i, v in enumerate(variables)}
    arrays["__paths__"] = np.array([v.path for v in variables], dtype=object)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _read_arrays(path, variables, what):
    try:
        with np.load(path, allow_pickle=True) as data:
            paths = list(data["__paths__"])
            values = [data[f"v{i:05d}"] for i in range(len(paths))]
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path} is unreadable or corrupt ({error}); use another checkpoint") from error
    if len(paths) != len(variables):
        raise CheckpointError(
            f"{path} holds {len(paths)} {what} variables but the model has {len(variables)}: "
            "the checkpoint was written for another recipe (model section)"
        )
    for saved_path, value, variable in zip(paths, values, variables):
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"{path}: {what} variable {saved_path} has shape {value.shape}, the model's "
                f"{variable.path} has {tuple(variable.shape)}: the checkpoint does not fit this recipe"
            )
    return values


def save_checkpoint(work_dir, model, optimizer, iteration, recipe, extra_state=None, keep=3, best=False):
    """Write `<work_dir>/checkpoints/iter_<iteration>/` atomically; prune to the last `keep`.

    With best=True the checkpoint is (also) copied, atomically, to `checkpoints/best/`.
    Returns the checkpoint folder.
    """
    import keras

    root = os.path.join(work_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"iter_{int(iteration):07d}")
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    try:
        _write_arrays(os.path.join(tmp, "variables.npz"), model_variables(model))
        if optimizer is not None and optimizer.built:
            _write_arrays(os.path.join(tmp, "optimizer.npz"), list(optimizer.variables))
        with open(os.path.join(tmp, "recipe.yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(recipe, handle, sort_keys=False)
        state = {
            "iteration": int(iteration),
            "backend": keras.backend.backend(),
            "precision": keras.config.dtype_policy().name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(extra_state or {}),
        }
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if best:
        best_tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
        shutil.rmtree(best_tmp)
        shutil.copytree(final, best_tmp)
        _replace_dir(best_tmp, os.path.join(root, BEST_NAME))
    prune_checkpoints(root, keep)
    return final


def _replace_dir(src, dst):
    """Rename src to dst, replacing an existing dst (the old one is removed after the rename)."""
    if os.path.exists(dst):
        old = dst + f".old-{os.getpid()}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def list_checkpoints(root):
    """[(iteration, folder)] of complete checkpoints in `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = CHECKPOINT_PATTERN.match(name)
        folder = os.path.join(root, name)
        if match and os.path.isfile(os.path.join(folder, "state.json")):
            found.append((int(match.group(1)), folder))
    return sorted(found)


def prune_checkpoints(root, keep):
    """Keep the newest `keep` iteration checkpoints (and `best/`); remove temporary leftovers."""
    for name in os.listdir(root):
        if name.startswith(".tmp-") or ".old-" in name:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    for _, folder in list_checkpoints(root)[: -int(keep)] if keep else []:
        shutil.rmtree(folder, ignore_errors=True)


def latest_checkpoint(work_dir):
    """The newest complete checkpoint folder of a work dir, or None."""
    found = list_checkpoints(os.path.join(work_dir, "checkpoints"))
    return found[-1][1] if found else None


def resolve_checkpoint(path):
    """A checkpoint folder from a checkpoint folder or a work dir (its latest checkpoint).

    Raises CheckpointError with what was looked for when there is none.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "state.json")):
        return path
    if os.path.isdir(os.path.join(path, "checkpoints")):
        latest = latest_checkpoint(path)
        if latest:
            return latest
        raise CheckpointError(f"work dir {path!r} has no complete checkpoint yet (checkpoints/iter_*)")
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    raise CheckpointError(
        f"{path!r} is neither a checkpoint folder (with state.json) nor a work dir (with checkpoints/)"
    )


def read_state(checkpoint):
    try:
        with open(os.path.join(checkpoint, "state.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{checkpoint}/state.json is unreadable ({error})") from error


def read_recipe(checkpoint):
    """The resolved recipe saved with a checkpoint (validated again)."""
    from ssaseg_keras.recipes import validate_recipe

    path = os.path.join(checkpoint, "recipe.yaml")
    try:
        with open(path, encoding="utf-8") as handle:
            return validate_recipe(yaml.safe_load(handle))
    except OSError as error:
        raise CheckpointError(f"{path} is missing or unreadable ({error})") from error


def restore_model(checkpoint, model):
    """Assign a checkpoint's model variables (weights, statistics, generator states)."""
    variables = model_variables(model)
    values = _read_arrays(os.path.join(checkpoint, "variables.npz"), variables, "model")
    for variable, value in zip(variables, values):
        variable.assign(value)


def restore_optimizer(checkpoint, optimizer, trainable_variables):
    """Build the optimizer on the model's variables and assign its saved state."""
    path = os.path.join(checkpoint, "optimizer.npz")
    if not os.path.isfile(path):
        raise CheckpointError(f"{checkpoint} has no optimizer state (optimizer.npz); it cannot be resumed")
    if not optimizer.built:
        optimizer.build(trainable_variables)
    variables = list(optimizer.variables)
    values = _read_arrays(path, variables, "optimizer")
    for variable, value in zip(variables, values):
        variable.assign(value)
