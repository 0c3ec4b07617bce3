"""`ssaseg-keras data prepare coco-stuff-10k` on .mat files written here, and `data check`."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from scipy.io import savemat
from ssaseg_keras_cli.main import main

from ssaseg_keras.data.catalog import COCO_STUFF_UNUSED_IDS


def run(argv, capsys):
    """(exit code, stdout, stderr) of the console script's main."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def make_release(root, names_train=("COCO_train2014_000000000009", "COCO_train2014_000000000025"),
                 names_test=("COCO_train2014_000000000030",)):  # fmt: skip
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "imageLists").mkdir()
    ids = np.array([[0, 1, 11, 13], [27, 182, 91, 100]], np.uint16).repeat(2, 0)  # (4, 4)
    for name in names_train + names_test:
        Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(root / "images" / f"{name}.jpg")
        savemat(root / "annotations" / f"{name}.mat", {"S": ids, "names": np.array(["x"])})
    (root / "imageLists/train.txt").write_text("\n".join(names_train) + "\n")
    (root / "imageLists/test.txt").write_text("\n".join(names_test) + "\n")
    return ids


def test_prepare_coco_stuff10k(tmp_path, capsys):
    ids = make_release(tmp_path / "src")
    dst = tmp_path / "prepared"
    code, out, _ = run(
        ["data", "prepare", "coco-stuff-10k", str(tmp_path / "src"), str(dst)], capsys
    )
    assert code == 0 and "wrote 2 train and 1 test images" in out
    label = np.asarray(
        Image.open(dst / "annotations/test2014/COCO_train2014_000000000030_labelTrainIds.png")
    )
    # 0->0, 1->1, 11->11, 13->12 (12 unused), 27->25 (12, 26 unused), 182->171, 91 (unused)->0,
    # 100 -> 100 minus the 10 unused ids below it (12 26 29 30 45 66 68 69 71 83 91: 11) = 89
    expect = np.array([[0, 1, 11, 12], [25, 171, 0, 89]]).repeat(2, 0)
    assert 100 - sum(u < 100 for u in COCO_STUFF_UNUSED_IDS) == 89
    np.testing.assert_array_equal(label, expect)
    assert label.dtype == np.uint8 and ids.shape == label.shape
    assert (dst / "images/train2014/COCO_train2014_000000000009.jpg").is_file()
    assert len(list((dst / "annotations/train2014").iterdir())) == 2
    # The prepared folder is a valid coco_stuff10k source and passes the check.
    code, out, _ = run(["data", "check", str(dst), "--source", "coco_stuff10k"], capsys)
    assert code == 0, out
    assert "[train] 2 images, 2 label files, 2 pairs checked" in out and out.strip().endswith("OK")
    # reduce_zero_label: 0 -> ignored (2 of 8 px per image), 1 -> person, 171 -> wood ...
    code, out, _ = run(
        ["data", "check", str(dst), "--source", "coco_stuff10k", "--split", "val", "--json"], capsys
    )
    report = json.loads(out)["splits"][0]
    assert (
        report["ignored_pixels"] == 4
        and report["class_pixels"][0] == 2
        and report["class_pixels"][170] == 2
    )
    assert report["class_pixels"][88] == 2 and sum(report["class_pixels"]) == 12


def test_prepare_errors(tmp_path, capsys):
    make_release(tmp_path / "src")
    (tmp_path / "src/annotations/COCO_train2014_000000000025.mat").unlink()
    code, _, err = run(
        ["data", "prepare", "coco-stuff-10k", str(tmp_path / "src"), str(tmp_path / "d")], capsys
    )
    assert code == 2 and "annotation missing: " in err and "000000000025.mat" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(
        ["data", "prepare", "coco-stuff-10k", str(tmp_path / "nope"), str(tmp_path / "d")], capsys
    )
    assert code == 2 and "nope/images not found" in err


def test_check_reports_every_problem(tmp_path, capsys):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    good = np.array([[0, 1], [2, 255]], np.uint8).repeat(3, 0).repeat(3, 1)  # (6, 6)
    for name, label in {"a": good, "b": np.full((6, 6), 9, np.uint8), "c": good[:5]}.items():
        Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(label).save(root / "labels" / f"{name}.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "images/d.png")  # no label
    Image.fromarray(good).save(root / "labels/e.png")  # no image
    (root / "images/f.png").write_bytes(b"garbage")
    Image.fromarray(good).save(root / "labels/f.png")
    code, out, _ = run(
        [
            "data",
            "check",
            str(root),
            "--source",
            "folder",
            "--classes",
            "x,y,z",
            "--split",
            "train",
        ],
        capsys,
    )
    assert code == 1, out
    assert "[train] 5 images, 5 label files, 4 pairs checked" in out
    assert "missing pairs: 1" in out and "images/d.png" in out
    assert "labels without image: 1" in out and "labels/e.png" in out
    assert "unreadable files: 1" in out and "images/f.png" in out
    assert "image/label size mismatches: 1" in out and "is 6x6 but label" in out
    assert "files with out-of-range labels: 1" in out and "labels/b.png" in out
    assert "out-of-range values (not < 3 and not 255 after reduce_zero_label): 9 (36 px)" in out
    # a.png: 9 px each of x, y, z and 9 ignored; b.png: 36 out-of-range px -> 72 px
    assert "pixels: 72, ignored 12.5%, classes present 3/3" in out
    assert "most frequent: x 12.5%, y 12.5%, z 12.5%" in out
    assert out.strip().endswith("PROBLEMS FOUND")


def test_check_a_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {name: x}\ndata:\n  source: synthetic\n  image_size: [24, 24]\n  num_images: 3\n  num_val_images: 2\n"
    )
    code, out, _ = run(["data", "check", str(recipe)], capsys)
    assert code == 0, out
    assert (
        "source synthetic: 21 classes" in out
        and "[train] 3 images" in out
        and "[val] 2 images" in out
    )
    recipe.write_text("data:\n  source: synthetic\n  crop: 3\n")
    code, _, err = run(["data", "check", str(recipe)], capsys)
    assert code == 2 and "data.crop: unknown key" in err
    code, _, err = run(["data", "check", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "missing.yaml" in err
