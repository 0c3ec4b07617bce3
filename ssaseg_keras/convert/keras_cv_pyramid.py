"""Reference names of a `KerasCVBackbone`'s variables, for parameter groups and weight loading.

The keras-hub adapter's rule (`ssaseg_keras.convert.keras_hub_pyramid`), unchanged: a variable's name
is its `variable_keys` path with "/" -> ".", e.g. `v2_stack_0_block1_1_conv.kernel`; a normalization
layer's variables contain "norm" (`conv1_bn.norm.gamma`); "head" is written "hd"; random-generator
states get no name; arrays keep their Keras layout (transform: identity).
"""

from __future__ import annotations

from ssaseg_keras.convert.keras_hub_pyramid import keras_hub_backbone_mapping
from ssaseg_keras.convert.reference import register_reference_mapping
from ssaseg_keras.models.backbones.keras_cv_pyramid import KerasCVBackbone

keras_cv_backbone_mapping = register_reference_mapping(KerasCVBackbone)(keras_hub_backbone_mapping)
