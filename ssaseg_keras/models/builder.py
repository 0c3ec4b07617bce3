"""`build_segmentor`: a recipe's `model:` section -> a built `Segmentor`."""

from __future__ import annotations

import contextlib
import copy

from ssaseg_keras.layers.ssa import SSAClassifier
from ssaseg_keras.models.presets import (
    BACKBONE_TYPES,
    KERAS_HUB_BACKBONE_KEYS,
    LIBRARY_BACKBONE_TYPES,
    PRESETS,
)
from ssaseg_keras.models.segmentor import PixelClassifier, Segmentor
from ssaseg_keras.utils.errors import RecipeError
from ssaseg_keras.utils.variables import count_parameters

MODEL_DEFAULTS = {
    "family": "segnext",
    "size": "t",
    "num_classes": 150,
    "ssa": True,
    "dropout": None,  # None: the preset's classifier dropout (0.1; OCRNet 0)
    "drop_path": None,  # None: the preset's rate
    "ssa_loss_weights": {},  # SSA only: {term: weight} overriding DEFAULT_SSA_LOSS_WEIGHTS (ablations)
    "pretrained": None,  # read by training (ssaseg_keras.convert.load_pretrained_backbone), not here
    "source": "keras_cv",
    "image_size": None,  # optional fixed input size [H, W] (SegFormer); None: any multiple of 32
    "seed": None,
    "backbone": {},  # overrides of the preset's backbone arguments (UperNet: or a keras-hub backbone)
    "head": {},  # overrides of the preset's head arguments
    "auxiliary_head": {},  # overrides of the preset's auxiliary head (UperNet, FCN); false: none
    "region_head": {},  # overrides of the preset's cascade first stage (OCRNet)
}


def classifier_dropout(config, preset):
    """`model.dropout`, or the preset's classifier dropout when it is None (0.1 where unset)."""
    return float(config["dropout"]) if config.get("dropout") is not None else float(preset.get("dropout", 0.1))


def model_preset(config):
    """The family/size preset with the recipe's `backbone`, `head` and `auxiliary_head` overrides."""
    family, size = config["family"], str(config["size"]).lower()
    if family not in PRESETS:
        raise RecipeError(f"model.family: unknown family {family!r}; allowed: {', '.join(PRESETS)}.")
    if size not in PRESETS[family]:
        raise RecipeError(
            f"model.size: unknown {family} size {config['size']!r}; allowed: {', '.join(PRESETS[family])}."
        )
    preset = copy.deepcopy(PRESETS[family][size])
    backbone = dict(config.get("backbone") or {})
    typed = "type" in preset["backbone"]  # a family whose backbone can be chosen (UperNet)
    if "type" in backbone and (not typed or backbone["type"] not in BACKBONE_TYPES):
        allowed = ", ".join(BACKBONE_TYPES) if typed else "none (only upernet takes model.backbone.type)"
        raise RecipeError(f"model.backbone.type: {backbone['type']!r} is not a {family} backbone; allowed: {allowed}.")
    if backbone.get("type") in LIBRARY_BACKBONE_TYPES:
        # UperNet over a keras-hub / keras-cv feature pyramid: the recipe names the whole backbone.
        kind = backbone["type"]
        preset["backbone"] = {"type": kind}
        _check_overrides(backbone, KERAS_HUB_BACKBONE_KEYS, "model.backbone", f"a {kind} backbone")
        if not backbone.get("preset") and not backbone.get("class_name"):
            raise RecipeError(
                f"model.backbone: a {kind} backbone needs `preset` (a {kind.replace('_', '-')} preset name "
                "or a local preset directory) or `class_name` (e.g. ResNetBackbone) with `arguments`."
            )
    else:
        _check_overrides(backbone, preset["backbone"], "model.backbone", family)
    preset["backbone"].update(backbone)
    _refuse_unread_keys(config, preset["backbone"].get("type"))
    for part in ("head", "auxiliary_head", "region_head"):
        overrides = config.get(part)
        if part == "auxiliary_head" and overrides is False:
            preset.pop(part, None)  # an ablation without the auxiliary head
            continue
        if overrides is not None and not isinstance(overrides, dict):
            raise RecipeError(f"model.{part}: must be a mapping of preset overrides, got {overrides!r}")
        overrides = overrides or {}
        if overrides and part not in preset:
            raise RecipeError(f"model.{part}: {family} has no {part.replace('_', ' ')}; remove the key.")
        if part in preset:
            _check_overrides(overrides, preset[part], f"model.{part}", family)
            preset[part].update(overrides)
    return preset


