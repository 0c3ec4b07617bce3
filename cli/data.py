"""`ssaseg-keras data`: prepare a dataset release, check a dataset."""

from __future__ import annotations

import json
import os

import click

from ssaseg_keras.utils.errors import RecipeError


@click.group()
def data():
    """Prepare and check datasets."""


@data.command()
@click.argument("dataset", type=click.Choice(["coco-stuff-10k"]))
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--workers", default=8, show_default=True, help="Parallel file conversions.")
def prepare(dataset, src, dst, workers):
    """Convert an official release into the layout the recipes read.

    coco-stuff-10k: SRC is the COCO-Stuff-10K v1.1 folder (images/, annotations/*.mat,
    imageLists/); DST gets images/{train2014,test2014} and annotations/.../*_labelTrainIds.png
    with the 182 -> 171 id mapping. Then use `data: {source: coco_stuff10k, root: DST}`.
    """
    from ssaseg_keras.data.prepare import prepare_coco_stuff10k

    def progress(done, total):
        if done % 500 == 0 or done == total:
            click.echo(f"  {done}/{total} images", err=True)

    counts = prepare_coco_stuff10k(src, dst, workers=workers, progress=progress)
    click.echo(f"wrote {counts['train']} train and {counts['test']} test images to {dst}")
    if counts["unmapped_pixels"]:
        click.echo(
            f"warning: {counts['unmapped_pixels']} pixels had ids outside COCO-Stuff's 182 and became 0 (unlabeled)"
        )


def load_data_section(path):
    """The raw `data:` section of a recipe file (only that section is read and validated, so a
    dataset can be checked before the rest of the recipe is written)."""
    import yaml

    if not os.path.isfile(path):
        raise RecipeError(f"recipe not found: {path}")
    try:
        with open(path) as handle:
            recipe = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(recipe, dict) or "data" not in recipe:
        raise RecipeError(
            f"{path}: no `data:` section; a recipe needs data: {{source: ..., root: ...}}"
        )
    return recipe["data"]


@data.command()
@click.argument("target")
@click.option(
    "--source",
    type=click.Choice(["ade20k", "coco_stuff10k", "pascal_context59", "folder", "synthetic"]),
    help="Check a dataset folder (TARGET) of this layout instead of a recipe.",
)
@click.option("--classes", help="folder source: comma-separated class names in label-id order.")
@click.option(
    "--reduce-zero-label/--no-reduce-zero-label",
    default=None,
    help="Override the source's default.",
)
@click.option(
    "--split",
    "splits",
    type=click.Choice(["train", "val", "all"]),
    default="all",
    show_default=True,
)
@click.option("--limit", type=int, help="Check only the first N samples of each split.")
@click.option(
    "--quick", is_flag=True, help="Read image headers only (labels are always read in full)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(target, source, classes, reduce_zero_label, splits, limit, quick, as_json):
    """Scan a dataset: counts, missing pairs, unreadable files, size mismatches, out-of-range labels,
    class frequencies. TARGET is a recipe (its data: section) or, with --source, a dataset folder.
    Exits 1 when problems are found."""
    from ssaseg_keras.data.check import check_data, format_report

    if source:
        section = {"source": source}
        if source != "synthetic":
            section["root"] = target
        if classes:
            section["class_names"] = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        if classes:
            raise click.UsageError("--classes applies with --source folder")
        section = load_data_section(target)
    if reduce_zero_label is not None:
        section = dict(section, reduce_zero_label=reduce_zero_label)
    result = check_data(
        section, ("train", "val") if splits == "all" else (splits,), limit=limit, quick=quick
    )
    if as_json:
        out = {
            "ok": result["ok"],
            "source": result["config"]["source"],
            "class_names": list(result["config"]["class_names"]),
            "splits": [
                {**r, "class_pixels": [int(v) for v in r["class_pixels"]]} for r in result["splits"]
            ],
        }
        click.echo(json.dumps(out, indent=1, default=str))
    else:
        for line in format_report(result):
            click.echo(line)
    if not result["ok"]:
        raise SystemExit(1)
