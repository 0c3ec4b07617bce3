"""Losses: `ssa_loss_terms` is SSA-Seg's whole training objective; the rest are its building blocks."""

from ssaseg_keras.losses.segmentation import (
    IGNORE_INDEX,
    cross_entropy,
    dice_loss,
    label_one_hot,
    pixel_cross_entropy,
)
from ssaseg_keras.losses.ssa import (
    LOSS_TERMS,
    baseline_loss_terms,
    boundary_mask,
    response_distillation,
    semantic_distillation,
    spatial_distillation,
    ssa_loss_terms,
)

__all__ = [
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
