"""Training checkpoints: model + optimizer + iteration + random-generator state, written atomically.

A checkpoint is a folder `iter_0000800/` in `<work_dir>/checkpoints/` holding
    variables.npz   every model variable (weights, BatchNorm statistics, random-generator states),
                    one plain numeric array per variable, keyed by its place in the model
                    (`ssaseg_keras.utils.variables.variable_keys`, e.g. `backbone/block1_0/norm1/gamma`)
    optimizer.npz   every optimizer variable (iteration counter, Adam moments keyed by their
                    model variable, loss scale, ...), the same way
    state.json      format version, iteration, best mIoU so far, backend, precision, time
    recipe.yaml     the resolved recipe the model was built from
Nothing in a checkpoint is code: the arrays are read with `np.load(allow_pickle=False)` and the YAML
with `yaml.safe_load`, so resuming, evaluating or exporting a work dir someone sent runs none of its
contents. Loading matches arrays by key and names every missing, unexpected or mis-shaped one.
A checkpoint is written into a hidden temporary folder and renamed into place, so a run killed at
any moment leaves either a whole checkpoint or none; temporary leftovers are never picked and are
cleaned up. NumPy arrays are backend-neutral: a checkpoint written on one backend resumes on the others.

Checkpoints of ssaseg-keras 0.1 (`v00000...` arrays matched by position, paths pickled) are refused
with a line naming `ssaseg-keras upgrade-checkpoint`, which rewrites them (`upgrade_checkpoint`).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import tempfile
import time
import zipfile

import numpy as np
import yaml

from ssaseg_keras.utils.errors import CheckpointError
from ssaseg_keras.utils.files import replace_dir
from ssaseg_keras.utils.variables import variable_keys

CHECKPOINT_PATTERN = re.compile(r"^iter_(\d{7,})$")
LEGACY_ARRAY = re.compile(r"^v\d{5}$")
BEST_NAME = "best"
FORMAT_VERSION = 2
LISTED = 8  # names listed per kind of mismatch in an error
READ_ERRORS = (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError)


def _array(variable):
    from ssaseg_keras.utils.distribution import to_host

    return to_host(variable.value)


def model_variables(model):
    """{key: variable} of what a checkpoint holds of `model`, in a fixed order (metrics excluded)."""
    metric_variables = [v for metric in model.metrics for v in metric.variables]
    return variable_keys(model, exclude=metric_variables)


def optimizer_variables(optimizer, model):
    """{key: variable} of a built optimizer's state.

    A slot of a model variable (Adam's `momentum`, a gradient accumulator) is keyed
    `slots/<model key>/<slot>`; the optimizer's own counters by their names (`iteration`,
    `dynamic_scale`, ...), under `inner_optimizer/` for the one a LossScaleOptimizer wraps.
    Keras names a slot `<model variable path with / as _>_<slot>`, which identifies its variable.
    """
    keys_of = {id(v): k for k, v in model_variables(model).items()}
    by_prefix = {v.path.replace("/", "_"): keys_of[id(v)] for v in model.trainable_variables if id(v) in keys_of}
    inner = getattr(optimizer, "inner_optimizer", None)
    inner_ids = {id(v) for v in inner.variables} if inner is not None else set()
    keys = collections.OrderedDict()
    for variable in optimizer.variables:
        scope = "inner_optimizer/" if id(variable) in inner_ids else ""
        parts = variable.name.split("_")
        key = f"{scope}{variable.name}"
        for cut in range(len(parts) - 1, 0, -1):
            prefix = "_".join(parts[:cut])
            if prefix in by_prefix:
                key = f"{scope}slots/{by_prefix[prefix]}/{'_'.join(parts[cut:])}"
                break
        if key in keys:
            raise CheckpointError(f"two optimizer variables would both be stored as {key!r}")
        keys[key] = variable
    return keys


def _write_arrays(path, keyed):
    with open(path, "wb") as handle:
        np.savez(handle, **{key: _array(variable) for key, variable in keyed.items()})


def _names(items):
    items = list(items)
    return ", ".join(items[:LISTED]) + (f", ... ({len(items)} in all)" if len(items) > LISTED else "")


def _is_legacy(files):
    return "__paths__" in files or any(LEGACY_ARRAY.match(name) for name in files)


def _upgrade_hint(path):
    checkpoint = os.path.dirname(os.path.abspath(path))
    return (
        f"{path} is in the checkpoint format of ssaseg-keras 0.1 (arrays matched by position, paths "
        f"pickled), which is no longer read; rewrite it once with `ssaseg-keras upgrade-checkpoint "
        f"{checkpoint}` (for checkpoints you wrote yourself: it matches by position, as 0.1 did)"
    )


def _read_arrays(path, keyed, what):
    """{key: array} for every key of `keyed`, checked against the file by key and shape."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; use another one")
    try:
        with np.load(path, allow_pickle=False) as data:
            files = list(data.files)
            if _is_legacy(files):
                raise CheckpointError(_upgrade_hint(path))
            values = {key: data[key] for key in files if key in keyed}
    except READ_ERRORS as error:
        raise CheckpointError(
            f"{path} is unreadable or corrupt ({type(error).__name__}: {error}); use another checkpoint"
        ) from error
    missing = [key for key in keyed if key not in values]
    unexpected = [key for key in files if key not in keyed]
    mis_shaped = [
        f"{key} {tuple(values[key].shape)} (the {what}'s: {tuple(keyed[key].shape)})"
        for key in keyed
        if key in values and tuple(values[key].shape) != tuple(keyed[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} {what} variables are not in the file: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} arrays of the file have no place in the {what}: {_names(unexpected)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} have another shape: {_names(mis_shaped)}")
    if problems:
        raise CheckpointError(
            f"{path} does not fit this {what} (written for another recipe or precision?): " + "; ".join(problems)
        )
    return values


def _assign(keyed, values):
    for key, variable in keyed.items():
        variable.assign(values[key])


def save_checkpoint(work_dir, model, optimizer, iteration, recipe, extra_state=None, keep=3, best=False):
    """Write `<work_dir>/checkpoints/iter_<iteration>/` atomically; prune to the last `keep`.

    With best=True the checkpoint is (also) copied, atomically, to `checkpoints/best/`.
    Returns the checkpoint folder.
    """
    import keras

    root = os.path.join(work_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"iter_{int(iteration):07d}")
    state = {
        "format": FORMAT_VERSION,
        "iteration": int(iteration),
        "backend": keras.backend.backend(),
        "precision": keras.config.dtype_policy().name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra_state or {}),
    }
    optimizer_state = optimizer_variables(optimizer, model) if optimizer is not None and optimizer.built else None
    _write_folder(final, model_variables(model), optimizer_state, recipe, state)
    if best:
        best_tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
        shutil.rmtree(best_tmp)
        shutil.copytree(final, best_tmp)
        replace_dir(best_tmp, os.path.join(root, BEST_NAME))
    prune_checkpoints(root, keep)
    return final


