"""Recipes: one YAML file describes a run (`name`, `model`, `data`, `train`, `eval`).

`load_recipe(path, overrides)` reads the file, applies `key.sub=value` overrides (values parsed as
YAML), fills defaults and validates every key: an unknown key, a wrong type or value, or a missing
file raises `RecipeError` naming the key and what is allowed. The result is a plain nested dict.

Defaults of `train` are the reference schedule (SegNeXt-T on COCO-Stuff-10K, spec): AdamW lr 6e-5,
betas (0.9, 0.999), weight decay 0.01, head lr x10, 1500 linear warm-up iterations from ratio 1e-6,
then poly decay (power 1) to 0, batch 16, 80k iterations.
"""

from __future__ import annotations

import copy
import numbers
import os

import yaml

from ssaseg_keras.losses.ssa import LOSS_TERMS
from ssaseg_keras.models.builder import MODEL_DEFAULTS, classifier_dropout, model_preset
from ssaseg_keras.models.presets import LIBRARY_BACKBONE_TYPES, PRESETS
from ssaseg_keras.ops.resize import RESIZE_METHODS
from ssaseg_keras.training.evaluation import EVAL_MODES
from ssaseg_keras.training.optimizer import DEFAULT_CUSTOM_KEYS
from ssaseg_keras.utils.errors import RecipeError

SECTIONS = ("name", "model", "data", "train", "eval")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SOURCES = ("keras_cv", "keras_hub")

TRAIN_DEFAULTS = {
    "max_iters": 80000,
    "batch_size": 16,
    # adamw (SegNeXt, SegFormer, UperNet-Swin: torch's AdamW, decoupled decay) or sgd (FCN, OCRNet:
    # torch's SGD, momentum, decay added to the gradient); both with the warm-up + poly schedule.
    "optimizer": "adamw",
    "lr": 6e-5,
    "weight_decay": 0.01,
    "betas": [0.9, 0.999],  # adamw only
    "momentum": 0.9,  # sgd only
    "warmup_iters": 1500,
    "warmup_ratio": 1e-6,
    "poly_power": 1.0,
    "min_lr": 0.0,
    "head_lr_mult": None,  # the "head" custom key's lr_mult (10 in the default keys); null: the keys'
    # mmcv's paramwise_cfg.custom_keys: {substring of a reference parameter name: {lr_mult, decay_mult}};
    # null: SegNeXt's / SegFormer's {pos_block: decay 0, norm: decay 0, head: lr x10}; {}: none (every
    # parameter at the base lr and decay, as mmcv without paramwise_cfg).
    "custom_keys": None,
    "eval_interval": 8000,
    "checkpoint_interval": 8000,
    "log_interval": 50,
    "seed": 0,
    "precision": "float32",
    "accumulate_steps": 1,
    "clip_grad_norm": None,
    "keep_checkpoints": 3,
    "resume": False,  # true / "auto": continue from the work dir's latest checkpoint if there is one
    # How the losses upsample logits to label size: dense interpolation matmuls or two-tap gathers.
    # The same numbers either way (a speed choice per device; see BENCHMARKS.md).
    "loss_resize": "matmul",
    # PyTorch: compile the losses' image-size terms with torch.compile (fused passes; one compile per
    # input shape, tens of seconds, and torch's inductor toolchain). JAX and TensorFlow compile the
    # whole training step anyway, so there it changes nothing.
    "compile_loss": False,
    # Data-parallel devices: auto (every local accelerator; PyTorch: the processes torchrun
    # started), or N. batch_size stays the global batch (README, "Training on several GPUs").
    "devices": "auto",
}

EVAL_DEFAULTS = {
    "mode": "whole",  # whole | slide (windows of crop_size every stride, logits averaged)
    "scale": None,  # keep-ratio resize of every evaluated / predicted image; null: data.scale
    "crop_size": [512, 512],  # slide mode window (height, width)
    "stride": [341, 341],  # slide mode step (height, width)
}


# ---------------------------------------------------------------- helpers
def _fail(key, message):
    return RecipeError(f"{key}: {message}")


