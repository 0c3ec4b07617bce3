"""CGRSeg's decode head (Ni et al., ECCV 2024: context-guided spatial feature reconstruction), and the
baseline's second stage as a classifier layer.

    stages [s_1, s_2, s_3] (in_index 1, 2, 3: strides 8, 16, 32)
      PyramidPoolAgg: each adaptive-average-pooled to ceil(s_3 / 2) (stride 64), concatenated
      trans: next_repeat RCM blocks on the concatenation, split back into g_1, g_2, g_3
      top-down, i = 3, 2, 1:
        local_i = s_i (+ conv_i(bilinear(r_{i+1})) below the top)       conv_i: 1x1 channels -> C_i
        r_i = SIM_i(meta_i(local_i), g_i)
            = BN(1x1(local)) * bilinear(ops.hard_sigmoid(BN(1x1(g_i))))          (channels)
      F = linear_fuse(r_1): dw 1x1 (no bias) + BN + ReLU                   (B, H/8, W/8, channels)

    RCM(x) = x + gamma * ConvMlp(BN(RCA(x)))     ConvMlp: 1x1 -> GELU -> 1x1 (ratio 2)
    RCA(x) = dw_kxk(x) * sigmoid(dw_kx1(ReLU(BN(dw_1xk(mean_W(x) + mean_H(x))))))
             (k = square_kernel_size for the first, the band size dw_size / neck_size for the strips)

F is what a classifier reads: SSA (the reference's CGRSeg_ssa feeds it to conv_seg and SSA), or, for
the baseline, `CGRBaselineClassifier`, which needs r_1 as well (`CGRSegHead(return_pre_fuse=True)`):

    coarse = conv_seg(dropout(F))                                               (B, h, w, K)
    regions = softmax over pixels of coarse, weighted means of r_1              (B, K, C)
    context = sum_k softmax_k(conv_mask(regions)) regions_k                     (B, C)  (DPGHead `lgc`)
    O = r_1 * sigmoid(1x1(ReLU(LN(1x1(context))))) + r_1
    logits = conv_seg(dropout(O))                      (the same conv_seg, the head's output)

Reference quirks reproduced (`xwmaxwma/SSAClassifier` models/decode_heads/cgr_head.py, cgr_head_ssa.py):
- the pooled size is (H - 1) // 2 + 1 of the last input; torch's adaptive-average-pool bins;
- RCA's two pools are added (a broadcast (H, W) map) before the strip convs; all its convs are depthwise
  with bias (ratio 1; the reference's other ratios are refused here);
- the baseline's second stage gathers regions from r_1 (before linear_fuse), not from F, applies the one
  `conv_seg` (with its dropout) twice, and returns only the second logits; its DPG LayerNorm runs over
  the C channels of a 1x1 map (eps 1e-5); the last 1x1 of `channel_mul_conv` starts at zero;
- RCM's layer scale `gamma` starts at 1e-6; SIM's convs have no bias (BN follows); the `conv_i` have;
- every resize is bilinear with align_corners=False.

Layer names follow the reference modules (`trans_{j}` = `trans.transformer_blocks.{j}`, `meta_{i}`,
`SIM_{i}`, `conv_{i}`, `linear_fuse`), so `ssaseg_keras.convert.cgrseg` maps one to one.
"""

from __future__ import annotations

import keras
from keras import ops

from ssaseg_keras.layers.batch_norm import SyncBatchNormalization
from ssaseg_keras.layers.building import built as _built
from ssaseg_keras.layers.building import with_channels as _with_channels
from ssaseg_keras.models.heads.common import ConvNormAct
from ssaseg_keras.models.heads.ocr_head import spatial_gather
from ssaseg_keras.ops.resize import resize_bilinear

NORM_EPS = 1e-5
BN_MOMENTUM = 0.9  # torch momentum 0.1

# The reference configs (configs/cgrseg/cgrseg-{b,l}_ade20k_160k.py): CGRSegHead arguments. Both use
# dropout_ratio 0.1 (the classifier's dropout) and SyncBN.
CGRSEG_HEAD_LAYOUTS = {
    "b": {"channels": 256, "in_index": [1, 2, 3], "is_dw": True, "dw_size": 11, "neck_size": 11, "next_repeat": 6,
          "square_kernel_size": 3, "ratio": 1, "mlp_ratio": 2},
    "l": {"channels": 256, "in_index": [1, 2, 3], "is_dw": True, "dw_size": 9, "neck_size": 9, "next_repeat": 5,
          "square_kernel_size": 3, "ratio": 1, "mlp_ratio": 2},
}  # fmt: skip


