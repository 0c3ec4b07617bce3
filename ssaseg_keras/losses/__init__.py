"""Losses: `ssa_loss_terms` is SSA-Seg's whole training objective; the rest are its building blocks."""

from ssaseg_keras.losses.segmentation import (
    cross_entropy,
    dice_loss,
    label_one_hot,
    pixel_cross_entropy,
)
from ssaseg_keras.losses.ssa import (
    DEFAULT_SSA_LOSS_WEIGHTS,
    LOSS_TERMS,
    baseline_loss_terms,
    boundary_mask,
    response_distillation,
    semantic_distillation,
    spatial_distillation,
    ssa_loss_terms,
)
from ssaseg_keras.utils.conventions import IGNORE_INDEX

__all__ = [
    "DEFAULT_SSA_LOSS_WEIGHTS",
    "IGNORE_INDEX",
    "LOSS_TERMS",
    "baseline_loss_terms",
    "boundary_mask",
    "cross_entropy",
    "dice_loss",
    "label_one_hot",
    "pixel_cross_entropy",
    "response_distillation",
    "semantic_distillation",
    "spatial_distillation",
    "ssa_loss_terms",
]
