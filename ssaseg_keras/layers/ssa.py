"""SSA-Seg's classifier: semantic (SEPA) and spatial (SPPA) prototype adaptation, and its teacher.

The layer replaces the last 1x1 classifier of any pixel-level decode head. It reads the decode head's
final features F (B, H, W, C) and returns refined logits R (B, H, W, K). Notation follows
`ssa-seg-spec.md`: W, b the fixed prototypes (1x1 classifier), P = DW(F) the pixel position features,
E the class position embedding, S the semantic prototypes, Pp the spatial prototypes.

Reading order: `coarse_logits` -> `spatial_prototypes` (SPPA) -> `semantic_prototypes` (SEPA) ->
`cosine_logits`; `teacher_prototypes` is the training-only branch that sees the labels. The whole
classifier runs in float32 (softmaxes over pixels, L2 norms, the scale-15 cosine logits), whatever
the global dtype policy, so mixed precision cannot overflow them.
"""

from __future__ import annotations

import keras
from keras import ops

COSINE_SCALE = 15.0
NORM_EPS = 1e-12


def l2_normalize(x, axis=-1):
    """x / (||x||_2 + 1e-12) along `axis` (the reference's epsilon placement, not keras' max form)."""
    return x / (ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True)) + NORM_EPS)


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class PrototypeMLP(keras.layers.Layer):
    """Dense(C/2, no bias) -> ReLU -> Dense(C): maps a concatenated (.., 2C) pair to (.., C).

    The four MLPs of SSA-Seg (`sem`, `pos`, `gt_sem`, `gt_pos`) are instances of this layer.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.hidden = keras.layers.Dense(
            self.channels // 2, use_bias=False, dtype=self.dtype_policy, name="hidden"
        )
        self.output_dense = keras.layers.Dense(self.channels, dtype=self.dtype_policy, name="output")

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.output_dense.build(tuple(input_shape[:-1]) + (self.channels // 2,))
        self.built = True

    def call(self, x):
        return self.output_dense(ops.relu(self.hidden(x)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class SSAClassifier(keras.layers.Layer):
    """SSA-Seg classifier head: fixed prototypes adapted to each image, in semantic and spatial domains.

    Args:
        num_classes: K.
        dropout: 2-D channel dropout applied to F before the coarse (fixed-prototype) logits during
            training, as mmseg's `dropout_ratio`. SSA itself always reads F without dropout.
        with_teacher: create the training-only teacher (`gt_sem`, `gt_pos`, `gt_proj`). An inference
            or exported model uses `with_teacher=False` and carries no teacher weights.
        scale: the fixed cosine-classifier scale (15 in the reference).

    Call:
        `layer(features, training=False)` with features (B, H, W, C) -> refined logits R (B, H, W, K),
        float32.
    """

    def __init__(self, num_classes, dropout=0.1, with_teacher=True, scale=COSINE_SCALE, **kwargs):
        # The classifier is small next to the backbone and holds every numerically delicate step
        # (softmaxes over pixels, norms, scale-15 cosines): it computes in float32 under any global
        # mixed-precision policy, like keras-cv's float32 classifier heads.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)
        self.with_teacher = bool(with_teacher)
        self.scale = float(scale)
        self.channel_dropout = keras.layers.SpatialDropout2D(self.dropout, name="channel_dropout")
        self.conv_seg = keras.layers.Dense(self.num_classes, dtype="float32", name="conv_seg")
        self.get_feat_pos = keras.layers.DepthwiseConv2D(
            3, padding="same", use_bias=True, dtype="float32", name="get_feat_pos"
        )
        # The prototype MLPs and projections depend on C: they are created in `build`.

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels % 2:
            raise ValueError(f"SSAClassifier needs an even channel count, got {channels}.")
        self.channels = channels
        k, c = self.num_classes, channels
        self.conv_seg.build(input_shape)
        self.get_feat_pos.build(input_shape)
        self.center_pos = self.add_weight(
            shape=(k, c), initializer="glorot_uniform", name="center_pos", dtype="float32"
        )
        def mlp(name):
            layer = PrototypeMLP(c, dtype="float32", name=name)
            layer.build((None, k, 2 * c))
            return layer

        def projection(name):
            layer = keras.layers.Dense(c, use_bias=False, dtype="float32", name=name)
            layer.build((None, k, c))
            return layer

        self.sem_mlp = mlp("center_content_proj")
        self.pos_mlp = mlp("center_pos_proj")
        self.proj = projection("center_proj")
        if self.with_teacher:
            self.gt_sem_mlp = mlp("gt_center_content_proj")
            self.gt_pos_mlp = mlp("gt_center_pos_proj")
            self.gt_proj = projection("gt_center_proj")
        self.built = True

    # ----------------------------------------------------------- the pieces
    def fixed_prototypes(self):
        """W (K, C) in float32: the 1x1 classifier's kernel, one row per class."""
        return ops.transpose(ops.cast(self.conv_seg.kernel, "float32"))

    def coarse_logits(self, features, training=False):
        """M = dropout(F) W^T + b, (B, H, W, K) float32: the fixed-prototype (baseline) logits."""
        features = ops.cast(features, "float32")
        if training and self.dropout > 0:
            features = self.channel_dropout(features, training=True)
        return self.conv_seg(features)

    def position_features(self, features):
        """P = DW3x3(F), (B, H, W, C) float32: each pixel's local spatial context."""
        return self.get_feat_pos(ops.cast(features, "float32"))

    def spatial_prototypes(self, coarse, feat_pos):
        """SPPA: Pp = MLP_pos([E, sum_pixels softmax_pixels(M_k) P]), (B, K, C)."""
        batch = ops.shape(coarse)[0]
        attn = ops.softmax(self._flatten(coarse), axis=1)  # (B, N, K): softmax over pixels
        pooled = ops.einsum("bnk,bnc->bkc", attn, self._flatten(feat_pos))
        embed = ops.broadcast_to(self.center_pos[None], (batch, self.num_classes, self.channels))
        return self.pos_mlp(ops.concatenate([embed, pooled], axis=-1))

    def semantic_prototypes(self, coarse, features):
        """SEPA: S = MLP_sem([soft class centres of F, W]), (B, K, C); centres weighted by softmax_K(M)."""
        batch = ops.shape(coarse)[0]
        attn = ops.softmax(self._flatten(coarse), axis=-1)  # (B, N, K): softmax over classes
        weighted = ops.einsum("bnk,bnc->bkc", attn, self._flatten(features))
        centres = weighted / (ops.sum(attn, axis=1)[..., None] + NORM_EPS)
        fixed = ops.broadcast_to(self.fixed_prototypes()[None], (batch, self.num_classes, self.channels))
        return self.sem_mlp(ops.concatenate([centres, fixed], axis=-1))

    def cosine_logits(self, features, feat_pos, prototypes):
        """15 * n(F + P) . n(Q) for every pixel and class: (B, H, W, K) from Q (B, K, C)."""
        pixels = l2_normalize(features + feat_pos)
        return self.scale * ops.einsum("bhwc,bkc->bhwk", pixels, l2_normalize(prototypes))

    def teacher_prototypes(self, features, feat_pos, labels_small):
        """The label-guided teacher (training only).

        Args:
            features: F (B, H, W, C); feat_pos: P (B, H, W, C), float32.
            labels_small: Ys (B, H, W) int labels at feature resolution, 255 (any value >= K) = ignore.

        Returns:
            dict with `semantic` Tsem (B, K, C) from class centres pooled over the whole batch,
            `spatial` Tpos (B, K, C) from per-image position centres, and `prototypes` Qt (B, K, C).
        """
        if not self.with_teacher:
            raise ValueError("This SSAClassifier was built with with_teacher=False (inference only).")
        features = ops.cast(features, "float32")
        batch = ops.shape(features)[0]
        onehot = self._one_hot(labels_small)  # (B, N, K), zero rows at ignore pixels
        fixed = self.fixed_prototypes()

        counts = ops.sum(onehot, axis=(0, 1))  # (K,)
        centres = ops.einsum("bnk,bnc->kc", onehot, self._flatten(features)) / (counts[:, None] + NORM_EPS)
        centres = ops.where(counts[:, None] > 0, centres, ops.stop_gradient(fixed))
        semantic = self.gt_sem_mlp(ops.concatenate([centres, fixed], axis=-1))
        semantic = ops.broadcast_to(semantic[None], (batch, self.num_classes, self.channels))

        image_counts = ops.sum(onehot, axis=1)  # (B, K)
        pos_centres = ops.einsum("bnk,bnc->bkc", onehot, self._flatten(feat_pos))
        pos_centres = pos_centres / (image_counts[..., None] + NORM_EPS)
        embed = ops.broadcast_to(self.center_pos[None], (batch, self.num_classes, self.channels))
        pos_centres = ops.where(image_counts[..., None] > 0, pos_centres, ops.stop_gradient(embed))
        spatial = self.gt_pos_mlp(ops.concatenate([pos_centres, embed], axis=-1))

        return {"semantic": semantic, "spatial": spatial, "prototypes": self.gt_proj(semantic + spatial)}

    # ------------------------------------------------------------ forwards
    def forward_student(self, features, training=False):
        """The inference path with its intermediates.

        Returns a dict of float32 tensors: `coarse_logits` M and `refined_logits` R (B, H, W, K),
        `feat_pos` P (B, H, W, C), `spatial_prototypes` Pp and `semantic_prototypes` S (B, K, C).
        """
        coarse = self.coarse_logits(features, training=training)
        feat_pos = self.position_features(features)
        features32 = ops.cast(features, "float32")
        spatial = self.spatial_prototypes(coarse, feat_pos)
        semantic = self.semantic_prototypes(coarse, features32)
        refined = self.cosine_logits(features32, feat_pos, self.proj(semantic + spatial))
        return {
            "coarse_logits": coarse,
            "refined_logits": refined,
            "feat_pos": feat_pos,
            "spatial_prototypes": spatial,
            "semantic_prototypes": semantic,
        }

    def forward_teacher(self, features, feat_pos, labels_small):
        """Teacher logits T (B, H, W, K) and its prototypes; see `teacher_prototypes`."""
        teacher = self.teacher_prototypes(features, feat_pos, labels_small)
        logits = self.cosine_logits(ops.cast(features, "float32"), feat_pos, teacher["prototypes"])
        return {**teacher, "logits": logits}

    def call(self, features, training=False):
        return self.forward_student(features, training=training)["refined_logits"]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def compute_output_spec(self, features, training=False):
        return keras.KerasTensor(tuple(features.shape[:-1]) + (self.num_classes,), dtype="float32")

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "with_teacher": self.with_teacher,
            "scale": self.scale,
        }

    # ------------------------------------------------------------- helpers
    @staticmethod
    def _flatten(x):
        """(B, H, W, D) -> (B, H*W, D)."""
        return ops.reshape(x, (ops.shape(x)[0], -1, x.shape[-1]))

    def _one_hot(self, labels_small):
        """(B, H, W) labels -> (B, H*W, K) float32 one-hot; labels outside [0, K) give zero rows."""
        labels = ops.reshape(ops.cast(labels_small, "int32"), (ops.shape(labels_small)[0], -1, 1))
        return ops.cast(ops.equal(labels, ops.arange(self.num_classes, dtype="int32")), "float32")
