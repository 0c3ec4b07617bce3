"""Reference names of SSA-Seg's classifier (the `decode_head.*` SSA part of an mmseg checkpoint)."""

from __future__ import annotations

from ssaseg_keras.convert.reference import (
    conv_mapping,
    dense_mapping,
    identity,
    register_reference_mapping,
)
from ssaseg_keras.layers.ssa import PrototypeMLP, SSAClassifier


@register_reference_mapping(PrototypeMLP)
def prototype_mlp_mapping(layer):
    # Reference: nn.Sequential(Linear(2C, C/2, bias=False), ReLU, Linear(C/2, C)).
    yield from dense_mapping(layer.hidden, "0")
    yield from dense_mapping(layer.output_dense, "2")


@register_reference_mapping(SSAClassifier)
def ssa_classifier_mapping(layer):
    yield from dense_mapping(layer.conv_seg, "conv_seg", conv1x1=True)
    yield from conv_mapping(layer.get_feat_pos, "get_feat_pos")
    yield "center_pos.weight", layer.center_pos, identity
    parts = [
        ("center_content_proj", layer.sem_mlp),
        ("center_pos_proj", layer.pos_mlp),
    ]
    if layer.with_teacher:
        parts += [("gt_center_content_proj", layer.gt_sem_mlp), ("gt_center_pos_proj", layer.gt_pos_mlp)]
    for name, mlp in parts:
        for sub, variable, transform in prototype_mlp_mapping(mlp):
            yield f"{name}.{sub}", variable, transform
    yield from dense_mapping(layer.proj, "center_proj")
    if layer.with_teacher:
        yield from dense_mapping(layer.gt_proj, "gt_center_proj")
