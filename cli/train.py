"""`ssaseg-keras train | evaluate | predict | recipes`: the training workflow from YAML recipes."""

from __future__ import annotations

import json
import os
import pathlib

import click
from ssaseg_keras_cli import BACKENDS, use_backend

from ssaseg_keras.utils.errors import UserError

backend_option = click.option(
    "--backend", type=click.Choice(BACKENDS), help="Keras backend for this run (default: KERAS_BACKEND)."
)
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a recipe value, e.g. --set train.max_iters=1000 (repeatable).",
)  # fmt: skip


def recipes_dir():
    """The recipes folder: $SSASEG_RECIPES, ./recipes, or the one installed with the package."""
    from ssaseg_keras.recipes import RECIPE_DIR

    candidates = [os.environ.get("SSASEG_RECIPES"), "recipes", RECIPE_DIR]
    for candidate in candidates:
        if candidate and os.path.isdir(candidate):
            return pathlib.Path(candidate)
    return None


def resolve_recipe_path(recipe):
    """A recipe path as given, or a bare name (`quickstart`) looked up in the recipes folder."""
    if os.path.isfile(recipe) or recipe.endswith((".yaml", ".yml")):
        return recipe
    folder = recipes_dir()
    if folder is not None and (folder / f"{recipe}.yaml").is_file():
        return str(folder / f"{recipe}.yaml")
    return recipe


@click.command()
@click.argument("recipe")
@backend_option
@click.option("--work-dir", type=click.Path(file_okay=False), help="Run folder (default: work_dirs/<recipe name>).")
@set_option
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in the work dir.")
@click.option("--no-pretrained", is_flag=True, help="Ignore model.pretrained (train from scratch).")
@click.option(
    "--devices", metavar="auto|N",
    help="Data-parallel devices (default: the recipe's train.devices, auto = every local accelerator). "
    "train.batch_size stays the global batch. PyTorch: start one process per device with torchrun.",
)  # fmt: skip
@click.option("--coordinator", metavar="HOST:PORT", help="JAX multi-host: process 0's address (or KERAS_DISTRIBUTION_JOB_ADDRESSES).")
@click.option("--num-processes", type=click.IntRange(min=1), help="JAX multi-host: number of hosts (or KERAS_DISTRIBUTION_NUM_PROCESSES).")
@click.option("--process-id", type=click.IntRange(min=0), help="JAX multi-host: this host's index, 0 = coordinator (or KERAS_DISTRIBUTION_PROCESS_ID).")
def train(recipe, backend, work_dir, overrides, resume, no_pretrained, devices, coordinator, num_processes, process_id):
    """Train the model of RECIPE (a YAML file or a name from `ssaseg-keras recipes`).

    Prints progress every train.log_interval iterations (ETA, images/s, lr, every loss term),
    evaluates every train.eval_interval, checkpoints every train.checkpoint_interval (atomically,
    keeping the last train.keep_checkpoints and the best mIoU), and writes log.jsonl and TensorBoard
    logs in the work dir. --resume (or `train.resume: auto` in the recipe) continues a run from its
    latest checkpoint: iteration, lr schedule, optimizer state, random state and data order.

    Several devices: --devices N (JAX, TensorFlow); `torchrun --nproc-per-node N -m
    ssaseg_keras_cli.main train RECIPE --devices N` (PyTorch); several JAX hosts: the same command on
    each with --coordinator, --num-processes and --process-id.
    """
    use_backend(backend)
    from ssaseg_keras.recipes import load_recipe
    from ssaseg_keras.training.distribute import parse_devices
    from ssaseg_keras.training.trainer import train as run

    path = resolve_recipe_path(recipe)
    if devices is not None:
        devices = parse_devices(devices, key="--devices")
        if devices != "auto":  # checked with the recipe's batch like the recipe key
            overrides = (*overrides, f"train.devices={devices}")
    config = load_recipe(path, overrides)
    work_dir = work_dir or os.path.join("work_dirs", config["name"])
    multi_host = None
    if coordinator or num_processes or process_id is not None:
        multi_host = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if int(os.environ.get("RANK", "0") or 0) == 0 and not process_id:  # torchrun / JAX process 0
        click.echo(f"recipe {path}  ->  work dir {work_dir}")
    summary = run(
        config, work_dir, resume=resume, load_pretrained=not no_pretrained, echo=click.echo,
        devices=devices, multi_host=multi_host,
    )  # fmt: skip
    from ssaseg_keras.utils.distribution import is_chief

    if not is_chief():
        return
    best = summary.get("best_miou")
    click.echo(
        f"done: iteration {summary['iteration']}"
        + (f", best mIoU {best:.2f} (mode: {summary['eval_mode']})" if best is not None else "")
        + f"; checkpoints in {os.path.join(work_dir, 'checkpoints')}"
    )


def parse_tta(text):
    """'flip', '0.5,0.75,1.0' or 'flip,0.5,1.0,1.5' -> (flip, scales)."""
    if not text:
        return False, (1.0,)
    flip, scales = False, []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "flip":
            flip = True
            continue
        try:
            scales.append(float(part))
        except ValueError as error:
            raise UserError(f"--tta {text!r}: {part!r} is neither 'flip' nor a scale ratio like 0.75") from error
    return flip, tuple(scales) or (1.0,)


