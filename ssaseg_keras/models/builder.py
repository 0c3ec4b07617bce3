"""`build_segmentor`: a recipe's `model:` section -> a built `Segmentor`."""

from __future__ import annotations

import copy

from ssaseg_keras.layers.ssa import SSAClassifier
from ssaseg_keras.models.presets import PRESETS
from ssaseg_keras.models.segmentor import PixelClassifier, Segmentor
from ssaseg_keras.utils.errors import RecipeError
from ssaseg_keras.utils.variables import count_parameters

MODEL_DEFAULTS = {
    "family": "segnext",
    "size": "t",
    "num_classes": 150,
    "ssa": True,
    "dropout": 0.1,
    "drop_path": None,  # None: the preset's rate
    "ssa_loss_weights": {},  # SSA only: {term: weight} overriding DEFAULT_SSA_LOSS_WEIGHTS (ablations)
    "pretrained": None,  # read by training (ssaseg_keras.convert.load_pretrained_backbone), not here
    "source": "keras_cv",
    "image_size": None,  # optional fixed input size [H, W] (SegFormer); None: any multiple of 32
    "seed": None,
    "backbone": {},  # overrides of the preset's backbone arguments
    "head": {},  # overrides of the preset's head arguments
}


def _preset(config):
    family, size = config["family"], str(config["size"]).lower()
    if family not in PRESETS:
        raise RecipeError(f"model.family: unknown family {family!r}; allowed: {', '.join(PRESETS)}.")
    if size not in PRESETS[family]:
        raise RecipeError(
            f"model.size: unknown {family} size {config['size']!r}; allowed: {', '.join(PRESETS[family])}."
        )
    preset = copy.deepcopy(PRESETS[family][size])
    for part in ("backbone", "head"):
        overrides = config.get(part) or {}
        unknown = sorted(set(overrides) - set(preset[part]))
        if unknown:
            raise RecipeError(
                f"model.{part}: unknown keys {unknown} for {family}; allowed: {sorted(preset[part])}."
            )
        preset[part].update(overrides)
    return preset


def build_backbone(config, preset):
    """The backbone of `config` (family, drop_path, image_size, source, seed) with `preset` sizes."""
    args = dict(preset["backbone"])
    if config.get("drop_path") is not None:
        args["drop_path_rate"] = float(config["drop_path"])
    if config["family"] == "segnext":
        from ssaseg_keras.models.backbones.mscan import MSCANBackbone

        return MSCANBackbone(**args, seed=config.get("seed"), name="backbone")
    from ssaseg_keras.models.backbones.mit import MiTBackbone

    size = config.get("image_size")
    if isinstance(size, int):
        size = (size, size)
    return MiTBackbone(
        **args,
        source=config.get("source", "keras_cv"),
        image_shape=(None, None, 3) if size is None else (int(size[0]), int(size[1]), 3),
        seed=config.get("seed"),
        name="backbone",
    )


def build_decode_head(config, preset):
    args = dict(preset["head"])
    if config["family"] == "segnext":
        from ssaseg_keras.models.heads.ham_head import LightHamHead

        return LightHamHead(**args, seed=config.get("seed"), name="decode_head")
    from ssaseg_keras.models.heads.segformer_head import SegFormerHead

    return SegFormerHead(**args, name="decode_head")


def build_segmentor(model_config: dict, training: bool = True, loss_resize_method: str = "matmul") -> Segmentor:
    """Build (and build the variables of) the model a recipe's `model:` section describes.

    Args:
        model_config: keys of `MODEL_DEFAULTS` (missing ones take those defaults): `family`
            (segnext | segformer), `size` (t/s/b/l | b0..b5), `num_classes`, `ssa` (SSA classifier
            with its training teacher, or the plain 1x1 baseline), `dropout`, `drop_path`,
            `ssa_loss_weights`, `source` (keras_cv | keras_hub, SegFormer only), `image_size`,
            `seed`, and `backbone`/`head` dicts overriding the size preset (e.g. a tiny test model).
            `pretrained` is not read here: training loads it after building
            (`ssaseg_keras.convert.load_pretrained_backbone`).
        training: build the training form (an SSA model carries its teacher); False builds the
            teacher-free inference form directly (see also `inference_model`).
        loss_resize_method: how the losses upsample logits (the recipe's `train.loss_resize`).

    Returns:
        A built `Segmentor`.
    """
    config = {**MODEL_DEFAULTS, **(model_config or {})}
    preset = _preset(config)
    backbone = build_backbone(config, preset)
    decode_head = build_decode_head(config, preset)
    num_classes = int(config["num_classes"])
    loss_weights = dict(config.get("ssa_loss_weights") or {})
    if config["ssa"]:
        classifier = SSAClassifier(
            num_classes, dropout=float(config["dropout"]), with_teacher=training, name="classifier"
        )
    else:
        if loss_weights:
            raise RecipeError("model.ssa_loss_weights: only an SSA model (model.ssa: true) has these loss terms")
        classifier = PixelClassifier(num_classes, dropout=float(config["dropout"]), name="classifier")
    model = Segmentor(
        backbone,
        decode_head,
        classifier,
        loss_resize_method=loss_resize_method,
        ssa_loss_weights=loss_weights or None,
        name=f"{config['family']}_{config['size']}",
    )
    model.build((None, None, None, 3))
    return model


def model_summary_counts(model):
    """{"trainable": n, "non_trainable": m} parameter counts of a built model."""
    return {
        "trainable": count_parameters(model.trainable_variables),
        "non_trainable": count_parameters(model.non_trainable_variables),
    }
