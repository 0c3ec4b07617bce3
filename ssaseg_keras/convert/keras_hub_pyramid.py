"""Reference names of a `KerasHubBackbone`'s variables, for parameter groups and weight loading.

There is no PyTorch reference for a keras-hub backbone, so a variable's name is its place in the
model, `ssaseg_keras.utils.variables.variable_keys` (the Keras path, with generated layer names made
stable), with "/" -> ".", e.g. `stack0_block0_1_conv.kernel`. Arrays keep their Keras layout
(transform: identity). Two edits make mmcv's `paramwise_cfg.custom_keys` (substring keys) treat the
weights as mmcv treats a PyTorch backbone's:
- a normalization layer's variables contain "norm" (`norm: decay_mult 0`): ".norm" is inserted before
  the variable's own name unless the path already contains it (`conv1_bn.gamma` -> `conv1_bn.norm.gamma`);
- no name contains "head", which the recipes' `head: lr_mult 10` reserves for the decode head: every
  "head" is written "hd" (`multi_head_attention` -> `multi_hd_attention`, `num_heads` layers alike).
Random-generator states (dropout, drop-path seeds) are not weights and get no name.
"""

from __future__ import annotations

import collections
import re

import keras

from ssaseg_keras.convert.reference import identity, register_reference_mapping
from ssaseg_keras.models.backbones.keras_hub_pyramid import KerasHubBackbone
from ssaseg_keras.utils.variables import variable_keys

NORM_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)
# keras-hub's own norms (RMSNormalization, *LayerNorm, ...) are recognised by their class name.
NORM_CLASS_NAME = re.compile("norm", re.IGNORECASE)
SEED_STATE_NAME = "seed_generator_state"


def is_norm_layer(layer):
    return isinstance(layer, NORM_LAYERS) or bool(NORM_CLASS_NAME.search(type(layer).__name__))


def variable_owners(model):
    """{id(variable): the innermost layer holding it}."""
    owners = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):  # parents before children
        for variable in layer.variables:
            owners[id(variable)] = layer
    return owners


def reference_name(key, in_norm_layer):
    """The mmcv-style name of the variable at `variable_keys` key `key` (see the module docstring)."""
    path, _, variable_name = key.rpartition("/")
    parts = path.split("/") if path else []
    if in_norm_layer and "norm" not in key:
        parts.append("norm")
    return ".".join(parts + [variable_name]).replace("head", "hd")


@register_reference_mapping(KerasHubBackbone)
def keras_hub_backbone_mapping(model):
    owners = variable_owners(model)
    names = []
    for key, variable in variable_keys(model).items():
        if key.rpartition("/")[2].startswith(SEED_STATE_NAME):
            continue
        name = reference_name(key, is_norm_layer(owners.get(id(variable))))
        names.append(name)
        yield name, variable, identity
    duplicates = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    assert not duplicates, f"reference names of {model.name} are not unique: {duplicates}"