@click.command()
@click.argument("recipe")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint folder, work dir or .keras file.")
@click.option("--tta", default="", help="Test-time augmentation: 'flip' and/or scale ratios, e.g. flip,0.5,0.75,1.0,1.25,1.5,1.75.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
@click.option("--max-images", type=click.IntRange(min=1), help="Evaluate only the first N images.")
@backend_option
@set_option
def evaluate(recipe, checkpoint, tta, json_path, max_images, backend, overrides):
    """mIoU / mAcc / aAcc and per-class IoU of CHECKPOINT on RECIPE's validation split."""
    use_backend(backend)
    from ssaseg_keras.recipes import load_recipe
    from ssaseg_keras.training.evaluation import evaluate_model
    from ssaseg_keras.training.loading import load_trained_model

    config = load_recipe(resolve_recipe_path(recipe), overrides)
    flip, scales = parse_tta(tta)
    model, _ = load_trained_model(checkpoint, config)
    results = evaluate_model(model, config, flip=flip, scales=scales, max_images=max_images)
    click.echo(f"{'class':24s} {'IoU':>7s} {'Acc':>7s}")
    for name, iou, acc in zip(results["class_names"], results["IoU"], results["Acc"]):
        cells = [f"{v:7.2f}" if v is not None else f"{'-':>7s}" for v in (iou, acc)]
        click.echo(f"{name[:24]:24s} {cells[0]} {cells[1]}")
    click.echo(
        f"mIoU {results['mIoU']:.2f}  mAcc {results['mAcc']:.2f}  aAcc {results['aAcc']:.2f}  "
        f"({results['num_images']} images, mode: {results['mode']})"
    )
    if json_path:
        payload = {**results, "checkpoint": str(checkpoint), "recipe": config["name"]}
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
        click.echo(f"wrote {json_path}")


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.argument("images", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the predictions.")
@click.option("--recipe", help="Recipe (needed for a .keras file: normalisation, eval scale and mode, classes).")
@click.option("--logits", is_flag=True, help="Also save the logits as <image>_logits.npy (H, W, K) float32.")
@click.option("--overlay", is_flag=True, help="Also write <image>_overlay.png: the colour map over the image, with a legend of the classes present.")
@backend_option
def predict(checkpoint, images, output, recipe, logits, overlay, backend):
    """Predict IMAGES (a file or a folder) with CHECKPOINT (checkpoint folder, work dir or .keras).

    Writes <image>.png (class ids as a palette PNG) and, with --overlay, <image>_overlay.png (the
    colour map blended over the image, a legend of the classes present beside it) and, with
    --logits, <image>_logits.npy, into --output.
    """
    use_backend(backend)
    from ssaseg_keras.data import dataset_info
    from ssaseg_keras.recipes import load_recipe
    from ssaseg_keras.training.loading import load_trained_model
    from ssaseg_keras.training.predict import (
        list_images,
        predict_image,
        read_image,
        save_prediction,
    )

    files = list_images(images)
    if recipe is None and str(checkpoint).endswith(".keras"):
        raise UserError(
            f"{checkpoint} is a .keras file, which carries no recipe: give --recipe for its "
            "normalisation, eval scale and mode and class names"
        )
    config = load_recipe(resolve_recipe_path(recipe)) if recipe else None
    model, config = load_trained_model(checkpoint, config)
    info = dataset_info(config["data"])
    for path in files:
        image = read_image(path)
        labels, raw = predict_image(model, image, config, return_logits=True)
        stem = os.path.splitext(os.path.basename(path))[0]
        save_prediction(
            labels, image, output, stem, info["palette"], logits=raw if logits else None,
            class_names=info["class_names"] if overlay else None,
        )  # fmt: skip
        click.echo(f"{path} -> {os.path.join(output, stem + '.png')}")


@click.group(invoke_without_command=True)
@click.pass_context
def recipes(context):
    """List the recipes (`recipes`), or show one (`recipes show NAME`)."""
    if context.invoked_subcommand is not None:
        return
    folder = recipes_dir()
    if folder is None:
        raise UserError("no recipes folder found: run from the repository root or set SSASEG_RECIPES")
    import yaml

    click.echo(f"recipes in {folder}:")
    for path in sorted(folder.glob("*.yaml")):
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
        model, data = raw.get("model") or {}, raw.get("data") or {}
        click.echo(
            f"  {path.stem:32s} {model.get('family', '?')}-{model.get('size', '?')}"
            f"{' + SSA' if model.get('ssa', True) else ' (baseline)':12s} {data.get('source', '?')}"
        )


@recipes.command("show")
@click.argument("name")
def show_recipe(name):
    """Print recipe NAME (or a path) with every default filled in."""
    import yaml

    from ssaseg_keras.recipes import load_recipe

    click.echo(yaml.safe_dump(load_recipe(resolve_recipe_path(name)), sort_keys=False).rstrip())
