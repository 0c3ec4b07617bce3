"""Reference checkpoints (`.pth`) -> our models: whole segmentors and ImageNet-pretrained backbones.

`.pth` files are read with `torch.load(..., map_location="cpu", weights_only=True)`, which never runs
code from the file. PyTorch is needed only here and is imported when a file is read.
"""

from __future__ import annotations

import os

from ssaseg_keras.convert.reference import (
    ReferenceWeightsError,
    load_reference_weights,
    reference_unused,
    to_numpy,
)
from ssaseg_keras.utils.errors import CheckpointError, UserError

# Keys of an ImageNet classification checkpoint that have no place in a segmentation backbone.
PRETRAINED_IGNORED = ("head.*", "head", "classifier.*", "fc.*")
MODEL_PREFIXES = ("backbone.", "decode_head.", "auxiliary_head.")


def read_torch_checkpoint(path, state_keys=("state_dict", "model")) -> dict:
    """The name -> numpy array dict of a `.pth` file: the first of its `state_keys` entries that is a
    dict (`state_dict`, then `model`), else its top-level dict.

    Raises:
        CheckpointError when the file is missing, unreadable or holds no tensors; UserError when
        PyTorch is not installed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {path!r} does not exist; give the path of a .pth file.")
    try:
        import torch
    except ImportError as error:
        raise UserError(
            f"Reading the PyTorch checkpoint {path!r} needs PyTorch, which is not installed here: "
            "`pip install torch` (the CPU build is enough), or convert on a machine that has it."
        ) from error
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, not a torch file, or pickled code refused
        raise CheckpointError(
            f"Checkpoint {path!r} cannot be read as a PyTorch weights file ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Check the file is a complete .pth "
            "download; files that need code execution to load are refused."
        ) from error
    if isinstance(obj, dict):
        for key in state_keys:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"Checkpoint {path!r} holds a {type(obj).__name__}, not a dict of tensors.")
    arrays = {str(k): to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
    if not arrays:
        raise CheckpointError(f"Checkpoint {path!r} holds no tensors (keys: {sorted(obj)[:10]}).")
    return arrays


def convert_checkpoint(path, recipe_or_model, strict=True, overrides=()):
    """Load a reference (mmseg 0.30) checkpoint into the model a recipe describes (or a given model).

    Args:
        path: the `.pth` file; its `state_dict` has `backbone.*` and `decode_head.*` keys.
        recipe_or_model: a `Segmentor`, a recipe path, or a recipe dict (as `load_recipe` returns);
            a recipe gives its `ImageSegmenter` (with the recipe's preprocessor).
        strict: fail (listing every name) on unmapped/missing names and shape mismatches.
            `num_batches_tracked` and `*empty_weight` buffers are always skipped; a teacher-free
            model skips the checkpoint's teacher (`decode_head.gt_*`, `decode_head.1.gt_*` in a
            cascade).
        overrides: recipe overrides (`key.sub=value`) when a recipe path is given.

    Returns:
        (model, report): the loaded model and a `LoadReport` (`report.loaded` names; see
        `counts_by_part`).
    """
    from ssaseg_keras.models import build_image_segmenter, has_auxiliary_heads, has_teacher

    if hasattr(recipe_or_model, "backbone") and hasattr(recipe_or_model, "classifier"):
        model = recipe_or_model
    else:
        recipe = recipe_or_model
        if not isinstance(recipe, dict):
            from ssaseg_keras.recipes import load_recipe

            recipe = load_recipe(recipe, overrides=overrides)
        model = build_image_segmenter(recipe)
    state = read_torch_checkpoint(path)
    if not any(key.startswith(MODEL_PREFIXES) for key in state):
        raise CheckpointError(
            f"Checkpoint {os.fspath(path)!r} has no `backbone.*` / `decode_head.*` keys (first keys: "
            f"{sorted(state)[:5]}); is it a backbone-only ImageNet checkpoint? Use the recipe option "
            "`model.pretrained` for those."
        )
    # A training checkpoint loads into a deployed model: its teacher / auxiliary heads are skipped.
    teacher = "decode_head.1.gt_*" if getattr(model, "region_head", None) is not None else "decode_head.gt_*"
    ignore = (() if has_teacher(model) else (teacher,)) + (
        () if has_auxiliary_heads(model) else ("auxiliary_head.*",)
    )
    head_prefix = "decode_head.1." if getattr(model, "region_head", None) is not None else "decode_head."
    ignore += reference_unused(model.backbone, "backbone.") + reference_unused(model.decode_head, head_prefix)
    try:
        report = load_reference_weights(model, state, strict=strict, ignore=ignore)
    except ReferenceWeightsError as error:
        raise CheckpointError(f"Checkpoint {os.fspath(path)!r} does not fit the model: {error}") from error
    return model, report


def load_pretrained_backbone(model, path, family="segnext", strict=True):
    """Load ImageNet-pretrained backbone weights into `model.backbone` (or into a backbone).

    SegNeXt: an MSCAN classification `.pth` (keys without `backbone.`; its classifier `head.*`
    ignored) or a segmentation checkpoint (its `backbone.*` part). SegFormer: see
    `ssaseg_keras.convert.segformer.load_mit_weights` (a keras-cv preset name or a local
    `.weights.h5` file). FCN / OCRNet: open-mmlab's `resnet*_v1c` / `hrnetv2_w*` ImageNet `.pth`
    (mmseg names; the classification parts ignored). UperNet: a Swin ImageNet `.pth`, official
    layout (`layers.*`, converted by mmseg's swin_converter rule) or mmseg layout (`stages.*`); see
    `ssaseg_keras.convert.swin`. CGRSeg: an EfficientFormerV2 ImageNet `.pth`, see
    `ssaseg_keras.convert.cgrseg.load_efficientformer_v2_pretrained`. SeaFormer / AFFormer: their
    ImageNet `.pth` (keys without `backbone.`; a classifier under `head.*` / `classifier.*` ignored).
    """
    backbone = getattr(model, "backbone", model)
    if family == "upernet":
        from ssaseg_keras.convert.swin import load_swin_pretrained

        return load_swin_pretrained(backbone, path)
    if family == "segformer":
        from ssaseg_keras.convert.segformer import load_mit_weights

        return load_mit_weights(backbone, path)
    # SeaFormer's ImageNet files (timm training checkpoints) hold the trained and the EMA weights; the
    # reference's backbone loads the EMA ones when present.
    state_keys = ("state_dict_ema", "state_dict", "model") if family == "seaformer" else ("state_dict", "model")
    state = read_torch_checkpoint(path, state_keys=state_keys)
    if family == "cgrseg":
        from ssaseg_keras.convert.cgrseg import load_efficientformer_v2_pretrained

        try:
            return load_efficientformer_v2_pretrained(backbone, state, path)
        except ReferenceWeightsError as error:
            raise CheckpointError(
                f"Pretrained weights {os.fspath(path)!r} do not fit the EfficientFormerV2 backbone: {error}\n"
                "Use the ImageNet file of the recipe's size (eformer_s2_450.pth for cgrseg b, eformer_l_450.pth for l)."
            ) from error
    prefix = "backbone." if any(key.startswith("backbone.") for key in state) else ""
    ignore = PRETRAINED_IGNORED + reference_unused(backbone)
    if family == "ocrnet":  # the HRNet ImageNet file's classification head
        from ssaseg_keras.convert.hrnet import HRNET_CLASSIFICATION_KEYS

        ignore = ignore + HRNET_CLASSIFICATION_KEYS
    try:
        return load_reference_weights(backbone, state, prefix=prefix, strict=strict, ignore=ignore)
    except ReferenceWeightsError as error:
        raise CheckpointError(
            f"Pretrained weights {os.fspath(path)!r} do not fit the {family} backbone: {error}"
        ) from error
