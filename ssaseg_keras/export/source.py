"""What `export` reads: a training checkpoint (or work dir), a preset directory (`save_to_preset`) or a
`.keras` model file -> inference model."""

from __future__ import annotations

import dataclasses
import os

from ssaseg_keras.utils.errors import CheckpointError, UserError


@dataclasses.dataclass
class ExportSource:
    """A resolved export input. `kind` is "checkpoint", "preset" or "keras"; `path` the folder or file read."""

    kind: str
    path: str
    mean: tuple
    std: tuple
    trained_backend: str | None = None
    iteration: int | None = None
    normalization_from: str = "recipe"  # where mean/std came from: "recipe", "preprocessor" (a preset) or "default"


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
    if os.path.isfile(os.path.join(path, "task.json")):
        return _preset_source(path, recipe_path)
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


def _preset_source(path, recipe_path):
    """A preset directory: mean / std from its preprocessor (the graph normalises as `predict` does)."""
    import json

    if recipe_path is not None:
        raise UserError("--recipe is only for .keras files; a preset carries its own preprocessor")
    preprocessor_file = os.path.join(path, "preprocessor.json")
    try:
        with open(preprocessor_file, encoding="utf-8") as handle:
            preprocessor = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{preprocessor_file} is missing or unreadable ({error}); export needs the preset's preprocessor") from error
    converter = (preprocessor.get("config") or {}).get("image_converter") or {}
    if preprocessor.get("class_name") != "ImageSegmenterPreprocessor" or "mean" not in (converter.get("config") or {}):
        raise UserError(
            f"preset {path!r}: its preprocessor is {preprocessor.get('class_name')!r} (keras-hub's); the SavedModel "
            "export normalises with ssaseg-keras' ImageConverter mean/std only. Save the model as a .keras file "
            "and export it with --recipe naming the normalisation, or serve it with keras-hub's tools"
        )
    config = converter["config"]
    return ExportSource("preset", path, tuple(config["mean"]), tuple(config["std"]), normalization_from="preprocessor")


def load_inference_model(source):
    """The deployed model (no teacher, no auxiliary heads) of an `ExportSource`, on the current backend."""
    from ssaseg_keras.models import inference_model
    from ssaseg_keras.training.loading import load_trained_model

    if source.kind == "preset":
        from ssaseg_keras.models.task import load_preset_dir

        return inference_model(load_preset_dir(source.path))
    return load_trained_model(source.path, inference=True)[0]