def _write_folder(final, model_state, optimizer_state, recipe, state):
    """Write a checkpoint folder's four files into a temporary sibling and rename it to `final`."""
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(final)))
    try:
        _write_arrays(os.path.join(tmp, "variables.npz"), model_state)
        if optimizer_state is not None:
            _write_arrays(os.path.join(tmp, "optimizer.npz"), optimizer_state)
        with open(os.path.join(tmp, "recipe.yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(recipe, handle, sort_keys=False)
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    """Assign a checkpoint's model variables (weights, statistics, generator states), matched by key."""
    keyed = model_variables(model)
    _assign(keyed, _read_arrays(os.path.join(checkpoint, "variables.npz"), keyed, "model"))


def restore_optimizer(checkpoint, optimizer, model):
    """Build the optimizer on the model's trainable variables and assign its saved state by key."""
    path = os.path.join(checkpoint, "optimizer.npz")
    if not os.path.isfile(path):
        raise CheckpointError(f"{checkpoint} has no optimizer state (optimizer.npz); it cannot be resumed")
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    keyed = optimizer_variables(optimizer, model)
    _assign(keyed, _read_arrays(path, keyed, "optimizer"))


# ------------------------------------------------------------------ the 0.1 format
def is_legacy_checkpoint(checkpoint):
    """True when `checkpoint`'s variables.npz is in the 0.1 positional format."""
    try:
        with np.load(os.path.join(checkpoint, "variables.npz"), allow_pickle=False) as data:
            return _is_legacy(data.files)
    except READ_ERRORS as error:
        raise CheckpointError(f"{checkpoint}/variables.npz is unreadable or corrupt ({error})") from error


def _legacy_values(path, keyed, what):
    """{key: array} from a 0.1 file's `v00000..` arrays taken in order (the pickled `__paths__`
    array is never read), every shape checked."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = [data[name] for name in sorted(n for n in data.files if LEGACY_ARRAY.match(n))]
    except READ_ERRORS as error:
        raise CheckpointError(f"{path} is unreadable or corrupt ({error})") from error
    if len(arrays) != len(keyed):
        raise CheckpointError(
            f"{path} holds {len(arrays)} {what} arrays but the {what} built from its recipe has "
            f"{len(keyed)}: it cannot be upgraded by position"
        )
    for value, (key, variable) in zip(arrays, keyed.items()):
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"{path}: the {what} array for {key} has shape {value.shape}, the {what}'s "
                f"{tuple(variable.shape)}: it cannot be upgraded by position"
            )
    return dict(zip(keyed, arrays))


def upgrade_checkpoint(checkpoint):
    """Rewrite a 0.1 checkpoint folder in place (atomically) in the keyed format.

    Rebuilds the model and optimizer from the checkpoint's recipe.yaml and precision and takes the
    arrays in the order 0.1 wrote them (`model.variables`, `optimizer.variables`), checking every
    shape, exactly as 0.1 restored them. Returns False when the folder is in the new format already.
    """
    import keras

    from ssaseg_keras.training.trainer import build_training_model

    if not is_legacy_checkpoint(checkpoint):
        return False
    recipe, state = read_recipe(checkpoint), read_state(checkpoint)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(state.get("precision") or recipe["train"]["precision"])
    try:
        model = build_training_model(recipe, load_pretrained=False)
        model_state = model_variables(model)
        _assign(model_state, _legacy_values(os.path.join(checkpoint, "variables.npz"), model_state, "model"))
        optimizer_state = None
        optimizer_path = os.path.join(checkpoint, "optimizer.npz")
        if os.path.isfile(optimizer_path):
            model.optimizer.build(model.trainable_variables)
            optimizer_state = optimizer_variables(model.optimizer, model)
            key_of = {id(v): k for k, v in optimizer_state.items()}
            positional = collections.OrderedDict((key_of[id(v)], v) for v in model.optimizer.variables)
            _assign(positional, _legacy_values(optimizer_path, positional, "optimizer"))
        state = {**state, "format": FORMAT_VERSION, "upgraded_from_format": 1}
        _write_folder(checkpoint, model_state, optimizer_state, recipe, state)
    finally:
        keras.config.set_dtype_policy(previous)
    return True
