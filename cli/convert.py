"""`ssaseg-keras convert`: a reference (mmseg 0.30) checkpoint -> a `.keras` model file."""

from __future__ import annotations

import os
import tempfile

import click

from ssaseg_keras.utils.errors import UserError


def save_atomically(model, output):
    """Save `model` to `output` through a temporary file in the same folder and `os.replace`."""
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise UserError(f"--output {output!r}: folder {folder!r} does not exist; create it first")
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".convert-", suffix=".keras")
    os.close(handle)
    try:
        model.save(temporary)
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--recipe", required=True, type=click.Path(dir_okay=False), help="Recipe YAML describing the model.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Where to write MODEL.keras.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Recipe override, e.g. model.num_classes=171 (repeatable).")
@click.option("--inference", is_flag=True, help="Save the inference model (SSA teacher left out).")
@click.option("--no-strict", is_flag=True, help="Load what fits and only warn about names that do not.")
@click.option("--backend", type=click.Choice(["tensorflow", "jax", "torch"]), help="Keras backend (default: KERAS_BACKEND).")
def convert(checkpoint, recipe, output, overrides, inference, no_strict, backend):
    """Load a reference CHECKPOINT.pth into the recipe's model and save it as a .keras file.

    The checkpoint's `state_dict` must hold `backbone.*` and `decode_head.*` weights (mmseg 0.30
    layout). Loading is strict: unmapped or missing names and shape mismatches are listed by name.
    The file is read with torch.load(weights_only=True); PyTorch is needed for this command only.
    """
    if backend:
        os.environ["KERAS_BACKEND"] = backend
    if not output.endswith(".keras"):
        raise UserError(f"--output {output!r}: the file name must end with .keras")
    from ssaseg_keras.convert import convert_checkpoint
    from ssaseg_keras.models import inference_model, model_summary_counts

    model, report = convert_checkpoint(checkpoint, recipe, strict=not no_strict, overrides=overrides)
    click.echo(report.describe())
    if inference:
        model = inference_model(model)
    save_atomically(model, output)
    counts = model_summary_counts(model)
    click.echo(f"wrote {output} ({counts['trainable']:,} trainable parameters{', inference form' if inference else ''})")
