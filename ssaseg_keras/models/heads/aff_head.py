"""AFFormer's decode head (the reference's `CLS` and `CLS_ssa`, the same body) up to the features the
classifier reads.

    stages[in_index] (the last backbone map, 1/8)  --squeeze: conv1x1 (no bias) + GN + ReLU-->  F (B, h, w, channels)

F is what the classifier reads (the plain head's `conv_seg`, or SSA-Seg's `SSAClassifier`); this layer
returns F, the classifier is separate.

Reference quirks:
- `_transform_inputs(inputs)[0]` with `input_transform="multiple_select"`: only the *first* selected map is
  used (in_index [3] in the configs), so `in_index` is one stage here (a longer list is refused: the
  reference's squeeze expects the sum of the selected widths and would fail on it);
- the reference also builds `align` (a 1x1 ConvModule of `aff_channels` -> channels, 66,048 parameters at
  full size) that `forward` never calls: it is left out here (its `decode_head.align.*` checkpoint keys are
  skipped on loading, see `ssaseg_keras.convert.afformer.AFF_HEAD_IGNORED`), and so is `aff_channels`,
  which only sizes it;
- GroupNorm eps 1e-5 (mmcv's default); the configs' GN has 32 groups.
"""

from __future__ import annotations

import keras

from ssaseg_keras.models.heads.common import ConvNormAct

# configs/afformer/afformer_base_ade20k.py (and its _ssa, 480x480 Pascal-Context and COCO-Stuff-10k variants).
AFF_HEAD_PRESETS = {"b": {"channels": 256, "groups": 32, "in_index": 3}}
AFF_HEAD_IN_CHANNELS = {"b": 216}  # what the backbone's last map feeds
CLASSIFIER_DROPOUT = 0.1  # the configs' dropout_ratio (the classifier's channel dropout)


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class AFFormerHead(keras.layers.Layer):
    """Call on the list of backbone maps (NHWC) -> F = ReLU(GN(conv1x1(stages[in_index]))), (B, h, w, channels).

    Args:
        channels: F's width (256 in the configs).
        groups: GroupNorm groups (32).
        in_index: the backbone map the head reads (3, the last); a one-element list is accepted.
    """

    def __init__(self, channels=256, groups=32, in_index=3, **kwargs):
        super().__init__(**kwargs)
        if isinstance(in_index, (list, tuple)):
            if len(in_index) != 1:
                raise ValueError(
                    f"AFFormerHead reads one backbone map (the reference uses only the first of in_index), "
                    f"got in_index {list(in_index)}"
                )
            in_index = in_index[0]
        self.channels = int(channels)
        self.groups = int(groups)
        self.in_index = int(in_index)

    def build(self, input_shape):
        self.squeeze = ConvNormAct(
            self.channels, norm="group", groups=self.groups, kernel_size=1, dtype=self.dtype_policy, name="squeeze"
        )
        self.squeeze.build(tuple(input_shape[self.in_index]))
        self.built = True

    def call(self, features, training=False):
        return self.squeeze(features[self.in_index], training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[self.in_index][:-1]) + (self.channels,)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "groups": self.groups, "in_index": self.in_index}
