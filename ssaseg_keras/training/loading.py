"""The one loader of trained models: a training checkpoint, a work dir (its latest checkpoint) or a
`.keras` file -> a `Segmentor` on the current backend (evaluate, predict and export all use it)."""

from __future__ import annotations

import os

from ssaseg_keras.utils.errors import CheckpointError


def load_trained_model(path, recipe=None, inference=False):
    """(model, recipe) from a checkpoint folder, a work dir or a `.keras` file.

    Args:
        path: the checkpoint folder (with state.json), a training work dir (its latest checkpoint)
            or a `.keras` file.
        recipe: the validated recipe to return; a checkpoint's own recipe.yaml is used when None. A
            `.keras` file carries no recipe: pass one for its data section (normalisation, classes).
        inference: return the teacher-free inference model (`inference_model`).

    Raises:
        CheckpointError naming the file when it is missing, corrupt, not an ssaseg-keras model or
        does not fit (see `restore_model`).
    """
    import keras

    from ssaseg_keras.models import build_image_segmenter, inference_model
    from ssaseg_keras.training import checkpoint as ckpt

    path = os.fspath(path)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise CheckpointError(f"model file {path!r} does not exist")
        try:
            model = keras.saving.load_model(path, compile=False)  # safe_mode: no code from the file
        except Exception as error:  # a corrupt or foreign file
            raise CheckpointError(f"{path!r} is not a readable ssaseg-keras .keras model ({error})") from error
        if not hasattr(model, "classifier") or not hasattr(model, "decode_head"):
            raise CheckpointError(f"{path!r} is a Keras model but not an ssaseg-keras Segmentor")
    else:
        checkpoint = ckpt.resolve_checkpoint(path)
        saved_recipe = ckpt.read_recipe(checkpoint)
        model = build_image_segmenter(saved_recipe, training=True)
        ckpt.restore_model(checkpoint, model)
        recipe = recipe or saved_recipe
    return (inference_model(model) if inference else model), recipe