def _check_overrides(overrides, allowed, key, what):
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise RecipeError(
            f"{key}.{unknown[0]}: unknown key; allowed keys of `{key}` ({what}): {', '.join(sorted(allowed))}"
        )


def _refuse_unread_keys(config, backbone_type):
    """model.seed / image_size / source where nothing would read them: one error, not a silent no-op."""
    family = config["family"]
    unseeded = family in ("fcn", "ocrnet") or backbone_type in LIBRARY_BACKBONE_TYPES
    if config.get("seed") is not None and unseeded:
        what = {"fcn": "ResNetV1c and FCNHead", "ocrnet": "HRNet and the OCR heads"}.get(
            family, f"a {backbone_type} backbone and UPerHead"
        )
        raise RecipeError(f"model.seed: seeds drop-path and NMF draws; {what} have none to seed. Remove the key.")
    if config.get("image_size") is not None and family != "segformer":
        raise RecipeError(
            f"model.image_size: fixes SegFormer's MiT input size; {family} runs at any multiple of 32. "
            "Remove the key (a keras-hub / keras-cv backbone takes model.backbone.image_shape)."
        )
    if config.get("source", "keras_cv") != "keras_cv" and family != "segformer":
        raise RecipeError(f"model.source: chooses SegFormer's MiT implementation; {family} has none. Remove the key.")


def build_backbone(config, preset):
    """The backbone of `config` (family, drop_path, image_size, source, seed) with `preset` sizes."""
    args = dict(preset["backbone"])
    backbone_type = args.pop("type", None)
    if backbone_type in LIBRARY_BACKBONE_TYPES:
        if config.get("drop_path") is not None:
            raise RecipeError(
                f"model.drop_path: a {backbone_type} backbone takes its own arguments; set the rate in "
                "model.backbone.arguments (if its class has one) and remove model.drop_path."
            )
        if backbone_type == "keras_cv":
            from ssaseg_keras.models.backbones.keras_cv_pyramid import KerasCVBackbone

            return KerasCVBackbone(**args, name="backbone")
        from ssaseg_keras.models.backbones.keras_hub_pyramid import KerasHubBackbone

        return KerasHubBackbone(**args, name="backbone")
    if config["family"] == "fcn":
        from ssaseg_keras.models.backbones.resnet import ResNetV1cBackbone

        if config.get("drop_path") is not None:
            raise RecipeError("model.drop_path: ResNetV1c has no drop-path; remove the key")
        return ResNetV1cBackbone(**args, name="backbone")
    if config["family"] == "ocrnet":
        from ssaseg_keras.models.backbones.hrnet import HRNetBackbone

        if config.get("drop_path") is not None:
            raise RecipeError("model.drop_path: HRNet has no drop-path; remove the key")
        return HRNetBackbone(**args, name="backbone")
    if config.get("drop_path") is not None:
        args["drop_path_rate"] = float(config["drop_path"])
    if config["family"] == "seaformer":
        from ssaseg_keras.models.backbones.seaformer import SeaFormerBackbone

        return SeaFormerBackbone(**args, seed=config.get("seed"), name="backbone")
    if config["family"] == "afformer":
        from ssaseg_keras.models.backbones.afformer import AFFormerBackbone

        return AFFormerBackbone(**args, seed=config.get("seed"), name="backbone")
    if config["family"] == "cgrseg":
        from ssaseg_keras.models.backbones.efficientformer_v2 import EfficientFormerV2Backbone

        return EfficientFormerV2Backbone(**args, seed=config.get("seed"), name="backbone")
    if config["family"] == "segnext":
        from ssaseg_keras.models.backbones.mscan import MSCANBackbone

        return MSCANBackbone(**args, seed=config.get("seed"), name="backbone")
    if backbone_type == "swin":
        from ssaseg_keras.models.backbones.swin import SwinBackbone

        return SwinBackbone(**args, seed=config.get("seed"), name="backbone")
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
    if config["family"] == "upernet":
        from ssaseg_keras.models.heads.uper_head import UPerHead

        return UPerHead(**args, name="decode_head")
    if config["family"] == "fcn":
        from ssaseg_keras.models.heads.fcn_head import FCNHead

        return FCNHead(**args, name="decode_head")
    if config["family"] == "ocrnet":
        from ssaseg_keras.models.heads.ocr_head import OCRHead

        return OCRHead(**args, name="decode_head")
    if config["family"] == "seaformer":
        from ssaseg_keras.models.heads.light_head import LightHead

        return LightHead(**args, name="decode_head")
    if config["family"] == "afformer":
        from ssaseg_keras.models.heads.aff_head import AFFormerHead

        return AFFormerHead(**args, name="decode_head")
    if config["family"] == "cgrseg":
        from ssaseg_keras.models.heads.cgr_head import CGRSegHead

        # The baseline's classifier (the reference's second, DPG stage) also reads the map before
        # linear_fuse; SSA reads only linear_fuse's output.
        return CGRSegHead(**args, return_pre_fuse=not config["ssa"], name="decode_head")
    from ssaseg_keras.models.heads.segformer_head import SegFormerHead

    return SegFormerHead(**args, name="decode_head")


