"""Recipes: every shipped recipe validates; bad keys, types, values and files are named."""

from __future__ import annotations

import glob
import os

import pytest

from ssaseg_keras.recipes import TRAIN_DEFAULTS, check_pretrained, load_recipe, parse_override
from ssaseg_keras.utils.errors import RecipeError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "*.yaml")))


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


MINIMAL = """
model:
  family: segnext
  size: t
data:
  source: ade20k
  root: data/ade20k
"""


def test_all_shipped_recipes_exist_and_validate():
    names = {os.path.basename(p)[:-5] for p in RECIPES}
    expected = {"segnext_t_coco", "segnext_t_ade20k", "segnext_s_ade20k", "segnext_b_ade20k", "segnext_l_ade20k"}
    expected |= {f"segformer_b{i}_ade20k" for i in range(6)}
    expected |= {
        f"upernet_swin_{s}_{d}" for s in "tbl" for d in ("ade20k", "coco", "pascal_context59")
    }
    expected |= {"fcn_r101_ade20k", "fcn_r101_coco"}
    expected |= {f"ocrnet_hr48_{d}" for d in ("ade20k", "coco", "pascal_context59")}
    expected |= {f"{m}_{d}" for m in ("seaformer_b", "seaformer_l", "afformer_b") for d in ("ade20k", "coco", "pascal_context59")}
    expected |= {"cgrseg_b_ade20k", "cgrseg_l_ade20k"}
    expected |= {f"{n}_baseline" for n in expected}
    assert expected <= names  # other recipes (e.g. a quickstart) may sit beside them
    for path in RECIPES:
        recipe = load_recipe(path)
        assert recipe["model"]["ssa"] is (not path.endswith("_baseline.yaml"))
        assert recipe["model"]["num_classes"] == recipe["data"]["num_classes"]


def test_reference_schedule_of_the_coco_recipe():
    recipe = load_recipe(os.path.join(REPO, "recipes", "segnext_t_coco.yaml"))
    assert recipe["model"]["num_classes"] == 171 and recipe["model"]["size"] == "t"
    train = recipe["train"]
    assert (train["max_iters"], train["batch_size"], train["lr"], train["weight_decay"]) == (80000, 16, 6e-5, 0.01)
    assert (train["warmup_iters"], train["warmup_ratio"], train["poly_power"], train["head_lr_mult"]) == (1500, 1e-6, 1.0, 10.0)
    assert train["betas"] == [0.9, 0.999]
    assert recipe["data"]["crop_size"] == (512, 512) and recipe["data"]["cat_max_ratio"] == 0.75
    assert recipe["eval"] == {"mode": "whole", "scale": [2048, 512], "crop_size": [512, 512], "stride": [341, 341]}


def test_reference_schedule_of_the_upernet_swin_recipes():
    for size, width in (("t", 96), ("b", 128), ("l", 192)):
        recipe = load_recipe(os.path.join(REPO, "recipes", f"upernet_swin_{size}_ade20k.yaml"))
        model, train = recipe["model"], recipe["train"]
        assert (model["family"], model["size"], model["num_classes"], model["drop_path"]) == ("upernet", size, 150, 0.3)
        assert model["pretrained"].startswith(f"pretrained/swin_{ {'t': 'tiny', 'b': 'base', 'l': 'large'}[size]}_patch4_window7_224")
        assert (train["max_iters"], train["batch_size"], train["lr"], train["weight_decay"]) == (160000, 16, 6e-5, 0.01)
        assert (train["warmup_iters"], train["warmup_ratio"], train["poly_power"]) == (1500, 1e-6, 1.0)
        # mmseg's upernet_swin optimizer: no decay on these, and no head lr multiplier.
        assert train["custom_keys"] == {
            "absolute_pos_embed": {"decay_mult": 0.0},
            "relative_position_bias_table": {"decay_mult": 0.0},
            "norm": {"decay_mult": 0.0},
        }
        assert train["head_lr_mult"] is None
        assert width  # the size's Swin width is checked by the model tests
    pc = load_recipe(os.path.join(REPO, "recipes", "upernet_swin_t_pascal_context59.yaml"))
    assert pc["model"]["num_classes"] == 59 and pc["data"]["crop_size"] == (480, 480) and pc["train"]["max_iters"] == 80000
    coco = load_recipe(os.path.join(REPO, "recipes", "upernet_swin_l_coco_baseline.yaml"))
    assert coco["model"]["num_classes"] == 171 and coco["model"]["ssa"] is False


