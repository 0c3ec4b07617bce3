"""SeaFormer's `LightHead` (and `LightHead_ssa`, the same body): the 1/8 detail map gated by the
hard-sigmoid of each coarser backbone map in turn, then a depthwise 1x1 ConvModule.

    x = stages[in_index[0]]                                              (B, h, w, C_0)   1/8
    for i, fuse_i:  x = conv1x1+BN(x) * bilinear_to_(h, w)(ops.hard_sigmoid(conv1x1+BN(stages[in_index[i+1]])))
    F = ReLU(BN(dw1x1(x)))   (`linear_fuse`)                             (B, h, w, channels)

F is what the classifier reads (the plain head's `conv_seg`, or SSA-Seg's `SSAClassifier`); this layer
returns F, the classifier is separate. Quirks reproduced: the hard sigmoid (relu6(x + 3) / 6) is taken
at the coarse resolution and then resized (bilinear, align_corners=False), not the other way round;
the fusion ConvModules have a BN and no activation; `linear_fuse` is depthwise (`is_dw`, a (C, 1, 1, 1)
weight) in both reference configs, so the last embed dim must equal `channels`. Its 1x1 convs have no
bias (a BN follows), BN eps 1e-5, torch momentum 0.1. Layer names follow the reference modules
(`fuse{i}.local_embedding`, `fuse{i}.global_act`, `linear_fuse`); see `ssaseg_keras.convert.seaformer`.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.layers.batch_norm import SyncBatchNormalization
from ssaseg_keras.models.heads.common import ConvNormAct
from ssaseg_keras.ops.resize import resize_bilinear

NORM_EPS = 1e-5

# LightHead's constructor defaults (SeaFormer-B's head).
LIGHT_HEAD_DEFAULTS = {"channels": 160, "embed_dims": [128, 160], "in_index": [0, 1, 2], "is_dw": True}

# The reference configs (configs/seaformer/seaformer_{base,large}.py, and the `_ssa` ones, which only swap
# the head class). `in_channels` is what the backbone feeds (the head reads it from its inputs).
LIGHT_HEAD_PRESETS = {
    "b": {"channels": 160, "embed_dims": [128, 160], "in_index": [0, 1, 2], "is_dw": True},
    "l": {"channels": 192, "embed_dims": [128, 160, 192], "in_index": [0, 1, 2, 3], "is_dw": True},
}
LIGHT_HEAD_IN_CHANNELS = {"b": [64, 192, 256], "l": [128, 192, 256, 320]}
CLASSIFIER_DROPOUT = 0.1  # the configs' dropout_ratio (the classifier's channel dropout)


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SeaFormerFusionBlock(keras.layers.Layer):
    """The reference's `Fusion_block`: call on [local (B, h, w, Cl), global (B, h', w', Cg)] ->
    conv1x1+BN(local) * resize_to_(h, w)(ops.hard_sigmoid(conv1x1+BN(global))), (B, h, w, embed_dim)."""

    def __init__(self, embed_dim, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = int(embed_dim)
        self.bn_momentum = float(bn_momentum)

    def build(self, input_shape):
        local_shape, global_shape = (tuple(s) for s in input_shape)

        def module(name, shape):
            layer = ConvNormAct(
                self.embed_dim, norm="batch", activation=False, kernel_size=1, momentum=self.bn_momentum,
                dtype=self.dtype_policy, name=name,
            )  # fmt: skip
            layer.build(shape)
            return layer

        self.local_embedding = module("local_embedding", local_shape)
        self.global_act = module("global_act", global_shape)
        self.built = True

    def call(self, inputs, training=False):
        local, global_ = inputs
        local = self.local_embedding(local, training=training)
        gate = ops.hard_sigmoid(self.global_act(global_, training=training))
        gate = resize_bilinear(gate, ops.shape(local)[1:3], align_corners=False)
        return local * gate

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.embed_dim,)

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim, "bn_momentum": self.bn_momentum}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class LightHead(keras.layers.Layer):
    """Call on the list of backbone maps (NHWC) -> F (B, h, w, channels) at the first selected map's size.

    Args:
        channels: width of F (the `linear_fuse` output).
        embed_dims: the fusion blocks' widths (one per selected map after the first); the last must be
            `channels` when `is_dw`.
        in_index: the backbone maps the head reads, finest first (mmseg "multiple_select").
        is_dw: `linear_fuse` is a depthwise 1x1 conv (True in SeaFormer-B / -L), else a dense 1x1.
        bn_momentum: BN moving-average momentum (Keras convention; 0.9 = torch's 0.1).
    """

    def __init__(self, channels=LIGHT_HEAD_DEFAULTS["channels"], embed_dims=LIGHT_HEAD_DEFAULTS["embed_dims"],
                 in_index=LIGHT_HEAD_DEFAULTS["in_index"], is_dw=LIGHT_HEAD_DEFAULTS["is_dw"], bn_momentum=0.9,
                 **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.embed_dims = [int(d) for d in embed_dims]
        self.in_index = [int(i) for i in in_index]
        self.is_dw = bool(is_dw)
        self.bn_momentum = float(bn_momentum)
        if len(self.in_index) != len(self.embed_dims) + 1:
            raise ValueError(f"LightHead: {len(self.embed_dims)} embed_dims need {len(self.embed_dims) + 1} inputs, "
                             f"got in_index {self.in_index}")  # fmt: skip
        if self.is_dw and self.embed_dims[-1] != self.channels:
            raise ValueError(f"LightHead: a depthwise linear_fuse needs embed_dims[-1] == channels, got "
                             f"{self.embed_dims[-1]} and {self.channels}")  # fmt: skip

    def build(self, input_shape):
        policy = self.dtype_policy
        shapes = [tuple(input_shape[i]) for i in self.in_index]
        local = shapes[0]
        self.fuses = []
        for i, embed_dim in enumerate(self.embed_dims):
            fuse = SeaFormerFusionBlock(embed_dim, bn_momentum=self.bn_momentum, dtype=policy, name=f"fuse{i + 1}")
            fuse.build([local, shapes[i + 1]])
            self.fuses.append(fuse)
            local = local[:-1] + (embed_dim,)
        if self.is_dw:
            self.linear_fuse_conv = keras.layers.DepthwiseConv2D(
                1, use_bias=False, dtype=policy, name="linear_fuse_conv"
            )
        else:
            self.linear_fuse_conv = keras.layers.Conv2D(
                self.channels, 1, use_bias=False, dtype=policy, name="linear_fuse_conv"
            )
        self.linear_fuse_bn = SyncBatchNormalization(
            epsilon=NORM_EPS, momentum=self.bn_momentum, dtype=policy, name="linear_fuse_bn"
        )
        self.linear_fuse_conv.build(local)
        self.linear_fuse_bn.build(local[:-1] + (self.channels,))
        self.built = True

    def call(self, features, training=False):
        selected = [features[i] for i in self.in_index]
        x = selected[0]
        for fuse, global_ in zip(self.fuses, selected[1:]):
            x = fuse([x, global_], training=training)
        return ops.relu(self.linear_fuse_bn(self.linear_fuse_conv(x), training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[self.in_index[0]][:-1]) + (self.channels,)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "embed_dims": self.embed_dims,
            "in_index": self.in_index,
            "is_dw": self.is_dw,
            "bn_momentum": self.bn_momentum,
        }