def build_auxiliary_heads(config, preset):
    """The training-only auxiliary heads of the preset (UperNet: one FCNHead), [] for none."""
    if "auxiliary_head" not in preset:
        return []
    from ssaseg_keras.models.heads.auxiliary import AuxiliaryHead
    from ssaseg_keras.models.heads.fcn_head import FCNHead

    args = dict(preset["auxiliary_head"])
    dropout, loss_weight = float(args.pop("dropout")), float(args.pop("loss_weight"))
    head = FCNHead(**args, name="fcn_head")
    return [
        AuxiliaryHead(head, int(config["num_classes"]), dropout=dropout, loss_weight=loss_weight, name="auxiliary_head")
    ]


def build_region_head(config, preset, backbone):
    """The first stage of a cascade decode head (OCRNet: FCNHead + plain classifier, the soft object
    regions), or None for the other families."""
    if "region_head" not in preset:
        return None
    from ssaseg_keras.models.heads.auxiliary import AuxiliaryHead
    from ssaseg_keras.models.heads.fcn_head import FCNHead

    args = dict(preset["region_head"])
    dropout, loss_weight = float(args.pop("dropout")), float(args.pop("loss_weight"))
    if args.get("channels") is None:  # mmseg's configs: the width of the concatenated branches
        index = args["in_index"]
        args["channels"] = sum(backbone.stage_channels[i] for i in (index if isinstance(index, list) else [index]))
    head = FCNHead(**args, name="fcn_head")
    return AuxiliaryHead(head, int(config["num_classes"]), dropout=dropout, loss_weight=loss_weight, name="region_head")


def build_segmentor(model_config: dict, training: bool = True, loss_resize_method: str = "matmul") -> Segmentor:
    """Build (and build the variables of) the model a recipe's `model:` section describes.

    Args:
        model_config: keys of `MODEL_DEFAULTS` (missing ones take those defaults): `family`
            (segnext | segformer | upernet | fcn | ocrnet | seaformer | afformer | cgrseg), `size`
            (t/s/b/l | b0..b5 | t/b/l | r50/r101 | hr18/hr48 | b/l | b | b/l), `num_classes`, `ssa` (SSA classifier with its training teacher, or the plain
            1x1 baseline), `dropout` (None: the preset's), `drop_path`,
            `ssa_loss_weights`, `source` (keras_cv | keras_hub, SegFormer only), `image_size`,
            `seed`, and `backbone`/`head`/`auxiliary_head` dicts overriding the size preset (e.g. a
            tiny test model; OCRNet also `region_head`). UperNet: `backbone` may instead name a
            keras-hub / keras-cv feature-pyramid
            backbone (`type: keras_hub` or `keras_cv` with `preset`, or `class_name` + `arguments`), and
            `auxiliary_head: false` leaves its FCN auxiliary head out.
            `pretrained` is not read here: training loads it after building
            (`ssaseg_keras.convert.load_pretrained_backbone`).
        training: build the training form (an SSA model carries its teacher, UperNet its auxiliary
            head); False builds the deployed form directly (see also `inference_model`).
        loss_resize_method: how the losses upsample logits (the recipe's `train.loss_resize`).

    Returns:
        A built `Segmentor`.
    """
    config = {**MODEL_DEFAULTS, **(model_config or {})}
    preset = model_preset(config)
    with _overrides_named_on_failure(config):
        return _build_segmentor(config, preset, training, loss_resize_method)