# The lightweight family (issue 20): the reference configs' AdamW settings and schedules.
LIGHTWEIGHT = {  # name: (lr, custom keys, iterations, eval interval, pretrained file)
    "seaformer_b_ade20k": (2.5e-4, {"pos_emb", "head", "norm"}, 160000, 4000, "SeaFormer_B_cls_76.4.pth"),
    "seaformer_l_ade20k": (2.5e-4, {"pos_emb", "head", "norm"}, 160000, 4000, "SeaFormer_L_cls_79.9.pth"),
    "afformer_b_ade20k": (3e-4, set(), 160000, 8000, "AFFormer_base_ImageNet1k_new.pth"),
    "afformer_b_coco": (3e-4, set(), 80000, 4000, "AFFormer_base_ImageNet1k_new.pth"),
    "cgrseg_b_ade20k": (1.2e-4, {"absolute_pos_embed", "head", "norm"}, 160000, 4000, "eformer_s2_450.pth"),
    "cgrseg_l_ade20k": (1.2e-4, {"absolute_pos_embed", "head", "norm"}, 160000, 4000, "eformer_l_450.pth"),
}


@pytest.mark.parametrize("name", sorted(LIGHTWEIGHT))
def test_reference_schedule_of_the_lightweight_recipes(name):
    lr, keys, iterations, interval, pretrained = LIGHTWEIGHT[name]
    for twin in (name, f"{name}_baseline"):
        recipe = load_recipe(os.path.join(REPO, "recipes", f"{twin}.yaml"))
        model, train = recipe["model"], recipe["train"]
        assert (train["optimizer"], train["lr"], train["weight_decay"], train["batch_size"]) == ("adamw", lr, 0.01, 16)
        assert set(train["custom_keys"]) == keys and (train["custom_keys"].get("head") or {}).get("lr_mult", 10.0) == 10.0
        assert (train["max_iters"], train["eval_interval"], train["warmup_iters"], train["poly_power"]) == (iterations, interval, 1500, 1.0)
        assert model["pretrained"] == f"pretrained/{pretrained}" and model["dropout"] == 0.1


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.custom_keys={norm: 0}", "train.custom_keys.norm: must be a mapping with lr_mult and/or decay_mult"),
        ("train.custom_keys={norm: {decay: 0}}", "train.custom_keys.norm.decay: unknown key; allowed keys of `train.custom_keys.norm`: decay_mult, lr_mult"),
        ("train.custom_keys={norm: {decay_mult: -1}}", "train.custom_keys.norm.decay_mult: must be >= 0.0"),
    ],
)
def test_bad_custom_keys_name_the_key(tmp_path, override, fragment):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, MINIMAL), overrides=[override])
    assert fragment in str(info.value)


def test_head_lr_mult_needs_a_head_custom_key(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL), overrides=["train.custom_keys={norm: {decay_mult: 0}}"])
    assert recipe["train"]["head_lr_mult"] is None
    with pytest.raises(RecipeError, match="train.head_lr_mult: sets the lr of the `head` custom key, but train.custom_keys has none"):
        load_recipe(write(tmp_path, MINIMAL), overrides=["train.custom_keys={norm: {decay_mult: 0}}", "train.head_lr_mult=5"])
    keys = load_recipe(write(tmp_path, MINIMAL), overrides=["train.custom_keys={head: {lr_mult: 4}}"])["train"]
    assert keys["head_lr_mult"] == 4.0


def test_defaults_and_num_classes_from_data(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL, "my_run.yaml"))
    assert recipe["name"] == "my_run"
    assert recipe["model"]["num_classes"] == 150  # taken from the ADE20K data source
    # The defaults, with the head lr multiplier resolved from the default custom keys (x10).
    expected = {k: v for k, v in TRAIN_DEFAULTS.items() if k != "momentum"}  # adamw: no sgd key
    assert recipe["train"] == {**expected, "head_lr_mult": 10.0}
    assert recipe["model"]["ssa"] is True and recipe["model"]["dropout"] == 0.1


