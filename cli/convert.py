"""`ssaseg-keras convert`: a reference (mmseg) checkpoint -> a `.keras` model file and/or a preset directory."""

from __future__ import annotations

import os

import click
from ssaseg_keras_cli import BACKENDS, use_backend

from ssaseg_keras.utils.errors import UserError


def save_atomically(model, output):
    """Save `model` to `output` through a temporary file in the same folder and `os.replace`."""
    from ssaseg_keras.utils.files import atomic_file

    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise UserError(f"--output {output!r}: folder {folder!r} does not exist; create it first")
    with atomic_file(output, suffix=".keras") as temporary:
        model.save(temporary)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--recipe", required=True, type=click.Path(dir_okay=False), help="Recipe YAML describing the model.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Where to write MODEL.keras.")
@click.option("--preset-dir", type=click.Path(file_okay=False), help="Also (or instead) write a preset directory (ImageSegmenter.from_preset DIR).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Recipe override, e.g. model.num_classes=171 (repeatable).")
@click.option("--inference", is_flag=True, help="Save the inference model (SSA teacher left out).")
@click.option("--no-strict", is_flag=True, help="Load what fits and only warn about names that do not.")
@click.option("--backend", type=click.Choice(BACKENDS), help="Keras backend (default: KERAS_BACKEND).")
def convert(checkpoint, recipe, output, preset_dir, overrides, inference, no_strict, backend):
    """Load a reference CHECKPOINT.pth into the recipe's model; save it as a .keras file (--output)
    and/or a preset directory (--preset-dir: keras-hub's layout, loads on any backend with
    `ssaseg_keras.ImageSegmenter.from_preset(DIR)`).

    The checkpoint's `state_dict` must hold `backbone.*` and `decode_head.*` weights (mmseg 0.30
    layout). Loading is strict: unmapped or missing names and shape mismatches are listed by name.
    The file is read with torch.load(weights_only=True); PyTorch is needed for this command only.
    """
    use_backend(backend)
    if not output and not preset_dir:
        raise UserError("convert: give --output MODEL.keras, --preset-dir DIR, or both")
    if output and not output.endswith(".keras"):
        raise UserError(f"--output {output!r}: the file name must end with .keras")
    from ssaseg_keras.convert import convert_checkpoint
    from ssaseg_keras.models import inference_model, model_summary_counts

    model, report = convert_checkpoint(checkpoint, recipe, strict=not no_strict, overrides=overrides)
    click.echo(report.describe())
    if inference:
        model = inference_model(model)
    counts = model_summary_counts(model)
    form = ", inference form" if inference else ""
    if output:
        save_atomically(model, output)
        click.echo(f"wrote {output} ({counts['trainable']:,} trainable parameters{form})")
    if preset_dir:
        model.save_to_preset(preset_dir)
        click.echo(f"wrote preset {preset_dir} ({counts['trainable']:,} trainable parameters{form})")


@click.command("upgrade-checkpoint")
@click.argument("path", type=click.Path())
@click.option("--backend", type=click.Choice(BACKENDS), help="Keras backend (default: KERAS_BACKEND).")
def upgrade_checkpoint(path, backend):
    """Rewrite ssaseg-keras 0.1 checkpoints (PATH: a checkpoint folder or a work dir) in the keyed format.

    0.1 stored arrays by position with their paths pickled; this release reads arrays by name only
    (nothing unpickled). The model and optimizer are rebuilt from each checkpoint's recipe.yaml and
    the arrays taken in the order 0.1 wrote them, every shape checked, as 0.1 restored them: use it
    for checkpoints you wrote yourself. Each folder is replaced atomically.
    """
    use_backend(backend)
    from ssaseg_keras.training import checkpoint as ckpt
    from ssaseg_keras.utils.errors import CheckpointError

    root = os.path.join(path, "checkpoints")
    if os.path.isfile(os.path.join(path, "state.json")):
        folders = [path]
    elif os.path.isdir(root):
        folders = [folder for _, folder in ckpt.list_checkpoints(root)]
        if os.path.isfile(os.path.join(root, ckpt.BEST_NAME, "state.json")):
            folders.append(os.path.join(root, ckpt.BEST_NAME))
    else:
        raise CheckpointError(f"{path!r} is neither a checkpoint folder (with state.json) nor a work dir")
    for folder in folders:
        upgraded = ckpt.upgrade_checkpoint(folder)
        click.echo(f"{folder}: {'upgraded' if upgraded else 'already in the current format'}")
