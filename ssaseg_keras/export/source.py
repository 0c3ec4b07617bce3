"""What `export` reads: a training checkpoint (or work dir) or a `.keras` model file -> inference model."""

from __future__ import annotations

import dataclasses
import os

from ssaseg_keras.utils.errors import CheckpointError, UserError


@dataclasses.dataclass
class ExportSource:
    """A resolved export input. `kind` is "checkpoint" or "keras"; `path` the folder or file read."""

    kind: str
    path: str
    mean: tuple
    std: tuple
    trained_backend: str | None = None
    iteration: int | None = None
    normalization_from: str = "recipe"  # where mean/std came from: "recipe", or "default" (a .keras without --recipe)


def _data_section(recipe_path):
    from ssaseg_keras.recipes import load_recipe

    if recipe_path is None:
        from ssaseg_keras.utils.conventions import MEAN, STD

        return {"mean": MEAN, "std": STD}
    return load_recipe(recipe_path)["data"]


def resolve_source(path, recipe_path=None):
    """Check `path` and describe it (no model is built). Raises CheckpointError/UserError."""
    from ssaseg_keras.training.checkpoint import read_recipe, read_state, resolve_checkpoint

    path = os.fspath(path)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise CheckpointError(f"model file {path!r} does not exist")
        data = _data_section(recipe_path)
        origin = "recipe" if recipe_path is not None else "default"
        return ExportSource("keras", path, tuple(data["mean"]), tuple(data["std"]), normalization_from=origin)
    if os.path.isfile(path):
        raise CheckpointError(
            f"{path!r} is a file but not a .keras model; give a checkpoint folder (iter_*/), "
            "a training work dir or a .keras file"
        )
    if recipe_path is not None:
        raise UserError(
            "--recipe is only for .keras files; a checkpoint carries its own recipe.yaml"
        )
    checkpoint = resolve_checkpoint(path)
    recipe = read_recipe(checkpoint)
    state = read_state(checkpoint)
    return ExportSource(
        "checkpoint",
        checkpoint,
        tuple(recipe["data"]["mean"]),
        tuple(recipe["data"]["std"]),
        trained_backend=state.get("backend"),
        iteration=state.get("iteration"),
    )


def load_inference_model(source):
    """The teacher-free `Segmentor` of an `ExportSource`, on the current Keras backend."""
    from ssaseg_keras.training.loading import load_trained_model

    return load_trained_model(source.path, inference=True)[0]