def test_overrides_are_yaml_values(tmp_path):
    recipe = load_recipe(
        write(tmp_path, MINIMAL),
        overrides=["train.max_iters=100", "train.betas=[0.8, 0.9]", "model.ssa=false", "model.backbone.depths=[1,1,1,1]", "eval.mode=slide"],
    )
    assert recipe["train"]["max_iters"] == 100
    assert recipe["train"]["betas"] == [0.8, 0.9]
    assert recipe["model"]["ssa"] is False
    assert recipe["model"]["backbone"] == {"depths": [1, 1, 1, 1]}
    assert recipe["eval"]["mode"] == "slide"
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("model.pretrained=w/mscan_t.pth") == (["model", "pretrained"], "w/mscan_t.pth")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.famly=segnext", "model.famly: unknown key; allowed keys of `model`: auxiliary_head, backbone"),
        ("model.family=unet", "model.family: must be one of segnext, segformer, upernet, fcn, ocrnet, seaformer, afformer, cgrseg, got 'unet'"),
        ("model.size=xl", "model.size: must be one of t, s, b, l"),
        ("model.ssa=maybe", "model.ssa: must be true or false"),
        ("model.num_classes=150.5", "model.num_classes: must be an integer"),
        ("model.num_classes=19", "model.num_classes: is 19 but the data has 150 classes"),
        ("model.backbone.widths=[1]", "model.backbone.widths: unknown key; allowed keys of `model.backbone` (segnext): depths, drop_path_rate, embed_dims, mlp_ratios"),
        ("model.backbone.type=swin", "model.backbone.type: 'swin' is not a segnext backbone; allowed: none (only upernet takes"),
        ("model.auxiliary_head.channels=8", "model.auxiliary_head: segnext has no auxiliary head; remove the key"),
        ("model.image_size=100", "model.image_size: must be multiples of 32"),
        ("train.lr=-1", "train.lr: must be > 0.0"),
        ("train.precision=fp8", "train.precision: must be one of float32, mixed_float16, mixed_bfloat16"),
        ("train.batch_size=0", "train.batch_size: must be >= 1"),
        ("train.loss_resize=nearest", "train.loss_resize: must be one of matmul, banded, gather, got 'nearest'"),
        ("train.compile_loss=sometimes", "train.compile_loss: must be true or false, got 'sometimes'"),
        ("train.epochs=3", "train.epochs: unknown key"),
        ("eval.mode=tiles", "eval.mode: must be one of whole, slide"),
        ("eval.stride=[600, 341]", "eval.stride: [600, 341] is larger than eval.crop_size [512, 512]"),
        ("model.ssa_loss_weights={dice: 1}", "model.ssa_loss_weights.dice: unknown loss term; the terms are main_ce,"),
        ("model.ssa_loss_weights={spatial_distill: -1}", "model.ssa_loss_weights.spatial_distill: must be >= 0.0"),
        ("model.ssa_loss_weights=[1]", "model.ssa_loss_weights: must be a mapping of loss term to weight"),
        ("optimizer.lr=1", "optimizer: override 'optimizer.lr=1': unknown section"),
        ("train.lr", "write it as key.sub=value"),
    ],
)
def test_bad_values_name_the_key(tmp_path, override, fragment):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, MINIMAL), overrides=[override])
    assert fragment in str(info.value)


def test_ssa_loss_weights_need_an_ssa_model_and_eval_scale_follows_the_data(tmp_path):
    with pytest.raises(RecipeError, match="model.ssa_loss_weights: weights SSA's loss terms; this model has model.ssa: false"):
        load_recipe(write(tmp_path, MINIMAL), overrides=["model.ssa=false", "model.ssa_loss_weights={main_ce: 2}"])
    recipe = load_recipe(write(tmp_path, MINIMAL), overrides=["model.ssa_loss_weights={semantic_distill: 0}", "data.scale=[1024, 256]"])
    assert recipe["model"]["ssa_loss_weights"] == {"semantic_distill": 0.0}
    assert recipe["eval"]["scale"] == [1024, 256]  # not given: the data section's scale
    assert load_recipe(write(tmp_path, MINIMAL), overrides=["eval.scale=[512, 128]"])["eval"]["scale"] == [512, 128]


def test_bad_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "nope.yaml"))
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "model: [unclosed"))
    with pytest.raises(RecipeError, match="trainer: unknown section; allowed sections: name, model, data, train, eval"):
        load_recipe(write(tmp_path, MINIMAL + "trainer: {}\n"))
    with pytest.raises(RecipeError, match="model: missing section"):
        load_recipe(write(tmp_path, "data: {source: ade20k, root: x}\n"))
    with pytest.raises(RecipeError, match="data.source"):
        load_recipe(write(tmp_path, "model: {family: segnext}\ndata: {source: cityscapes}\n"))


def test_missing_pretrained_file_is_named_when_training_starts(tmp_path):
    # A recipe may name the reference's pretrained file (it loads, converts and tests without it);
    # training checks it first thing, naming the key and the fixes.
    recipe = load_recipe(write(tmp_path, MINIMAL), overrides=["model.pretrained=missing/mscan_t.pth"])
    with pytest.raises(RecipeError, match="model.pretrained: file 'missing/mscan_t.pth' does not exist; .*--no-pretrained"):
        check_pretrained(recipe["model"])


def test_existing_pretrained_file_is_accepted(tmp_path):
    weights = tmp_path / "mscan_t.pth"
    weights.write_bytes(b"x")
    recipe = load_recipe(write(tmp_path, MINIMAL), overrides=[f"model.pretrained={weights}"])
    assert recipe["model"]["pretrained"] == str(weights)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"family": "fcn", "size": "r50", "seed": 1}, "model.seed: seeds drop-path and NMF draws; ResNetV1c"),
        ({"family": "upernet", "size": "t", "image_size": [64, 64]}, "model.image_size: fixes SegFormer's MiT"),
        ({"family": "segnext", "size": "t", "source": "keras_hub"}, "model.source: chooses SegFormer's MiT"),
        ({"family": "upernet", "size": "t", "seed": 1, "backbone": {"type": "keras_hub", "preset": "x"}},
         "model.seed: .*a keras_hub backbone"),
    ],
)
def test_model_keys_nothing_would_read_are_refused(model, message):
    from ssaseg_keras.recipes import validate_recipe

    with pytest.raises(RecipeError, match=message):
        validate_recipe({"model": {**model, "num_classes": 5}, "data": {"source": "synthetic", "num_classes": 5}})
