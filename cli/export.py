"""`ssaseg-keras export`: a SavedModel for TF Serving; `--check` it; print a `--request` body."""

from __future__ import annotations

import os

import click
from ssaseg_keras_cli import BACKENDS, use_backend

from ssaseg_keras.utils.errors import UserError


@click.command()
@click.argument("checkpoint", required=False)
@click.option(
    "--output",
    "-o",
    type=click.Path(),
    help="Model base path for TF Serving; writes OUTPUT/<version>/.",
)
@click.option(
    "--version", "version", type=int, default=1, show_default=True, help="Version folder number."
)
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT/<version>/.")
@click.option(
    "--input-dtype",
    type=click.Choice(["uint8", "float32"]),
    default="uint8",
    show_default=True,
    help="dtype of the signature's `images` input (RGB 0-255 either way).",
)
@click.option(
    "--with-probabilities", is_flag=True, help="Also output `probabilities` float32 (B, H, W, K)."
)
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False),
    help="For a .keras file: the recipe whose data.mean/std normalise the images (default: ImageNet's).",
)
@click.option(
    "--check",
    "check_dir",
    metavar="DIR",
    help="Check an exported SavedModel (DIR or DIR/<version>).",
)
@click.option(
    "--image", "images", multiple=True, metavar="IMAGE", help="With --check: also run these images."
)
@click.option(
    "--request",
    "request_image",
    metavar="IMAGE",
    help="Print the TF Serving REST request body for IMAGE.",
)
@click.option(
    "--request-format",
    type=click.Choice(["instances", "inputs"]),
    default="instances",
    show_default=True,
    help="Row ('instances') or columnar ('inputs') JSON for --request.",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    help="Keras backend (default: KERAS_BACKEND).",
)
def export(
    checkpoint,
    output,
    version,
    force,
    input_dtype,
    with_probabilities,
    recipe,
    check_dir,
    images,
    request_image,
    request_format,
    backend,
):
    """Export CHECKPOINT (a checkpoint folder, a training work dir, a preset directory or a .keras file) for TF Serving.

    Writes OUTPUT/<version>/ (a SavedModel, written atomically) whose `serving_default` signature takes
    `images` (batch, height, width, 3), any batch and size, RGB 0-255, and returns `labels` int32
    (batch, height, width) [and `probabilities`]. Normalisation, padding to a multiple of 32 and
    cropping back run inside the graph. The graph is written with the TensorFlow backend (in a child
    process when the current backend is another), then checked against the Keras model's predictions.

    \b
    ssaseg-keras export work_dirs/quickstart --output models/ssaseg
    ssaseg-keras export --check models/ssaseg
    ssaseg-keras export --request image.jpg > request.json
    """
    modes = [
        name
        for name, given in (
            ("CHECKPOINT", checkpoint),
            ("--check", check_dir),
            ("--request", request_image),
        )
        if given
    ]
    if len(modes) != 1:
        raise UserError(
            "give exactly one of CHECKPOINT (to export), --check DIR or --request IMAGE"
            + (f" (got {', '.join(modes)})" if modes else "")
        )
    if images and not check_dir:
        raise UserError("--image goes with --check DIR")
    if request_image:
        from ssaseg_keras.export.request import request_body

        click.echo(request_body(request_image, request_format))
        return
    if check_dir:
        from ssaseg_keras.export.exporter import run_check

        for image in images:
            if not os.path.isfile(image):
                raise UserError(f"--image {image!r} does not exist")
        run_check(check_dir, images, echo=click.echo)
        click.echo("check passed")
        return
    if not output:
        raise UserError("--output DIR is required to export (TF Serving's model base path)")
    use_backend(backend)
    from ssaseg_keras.export.exporter import export_saved_model

    export_saved_model(
        checkpoint,
        output,
        version=version,
        force=force,
        input_dtype=input_dtype,
        with_probabilities=with_probabilities,
        recipe_path=recipe,
        echo=click.echo,
    )