@contextlib.contextmanager
def _overrides_named_on_failure(config):
    """An architecture override that cannot build (4 widths given 2, an in_index past the last stage)
    fails in a layer's constructor or build; with overrides present, that becomes one RecipeError
    naming them instead of a traceback. Without overrides the error is the library's: re-raised."""
    parts = [p for p in ("backbone", "head", "auxiliary_head", "region_head") if isinstance(config.get(p), dict) and config[p]]
    try:
        yield
    except (ValueError, IndexError, TypeError, KeyError) as error:
        if not parts:
            raise
        keys = ", ".join(f"model.{p}" for p in parts)
        raise RecipeError(
            f"{keys}: these overrides do not build the {config['family']} model ({type(error).__name__}: {error}); "
            f"fix or remove them (ssaseg-keras recipes show NAME lists the preset's values)."
        ) from error


def _build_segmentor(config, preset, training, loss_resize_method):
    backbone = build_backbone(config, preset)
    decode_head = build_decode_head(config, preset)
    num_classes = int(config["num_classes"])
    loss_weights = dict(config.get("ssa_loss_weights") or {})
    dropout = classifier_dropout(config, preset)
    if config["ssa"]:
        classifier = SSAClassifier(
            num_classes, dropout=dropout, with_teacher=training, name="classifier"
        )
    else:
        if loss_weights:
            raise RecipeError("model.ssa_loss_weights: only an SSA model (model.ssa: true) has these loss terms")
        if config["family"] == "cgrseg":
            from ssaseg_keras.models.heads.cgr_head import CGRBaselineClassifier

            classifier = CGRBaselineClassifier(num_classes, dropout=dropout, name="classifier")
        else:
            classifier = PixelClassifier(num_classes, dropout=dropout, name="classifier")
    model = Segmentor(
        backbone,
        decode_head,
        classifier,
        loss_resize_method=loss_resize_method,
        ssa_loss_weights=loss_weights or None,
        auxiliary_heads=build_auxiliary_heads(config, preset) if training else [],
        region_head=build_region_head(config, preset, backbone),
        name=f"{config['family']}_{config['size']}",
    )
    model.build((None, None, None, 3))
    return model


def build_image_segmenter(recipe: dict, training: bool = True):
    """The `ImageSegmenter` task of a validated recipe: the model of `model:` with the preprocessor of
    `data:` (mean / std) and `eval:` (inference resize `eval.scale`, whole / slide), and the recipe
    kept (`task.recipe`) for `save_to_preset`. The trainer, the CLI and `from_preset` build with it."""
    from ssaseg_keras.models.preprocessing import ImageConverter, ImageSegmenterPreprocessor
    from ssaseg_keras.models.task import ImageSegmenter

    segmentor = build_segmentor(recipe["model"], training=training, loss_resize_method=recipe["train"]["loss_resize"])
    data, evaluation = recipe["data"], recipe["eval"]
    converter = ImageConverter(mean=data["mean"], std=data["std"], scale=evaluation["scale"], name="image_converter")
    preprocessor = ImageSegmenterPreprocessor(converter, num_classes=segmentor.num_classes, name="preprocessor")
    inference = {"mode": evaluation["mode"], "crop_size": evaluation["crop_size"], "stride": evaluation["stride"]}
    task = ImageSegmenter.from_segmentor(segmentor, preprocessor=preprocessor, inference=inference)
    object.__setattr__(task, "recipe", recipe)  # plain attribute: not tracked by Keras
    return task


def model_summary_counts(model):
    """{"trainable": n, "non_trainable": m} parameter counts of a built model."""
    return {
        "trainable": count_parameters(model.trainable_variables),
        "non_trainable": count_parameters(model.non_trainable_variables),
    }