def batch_norm(name, policy):
    return SyncBatchNormalization(epsilon=NORM_EPS, momentum=BN_MOMENTUM, dtype=policy, name=name)


def adaptive_average_pool_2d(x, out_height, out_width):
    """torch's `adaptive_avg_pool2d(x, (out_height, out_width))` on NHWC x: output cell i of a side of
    length L averages [floor(i L / s), ceil((i + 1) L / s)). Sizes may be dynamic scalars."""

    def bins(length, size):
        cells = ops.arange(size, dtype="int32")
        start = (cells * length) // size
        end = ((cells + 1) * length + size - 1) // size
        positions = ops.arange(length, dtype="int32")
        inside = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
        return ops.cast(ops.cast(inside, "float32") / ops.cast(end - start, "float32")[:, None], x.dtype)

    height, width = ops.shape(x)[1], ops.shape(x)[2]
    return ops.einsum("ih,bhwc,jw->bijc", bins(height, out_height), x, bins(width, out_width))


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class RCMBlock(keras.layers.Layer):
    """Rectangular self-calibration module (the reference's `RCM` with its `RCA` token mixer).
    (B, H, W, C) -> same.

    Args:
        dw_size: the band (strip) kernel length k of the 1xk / kx1 depthwise convs.
        square_kernel_size: the local depthwise conv's kernel (odd).
        mlp_ratio: the ConvMlp's hidden width ratio.
        ratio: RCA's channel reduction (only 1, the reference configs' value).
        layer_scale_init_value: initial `gamma` (1e-6).
    """

    def __init__(self, dw_size=11, square_kernel_size=3, mlp_ratio=2, ratio=1, layer_scale_init_value=1e-6,
                 **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.dw_size = int(dw_size)
        self.square_kernel_size = int(square_kernel_size)
        self.mlp_ratio = mlp_ratio
        self.ratio = int(ratio)
        self.layer_scale_init_value = float(layer_scale_init_value)
        if self.ratio != 1:
            raise ValueError(f"RCMBlock: only ratio=1 (depthwise excitation) is supported, got {ratio}")
        if self.square_kernel_size % 2 == 0 or self.dw_size % 2 == 0:
            raise ValueError(
                f"RCMBlock: kernel sizes must be odd (the reference pads k // 2), got "
                f"square_kernel_size={square_kernel_size}, dw_size={dw_size}"
            )

    def build(self, input_shape):
        policy, dim, k = self.dtype_policy, int(input_shape[-1]), self.dw_size
        hidden = int(self.mlp_ratio * dim)

        def depthwise(kernel, name):
            return _built(keras.layers.DepthwiseConv2D(kernel, padding="same", dtype=policy, name=name), input_shape)

        self.dwconv_hw = depthwise(self.square_kernel_size, "dwconv_hw")
        self.excite_0 = depthwise((1, k), "excite_0")
        self.excite_1 = _built(batch_norm("excite_1", policy), input_shape)
        self.excite_3 = depthwise((k, 1), "excite_3")
        self.norm = _built(batch_norm("norm", policy), input_shape)
        self.fc1 = _built(keras.layers.Conv2D(hidden, 1, dtype=policy, name="fc1"), input_shape)
        self.fc2 = _built(keras.layers.Conv2D(dim, 1, dtype=policy, name="fc2"), _with_channels(input_shape, hidden))
        self.gamma = self.add_weight(
            shape=(dim,), initializer=keras.initializers.Constant(self.layer_scale_init_value), name="gamma"
        )
        self.built = True

    def call(self, x, training=False):
        gathered = ops.mean(x, axis=2, keepdims=True) + ops.mean(x, axis=1, keepdims=True)  # (B, H, W, C)
        excitation = ops.relu(self.excite_1(self.excite_0(gathered), training=training))
        y = self.dwconv_hw(x) * ops.sigmoid(self.excite_3(excitation))
        y = self.fc2(ops.gelu(self.fc1(self.norm(y, training=training)), approximate=False))
        return x + y * ops.cast(self.gamma, y.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "dw_size": self.dw_size,
            "square_kernel_size": self.square_kernel_size,
            "mlp_ratio": self.mlp_ratio,
            "ratio": self.ratio,
            "layer_scale_init_value": self.layer_scale_init_value,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class CGRFuseBlock(keras.layers.Layer):
    """The reference's `FuseBlockMulti` (SIM): call(local (B, H, W, Cl), global (B, h, w, Cg)) ->
    BN(1x1(local)) * bilinear(ops.hard_sigmoid(BN(1x1(global))), (H, W)), (B, H, W, channels)."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def build(self, local_shape, global_shape=None):
        policy = self.dtype_policy
        global_shape = local_shape if global_shape is None else global_shape
        self.fuse1 = _built(
            ConvNormAct(self.channels, norm="batch", activation=False, dtype=policy, name="fuse1"), local_shape
        )
        self.fuse2 = _built(
            ConvNormAct(self.channels, norm="batch", activation=False, dtype=policy, name="fuse2"), global_shape
        )
        self.built = True

    def call(self, local, global_, training=False):
        gate = ops.hard_sigmoid(self.fuse2(global_, training=training))
        gate = resize_bilinear(gate, ops.shape(local)[1:3], align_corners=False)
        return self.fuse1(local, training=training) * gate

    def compute_output_shape(self, local_shape, global_shape=None):
        return _with_channels(local_shape, self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class CGRSegHead(keras.layers.Layer):
    """Call on the backbone's 4 stage features (NHWC) -> F (B, H_1, W_1, channels), the `linear_fuse`
    output (what SSA reads), at the size of stage `in_index[0]`; with `return_pre_fuse`,
    [F, r_1] where r_1 is linear_fuse's input (the baseline's second stage reads both).

    Args:
        channels: the head width (256).
        in_index: the stages read (1, 2, 3).
        is_dw: linear_fuse is a depthwise 1x1 conv (else a full 1x1).
        dw_size: the meta RCMs' band kernel; neck_size: the `trans` RCMs'.
        next_repeat: the number of `trans` RCM blocks.
        square_kernel_size: the RCMs' local depthwise kernel.
        ratio: RCA reduction of the meta RCMs (1).
        mlp_ratio: the RCMs' ConvMlp ratio (the reference's `mr`, 2).
        return_pre_fuse: also return r_1.
    """

    def __init__(self, channels=256, in_index=(1, 2, 3), is_dw=True, dw_size=11, neck_size=11, next_repeat=6,
                 square_kernel_size=3, ratio=1, mlp_ratio=2, return_pre_fuse=False, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.in_index = [int(i) for i in in_index]
        self.is_dw = bool(is_dw)
        self.dw_size = int(dw_size)
        self.neck_size = int(neck_size)
        self.next_repeat = int(next_repeat)
        self.square_kernel_size = int(square_kernel_size)
        self.ratio = int(ratio)
        self.mlp_ratio = mlp_ratio
        self.return_pre_fuse = bool(return_pre_fuse)

    def build(self, input_shape):
        policy = self.dtype_policy
        shapes = [tuple(input_shape[i]) for i in self.in_index]
        self.in_channels = [int(s[-1]) for s in shapes]
        pooled = (None, None, None, sum(self.in_channels))
        self.trans = [
            _built(RCMBlock(self.neck_size, self.square_kernel_size, self.mlp_ratio, dtype=policy, name=f"trans_{j}"),
                   pooled)
            for j in range(self.next_repeat)
        ]  # fmt: skip
        self.meta, self.sim = [], []
        for i, shape in enumerate(shapes):
            self.meta.append(
                _built(RCMBlock(self.dw_size, self.square_kernel_size, self.mlp_ratio, self.ratio, dtype=policy,
                                name=f"meta_{i}"), shape)
            )  # fmt: skip
            fuse = CGRFuseBlock(self.channels, dtype=policy, name=f"SIM_{i}")
            fuse.build(shape, _with_channels(pooled, self.in_channels[i]))
            self.sim.append(fuse)
        self.convs = [
            _built(keras.layers.Conv2D(c, 1, dtype=policy, name=f"conv_{i}"), _with_channels(shapes[i], self.channels))
            for i, c in enumerate(self.in_channels[:-1])
        ]
        out_shape = _with_channels(shapes[0], self.channels)
        if self.is_dw:
            conv = keras.layers.DepthwiseConv2D(1, use_bias=False, dtype=policy, name="linear_fuse_conv")
        else:
            conv = keras.layers.Conv2D(self.channels, 1, use_bias=False, dtype=policy, name="linear_fuse_conv")
        self.linear_fuse_conv = _built(conv, out_shape)
        self.linear_fuse_bn = _built(batch_norm("linear_fuse_bn", policy), out_shape)
        self.built = True

    def call(self, features, training=False):
        stages = [features[i] for i in self.in_index]
        top = ops.shape(stages[-1])
        pooled_height, pooled_width = (top[1] - 1) // 2 + 1, (top[2] - 1) // 2 + 1
        pooled = ops.concatenate(
            [adaptive_average_pool_2d(s, pooled_height, pooled_width) for s in stages], axis=-1
        )
        for block in self.trans:
            pooled = block(pooled, training=training)
        # Channel slices rather than ops.split: torch's split copies its indices to the host, which
        # fails on the "meta" tensors of Keras' symbolic (shape-only) calls.
        bounds = [sum(self.in_channels[:i]) for i in range(len(self.in_channels) + 1)]
        global_parts = [pooled[..., start:end] for start, end in zip(bounds[:-1], bounds[1:])]
        result = None
        for i in range(len(stages) - 1, -1, -1):
            local = stages[i]
            if result is not None:
                upsampled = resize_bilinear(result, ops.shape(local)[1:3], align_corners=False)
                local = local + self.convs[i](upsampled)
            local = self.meta[i](local, training=training)
            result = self.sim[i](local, global_parts[i], training=training)
        fused = ops.relu(self.linear_fuse_bn(self.linear_fuse_conv(result), training=training))
        return [fused, result] if self.return_pre_fuse else fused

    def compute_output_shape(self, input_shape):
        shape = _with_channels(tuple(input_shape[self.in_index[0]]), self.channels)
        return [shape, shape] if self.return_pre_fuse else shape

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "in_index": self.in_index,
            "is_dw": self.is_dw,
            "dw_size": self.dw_size,
            "neck_size": self.neck_size,
            "next_repeat": self.next_repeat,
            "square_kernel_size": self.square_kernel_size,
            "ratio": self.ratio,
            "mlp_ratio": self.mlp_ratio,
            "return_pre_fuse": self.return_pre_fuse,
        }


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class CGRBaselineClassifier(keras.layers.Layer):
    """The baseline CGRSeg's classifier and second stage (spatial gather + DPGHead `lgc` + the same
    `conv_seg` again), see the module docstring.

    Call(features F (B, h, w, C), pre_fuse r_1 (B, h, w, C)) -> logits (B, h, w, K) float32, the
    reference head's output (the one its cross-entropy reads). `logits_and_coarse` also returns the
    first-stage logits conv_seg(dropout(F)).

    Args:
        num_classes: K.
        dropout: mmseg's `dropout_ratio` (2-D channel dropout before each use of conv_seg, training only).
    """

    def __init__(self, num_classes, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)

    def build(self, features_shape, pre_fuse_shape=None):
        policy, channels = self.dtype_policy, int(features_shape[-1])
        vector = (None, channels)
        self.channel_dropout = keras.layers.SpatialDropout2D(self.dropout, name="channel_dropout")
        self.conv_seg = _built(keras.layers.Dense(self.num_classes, dtype=policy, name="conv_seg"), features_shape)
        # DPGHead on (B, K, C) region features / a (B, C) context: float32, tiny.
        self.conv_mask = _built(keras.layers.Dense(1, dtype="float32", name="conv_mask"), vector)
        self.channel_mul_0 = _built(keras.layers.Dense(channels, dtype="float32", name="channel_mul_0"), vector)
        self.channel_mul_1 = _built(
            keras.layers.LayerNormalization(epsilon=NORM_EPS, dtype="float32", name="channel_mul_1"), vector
        )
        self.channel_mul_3 = _built(
            keras.layers.Dense(channels, kernel_initializer="zeros", dtype="float32", name="channel_mul_3"), vector
        )
        self.built = True

    def _classify(self, x, training):
        if training and self.dropout > 0:
            x = self.channel_dropout(x, training=True)
        return ops.cast(self.conv_seg(x), "float32")

    def coarse_logits(self, features, training=False):
        """conv_seg(dropout(F)), (B, h, w, K) float32: the first stage's logits."""
        return self._classify(features, training)

    def object_context(self, pre_fuse, coarse):
        """O = r_1 * sigmoid(channel_mul(context)) + r_1, (B, h, w, C) in r_1's dtype."""
        regions = spatial_gather(pre_fuse, coarse, 1.0)  # (B, K, C) float32
        weights = ops.softmax(self.conv_mask(regions), axis=1)  # over the K regions
        context = ops.sum(weights * regions, axis=1)  # (B, C)
        gate = ops.relu(self.channel_mul_1(self.channel_mul_0(context)))
        gate = ops.cast(ops.sigmoid(self.channel_mul_3(gate)), pre_fuse.dtype)
        return pre_fuse * gate[:, None, None, :] + pre_fuse

    def logits_and_coarse(self, features, pre_fuse, training=False):
        """(logits, coarse logits), both (B, h, w, K) float32."""
        coarse = self.coarse_logits(features, training=training)
        return self._classify(self.object_context(pre_fuse, coarse), training), coarse

    def call(self, features, pre_fuse, training=False):
        return self.logits_and_coarse(features, pre_fuse, training=training)[0]

    def compute_output_spec(self, features, pre_fuse, training=False):
        return keras.KerasTensor(tuple(features.shape[:-1]) + (self.num_classes,), dtype="float32")

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "dropout": self.dropout}