def _check_keys(section, allowed, where):
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise _fail(
            f"{where}.{unknown[0]}",
            f"unknown key; allowed keys of `{where}`: {', '.join(sorted(allowed))}",
        )


def _number(value, key, low=None, high=None, integer=False, allow_none=False, low_open=False):
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(key, f"must be {kind}, got {value!r}")
    if integer and int(value) != value:
        raise _fail(key, f"must be {kind}, got {value!r}")
    value = int(value) if integer else float(value)
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise _fail(key, f"must be {bound}, got {value}")
    if high is not None and value > high:
        raise _fail(key, f"must be <= {high}, got {value}")
    return value


def _bool(value, key):
    if not isinstance(value, bool):
        raise _fail(key, f"must be true or false, got {value!r}")
    return value


def _choice(value, key, allowed):
    if value not in allowed:
        raise _fail(key, f"must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


def _pair(value, key, integer=True, low=None):
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = [value, value]
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _fail(key, f"must be a number or a list of 2 numbers, got {value!r}")
    return [_number(v, key, low=low, integer=integer) for v in value]


# --------------------------------------------------------------- sections
def validate_model(section):
    if not isinstance(section, dict):
        raise _fail("model", f"must be a mapping, got {type(section).__name__}")
    _check_keys(section, MODEL_DEFAULTS, "model")
    cfg = {**copy.deepcopy(MODEL_DEFAULTS), **section}
    family = _choice(cfg["family"], "model.family", tuple(PRESETS))
    cfg["size"] = str(cfg["size"]).lower()
    _choice(cfg["size"], "model.size", tuple(PRESETS[family]))
    cfg["num_classes"] = _number(cfg["num_classes"], "model.num_classes", low=1, integer=True)
    cfg["ssa"] = _bool(cfg["ssa"], "model.ssa")
    cfg["dropout"] = _number(cfg["dropout"], "model.dropout", 0.0, 0.99, allow_none=True)
    weights = cfg["ssa_loss_weights"] if cfg["ssa_loss_weights"] is not None else {}
    if not isinstance(weights, dict):
        raise _fail("model.ssa_loss_weights", f"must be a mapping of loss term to weight, got {weights!r}")
    for term in weights:
        if term not in LOSS_TERMS:
            raise _fail(f"model.ssa_loss_weights.{term}", f"unknown loss term; the terms are {', '.join(LOSS_TERMS)}")
    cfg["ssa_loss_weights"] = {
        term: _number(value, f"model.ssa_loss_weights.{term}", low=0.0) for term, value in weights.items()
    }
    if cfg["ssa_loss_weights"] and not cfg["ssa"]:
        raise _fail("model.ssa_loss_weights", "weights SSA's loss terms; this model has model.ssa: false")
    cfg["drop_path"] = _number(cfg["drop_path"], "model.drop_path", 0.0, 0.99, allow_none=True)
    cfg["source"] = _choice(cfg["source"], "model.source", SOURCES)
    if cfg["seed"] is not None:
        cfg["seed"] = _number(cfg["seed"], "model.seed", low=0, integer=True)
    if cfg["image_size"] is not None:
        size = _pair(cfg["image_size"], "model.image_size", low=32)
        if size[0] % 32 or size[1] % 32:
            raise _fail("model.image_size", f"must be multiples of 32, got {size}")
        cfg["image_size"] = size
    for part in ("backbone", "head", "auxiliary_head", "region_head"):
        if cfg[part] is None:
            cfg[part] = {}
        if part == "auxiliary_head" and cfg[part] is False:
            continue  # UperNet without its auxiliary head
        if not isinstance(cfg[part], dict):
            raise _fail(f"model.{part}", f"must be a mapping of preset overrides, got {cfg[part]!r}")
    preset = model_preset(cfg)  # RecipeError naming the key for unknown overrides / backbone types
    cfg["dropout"] = classifier_dropout(cfg, preset)  # the resolved recipe names the rate used
    pretrained = cfg["pretrained"]
    if pretrained is not None:
        if not isinstance(pretrained, str) or not pretrained:
            raise _fail("model.pretrained", f"must be a file path, got {pretrained!r}")
        if preset["backbone"].get("type") in LIBRARY_BACKBONE_TYPES:
            raise _fail(
                "model.pretrained",
                f"a {preset['backbone']['type']} backbone loads its weights from its preset: set "
                "model.backbone.preset and model.backbone.load_weights: true, and remove model.pretrained",
            )
        # Whether the file exists is checked when training starts (`check_pretrained`): a recipe
        # names the reference's file, which a machine without it can still read, convert or test.
    return cfg


def check_pretrained(model_config):
    """Raise RecipeError when `model.pretrained` names a file that is not there (presets pass)."""
    pretrained = model_config.get("pretrained")
    if pretrained is None:
        return
    is_preset = model_config["family"] == "segformer" and not os.path.splitext(pretrained)[1]
    if is_preset or os.path.isfile(pretrained):
        return
    hints = {
        "segformer": "a local .weights.h5 file or a keras-cv preset name such as mit_b0_imagenet",
        "segnext": "the MSCAN ImageNet .pth (e.g. mscan_t.pth from the SegNeXt release)",
        "upernet": "the Swin ImageNet .pth the reference config names (official or mmseg layout)",
        "fcn": "open-mmlab's ResNetV1c ImageNet .pth the reference config names (resnet101_v1c)",
        "ocrnet": "the HRNetV2 ImageNet .pth the reference config names (hrnetv2_w48, open-mmlab / msra)",
        "seaformer": "the SeaFormer ImageNet .pth the reference config names (SeaFormer_B_cls_76.4.pth / _L_cls_79.9)",
        "afformer": "the AFFormer ImageNet .pth the reference config names (AFFormer_base_ImageNet1k_new.pth)",
        "cgrseg": "the EfficientFormerV2 ImageNet .pth the reference config names (eformer_s2_450.pth / eformer_l_450.pth)",
    }
    raise _fail(
        "model.pretrained",
        f"file {pretrained!r} does not exist; download {hints[model_config['family']]} there, point "
        "to it with --set model.pretrained=PATH, or train from scratch with --no-pretrained",
    )


def validate_data(section):
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise _fail("data", f"must be a mapping, got {type(section).__name__}")
    try:
        from ssaseg_keras.data.config import validate_data_config
    except ImportError:
        return dict(section)
    return validate_data_config(section)


def validate_train(section):
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise _fail("train", f"must be a mapping, got {type(section).__name__}")
    _check_keys(section, TRAIN_DEFAULTS, "train")
    cfg = {**copy.deepcopy(TRAIN_DEFAULTS), **section}
    for key in ("max_iters", "batch_size", "eval_interval", "checkpoint_interval", "log_interval",
                "accumulate_steps", "keep_checkpoints"):
        cfg[key] = _number(cfg[key], f"train.{key}", low=1, integer=True)
    cfg["warmup_iters"] = _number(cfg["warmup_iters"], "train.warmup_iters", low=0, integer=True)
    cfg["seed"] = _number(cfg["seed"], "train.seed", low=0, integer=True)
    cfg["lr"] = _number(cfg["lr"], "train.lr", low=0.0, low_open=True)
    cfg["weight_decay"] = _number(cfg["weight_decay"], "train.weight_decay", low=0.0)
    cfg["warmup_ratio"] = _number(cfg["warmup_ratio"], "train.warmup_ratio", 0.0, 1.0)
    cfg["poly_power"] = _number(cfg["poly_power"], "train.poly_power", low=0.0)
    cfg["min_lr"] = _number(cfg["min_lr"], "train.min_lr", low=0.0)
    cfg["custom_keys"] = _custom_keys(cfg["custom_keys"])
    cfg["head_lr_mult"] = _number(cfg["head_lr_mult"], "train.head_lr_mult", low=0.0, low_open=True, allow_none=True)
    cfg["optimizer"] = _choice(cfg["optimizer"], "train.optimizer", ("adamw", "sgd"))
    for key, owner in (("betas", "adamw"), ("momentum", "sgd")):
        if cfg["optimizer"] != owner:
            if key in section:
                raise _fail(f"train.{key}", f"applies to train.optimizer: {owner} only (this recipe uses {cfg['optimizer']}); remove it")
            del cfg[key]  # the resolved recipe holds only the keys its optimizer reads
    if cfg["optimizer"] == "sgd":
        cfg["momentum"] = _number(cfg["momentum"], "train.momentum", 0.0, 0.999999)
    keys = DEFAULT_CUSTOM_KEYS if cfg["custom_keys"] is None else cfg["custom_keys"]
    if cfg["head_lr_mult"] is None:
        cfg["head_lr_mult"] = keys["head"].get("lr_mult", 1.0) if "head" in keys else None
    elif "head" not in keys:
        raise _fail(
            "train.head_lr_mult",
            "sets the lr of the `head` custom key, but train.custom_keys has none: add "
            "`head: {lr_mult: ...}` to train.custom_keys or remove train.head_lr_mult",
        )
    if cfg["optimizer"] == "adamw":
        betas = cfg["betas"]
        if not isinstance(betas, list | tuple) or len(betas) != 2:
            raise _fail("train.betas", f"must be a list of 2 numbers in [0, 1), got {betas!r}")
        cfg["betas"] = [_number(b, "train.betas", 0.0, 0.999999) for b in betas]
    cfg["precision"] = _choice(cfg["precision"], "train.precision", PRECISIONS)
    cfg["loss_resize"] = _choice(cfg["loss_resize"], "train.loss_resize", RESIZE_METHODS)
    cfg["compile_loss"] = _bool(cfg["compile_loss"], "train.compile_loss")
    devices = cfg["devices"]
    if devices != "auto" and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
        raise _fail("train.devices", f"must be auto or a number of devices >= 1, got {devices!r}")
    if devices != "auto" and cfg["batch_size"] % devices:
        raise _fail(
            "train.batch_size",
            f"{cfg['batch_size']} (the global batch) does not split evenly over train.devices={devices}: "
            f"make it a multiple of {devices}",
        )
    if cfg["resume"] not in (True, False, "auto"):
        raise _fail("train.resume", f"must be true, false or auto, got {cfg['resume']!r}")
    cfg["clip_grad_norm"] = _number(
        cfg["clip_grad_norm"], "train.clip_grad_norm", low=0.0, low_open=True, allow_none=True
    )
    return cfg


def _custom_keys(keys):
    """train.custom_keys validated: {str: {"lr_mult": x, "decay_mult": y}} ({} for none) or None."""
    if keys is None:
        return None
    if not isinstance(keys, dict):
        raise _fail("train.custom_keys", f"must be a mapping of name substring to {{lr_mult, decay_mult}}, got {keys!r}")
    out = {}
    for key, multipliers in keys.items():
        where = f"train.custom_keys.{key}"
        if not isinstance(multipliers, dict) or not multipliers:
            raise _fail(where, f"must be a mapping with lr_mult and/or decay_mult, got {multipliers!r}")
        _check_keys(multipliers, ("lr_mult", "decay_mult"), where)
        out[str(key)] = {name: _number(value, f"{where}.{name}", low=0.0) for name, value in multipliers.items()}
    return out


def validate_eval(section):
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise _fail("eval", f"must be a mapping, got {type(section).__name__}")
    _check_keys(section, EVAL_DEFAULTS, "eval")
    cfg = {**copy.deepcopy(EVAL_DEFAULTS), **section}
    cfg["mode"] = _choice(cfg["mode"], "eval.mode", EVAL_MODES)
    for key in ("scale", "crop_size", "stride"):
        if key == "scale" and cfg[key] is None:
            continue  # filled with data.scale by validate_recipe
        cfg[key] = _pair(cfg[key], f"eval.{key}", low=1)
    if any(step > crop for step, crop in zip(cfg["stride"], cfg["crop_size"])):
        raise _fail(
            "eval.stride",
            f"{cfg['stride']} is larger than eval.crop_size {cfg['crop_size']}: slide windows would leave "
            "pixels uncovered; use a stride <= the crop size (the reference: 341 for 512)",
        )
    return cfg


def validate_recipe(recipe, name=None):
    """A parsed recipe mapping -> the validated, defaults-filled recipe dict."""
    if not isinstance(recipe, dict):
        raise RecipeError(f"a recipe must be a mapping with sections {', '.join(SECTIONS)}")
    unknown = sorted(set(recipe) - set(SECTIONS))
    if unknown:
        raise _fail(unknown[0], f"unknown section; allowed sections: {', '.join(SECTIONS)}")
    out = {}
    recipe_name = recipe.get("name", name)
    if recipe_name is not None and not isinstance(recipe_name, str):
        raise _fail("name", f"must be a string, got {recipe_name!r}")
    out["name"] = recipe_name or "recipe"
    if "model" not in recipe:
        raise _fail("model", "missing section: give at least `family`, `size` and `num_classes`")
    out["data"] = validate_data(recipe.get("data"))
    model = dict(recipe["model"] or {}) if isinstance(recipe["model"], dict) else recipe["model"]
    data_classes = out["data"].get("num_classes") if isinstance(out["data"], dict) else None
    if isinstance(model, dict) and "num_classes" not in model and data_classes:
        model["num_classes"] = data_classes
    out["model"] = validate_model(model)
    if data_classes and out["model"]["num_classes"] != data_classes:
        raise _fail(
            "model.num_classes",
            f"is {out['model']['num_classes']} but the data has {data_classes} classes; "
            "remove model.num_classes or make them agree",
        )
    out["train"] = validate_train(recipe.get("train"))
    out["eval"] = validate_eval(recipe.get("eval"))
    if out["eval"]["scale"] is None:
        data_scale = out["data"].get("scale") if isinstance(out["data"], dict) else None
        if data_scale is None:
            raise _fail("eval.scale", "is not set and the data section has no scale; give eval.scale: [2048, 512]")
        out["eval"]["scale"] = [int(v) for v in data_scale]
    return out


# -------------------------------------------------------------- overrides
def parse_override(text):
    """`"train.lr=1e-4"` -> (["train", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: write it as key.sub=value, e.g. train.max_iters=1000")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise RecipeError(f"override {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise RecipeError(f"override {text!r}: the value is not valid YAML ({error})") from error
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return path, value


def apply_overrides(recipe, overrides):
    """A copy of the raw recipe mapping with each `key.sub=value` override set."""
    recipe = copy.deepcopy(recipe)
    for text in overrides or ():
        path, value = parse_override(text)
        if path[0] not in SECTIONS:
            raise _fail(path[0], f"override {text!r}: unknown section; allowed: {', '.join(SECTIONS)}")
        node = recipe
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise _fail(".".join(path[: depth + 1]), f"override {text!r}: is not a mapping")
            node = child
        node[path[-1]] = value
    return recipe


RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipe_files")


def packaged_recipe_names():
    """Names of the recipes shipped with the package (the repository's recipes/ folder), sorted."""
    if not os.path.isdir(RECIPE_DIR):
        return []
    return sorted(os.path.splitext(name)[0] for name in os.listdir(RECIPE_DIR) if name.endswith(".yaml"))


def packaged_recipe_path(name):
    """The file of the shipped recipe `name` (with or without .yaml), or None."""
    name = os.fspath(name)
    if os.sep in name or "/" in name:
        return None
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = os.path.join(RECIPE_DIR, f"{stem}.yaml")
    return path if os.path.isfile(path) else None


def load_recipe(path, overrides=()):
    """Read, override and validate a recipe YAML file (or a shipped recipe by name); returns the
    nested dict.

    Raises:
        RecipeError naming the file or key at fault.
    """
    path = os.fspath(path)
    if not os.path.isfile(path) and packaged_recipe_path(path) is not None:
        path = packaged_recipe_path(path)  # a shipped recipe by name, e.g. "segnext_t_ade20k"
    if not os.path.isfile(path):
        raise RecipeError(
            f"recipe {path!r} does not exist; give a YAML file or a shipped recipe name "
            f"({', '.join(packaged_recipe_names()[:4])}, ...: `ssaseg-keras recipes` lists them)"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {path!r} is not valid YAML: {error}") from error
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path!r} must be a mapping with sections {', '.join(SECTIONS)}")
    raw = apply_overrides(raw, overrides)
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        return validate_recipe(raw, name=name)
    except RecipeError as error:
        raise RecipeError(f"recipe {path!r}: {error}") from error
