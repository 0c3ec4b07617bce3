"""SSA-Seg's training objective: eight loss terms, one implementation for every backend.

`ssa_loss_terms` is the only place the objective is written; the segmentor's `compute_loss`, the
tests and the benchmarks all call it. Terms (names are the public keys of the returned dict):

- `main_ce`        CE of the refined logits R, upsampled with half-pixel centres, mean over ALL pixels.
- `coarse_ce`      CE of the coarse logits M (align_corners upsampling), mean over labelled pixels.
- `teacher_ce`     CE of the teacher logits T (align_corners upsampling), mean over labelled pixels.
- `response_distill`  R learns from 0.5 softmax(T) + 0.5 one-hot, entropy-weighted, boundary-balanced
                      (the boundary is the reference's OpenCV Canny mask, computed on the device).
- `dice_refined`, `dice_teacher`  sigmoid dice of R and T per (image, present class).
- `semantic_distill`  class-relation matrices of S learn the teacher's (inter-class separation).
- `spatial_distill`   soft cross-entropy from the teacher's spatial prototypes Tpos to Pp.

Each term is multiplied by its weight (`DEFAULT_SSA_LOSS_WEIGHTS`: the reference's 10 for
`semantic_distill`, 0.4 for `spatial_distill`, 1 for the others; `weights=` for ablations), and the
returned values are the weighted ones, as the reference logs them.
"""

from __future__ import annotations

from keras import ops

from ssaseg_keras.layers.ssa import l2_normalize
from ssaseg_keras.losses.segmentation import (
    class_pixel_counts,
    cross_entropy,
    dice_loss,
    label_one_hot,
    safe_labels,
)
from ssaseg_keras.ops.compile import compiled_for_backend
from ssaseg_keras.ops.resize import downsample_labels, resize_bilinear, resize_bilinear_at

LOSS_TERMS = (
    "main_ce",
    "coarse_ce",
    "teacher_ce",
    "response_distill",
    "dice_refined",
    "dice_teacher",
    "semantic_distill",
    "spatial_distill",
)
ENTROPY_EPS = 1e-12
SEMANTIC_DISTILL_WEIGHT = 10.0
SPATIAL_DISTILL_WEIGHT = 0.4
BOUNDARY_FRAME = 6
DEFAULT_SSA_LOSS_WEIGHTS = {
    **{term: 1.0 for term in LOSS_TERMS},
    "semantic_distill": SEMANTIC_DISTILL_WEIGHT,
    "spatial_distill": SPATIAL_DISTILL_WEIGHT,
}


# OpenCV's fixed-point tangent of 22.5 degrees (CANNY_SHIFT = 15).
_CANNY_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _CANNY_SHIFT) + 0.5)


def _shift_views(x, pad_value=None):
    """The 3x3 neighbourhood of (B, H, W) x as a dict of (B, H, W) views keyed by (dy, dx).

    Borders are replicated when pad_value is None, else filled with pad_value.
    """
    height, width = int(x.shape[1]), int(x.shape[2])
    if pad_value is None:
        x = ops.concatenate([x[:, :1], x, x[:, -1:]], axis=1)
        x = ops.concatenate([x[:, :, :1], x, x[:, :, -1:]], axis=2)
    else:
        x = ops.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=pad_value)
    return {
        (dy, dx): x[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    }


def canny_edges(labels):
    """OpenCV's `cv2.Canny(labels.astype(uint8), 0.1, 0.2)` on a batch of label maps, on the device.

    With thresholds below 1, every non-maximum-suppressed pixel with a non-zero gradient is a strong
    edge, so Canny reduces to: 3x3 Sobel (replicated borders), L1 magnitude, and OpenCV's
    non-maximum suppression along the quantised gradient direction (its integer tangent tests and
    its `>` / `>=` tie rules). All integer arithmetic, so the result is exact on every backend.

    Args:
        labels: (B, H, W) integer label maps (values are taken modulo 256, like the uint8 cast).

    Returns:
        (B, H, W) bool edge map.
    """
    x = ops.mod(ops.cast(labels, "int32"), 256)
    n = _shift_views(x)
    grad_x = (n[(-1, 1)] - n[(-1, -1)]) + 2 * (n[(0, 1)] - n[(0, -1)]) + (n[(1, 1)] - n[(1, -1)])
    grad_y = (n[(1, -1)] - n[(-1, -1)]) + 2 * (n[(1, 0)] - n[(-1, 0)]) + (n[(1, 1)] - n[(-1, 1)])
    abs_x, abs_y = ops.abs(grad_x), ops.abs(grad_y)
    magnitude = abs_x + abs_y
    m = _shift_views(magnitude, pad_value=0)

    scaled_y = abs_y * (1 << _CANNY_SHIFT)
    tg22x = abs_x * _TG22
    tg67x = tg22x + abs_x * (1 << (_CANNY_SHIFT + 1))
    horizontal = ops.logical_and(magnitude > m[(0, -1)], magnitude >= m[(0, 1)])
    vertical = ops.logical_and(magnitude > m[(-1, 0)], magnitude >= m[(1, 0)])
    opposite_signs = ops.not_equal(grad_x < 0, grad_y < 0)  # OpenCV: (dx ^ dy) < 0
    diagonal = ops.where(
        opposite_signs,
        ops.logical_and(magnitude > m[(-1, 1)], magnitude > m[(1, -1)]),
        ops.logical_and(magnitude > m[(-1, -1)], magnitude > m[(1, 1)]),
    )
    is_max = ops.where(scaled_y < tg22x, horizontal, ops.where(scaled_y > tg67x, vertical, diagonal))
    return ops.logical_and(magnitude > 0, is_max)


def boundary_mask(labels_small, frame=BOUNDARY_FRAME):
    """The reference's label-boundary mask at feature resolution, (B, H, W) float32 in {0, 1}.

    Canny edges of the label map (`canny_edges`), a `frame`-pixel border cleared, then dilated by a
    3x3 square: what the reference computes on the CPU with OpenCV, here vectorised on the device.
    """
    height, width = int(labels_small.shape[1]), int(labels_small.shape[2])
    edges = ops.cast(canny_edges(labels_small), "float32")

    def inside(size):
        index = ops.arange(size, dtype="int32")
        return ops.cast(ops.logical_and(index >= frame, index < size - frame), "float32")

    edges = edges * (inside(height)[:, None] * inside(width)[None, :])[None]
    dilated = ops.max_pool(edges[..., None], pool_size=3, strides=1, padding="same")
    return dilated[..., 0]


def response_distillation(refined, teacher, labels_small, edges=None):
    """Response-domain distillation at feature resolution.

    Per pixel: target = 0.5 stop_grad(softmax(T)) + 0.5 one-hot(Ys); l = CE(target, R); weight = the
    teacher's entropy. For each class present in Ys, boundary and interior pixels are averaged
    separately (entropy-weighted) and the two means averaged; the loss is the mean over classes.

    Args:
        refined: R, teacher: T, (B, H, W, K) float32; labels_small: Ys (B, H, W).
        edges: optional (B, H, W) boundary mask; `boundary_mask(labels_small)` when omitted.
    """
    num_classes = refined.shape[-1]
    soft = ops.stop_gradient(ops.softmax(teacher, axis=-1))
    onehot = label_one_hot(labels_small, num_classes)  # zero rows at ignored pixels
    valid = ops.sum(onehot, axis=-1)
    # The reference maps ignored pixels to class 0 for the target; their weight below is 0 anyway.
    class_zero = ops.cast(ops.equal(ops.arange(num_classes), 0), "float32")
    target_onehot = ops.where(valid[..., None] > 0, onehot, class_zero)
    target = 0.5 * soft + 0.5 * target_onehot
    pixel_loss = -ops.sum(target * ops.log_softmax(refined, axis=-1), axis=-1)  # (B, H, W)
    entropy = -ops.sum(soft * ops.log(soft + ENTROPY_EPS), axis=-1) * valid
    edges = boundary_mask(labels_small) if edges is None else ops.cast(edges, "float32")

    def class_mean(region):
        weight = entropy * region  # (B, H, W)
        num = ops.einsum("bhw,bhwk->k", pixel_loss * weight, onehot)
        den = ops.einsum("bhw,bhwk->k", weight, onehot)
        return num / (den + ENTROPY_EPS)

    per_class = 0.5 * (class_mean(edges) + class_mean(1.0 - edges))
    present = ops.cast(ops.sum(onehot, axis=(0, 1, 2)) > 0, "float32")
    return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)


def class_relations(prototypes, scale):
    """softmax_row(scale * n(X) . stop_grad(n(X))^T): (B, K, K) relations between class prototypes."""
    normed = l2_normalize(prototypes)
    return ops.softmax(scale * ops.einsum("bkc,bjc->bkj", normed, ops.stop_gradient(normed)), axis=-1)


def semantic_distillation(semantic, teacher_semantic, scale, weight=SEMANTIC_DISTILL_WEIGHT):
    """weight (10) * mean over (image, class) of sum_j relu(Rel(S) - Rel(stop_grad(Tsem))) off the diagonal."""
    num_classes = semantic.shape[1]
    off_diagonal = 1.0 - ops.eye(num_classes, dtype="float32")
    diff = (class_relations(semantic, scale) - class_relations(ops.stop_gradient(teacher_semantic), scale))
    diff = diff * off_diagonal
    return weight * ops.mean(ops.sum(ops.relu(diff), axis=-1))


def spatial_distillation(spatial, teacher_spatial, weight=SPATIAL_DISTILL_WEIGHT):
    """weight (0.4) * mean over (image, class) of the soft CE from softmax_C(stop_grad(Tpos)) to Pp."""
    target = ops.softmax(ops.stop_gradient(teacher_spatial), axis=-1)
    return weight * ops.mean(-ops.sum(target * ops.log_softmax(spatial, axis=-1), axis=-1))


def full_loss_weights(weights=None):
    """`DEFAULT_SSA_LOSS_WEIGHTS` updated by `weights` ({term: weight}); ValueError on an unknown term."""
    unknown = sorted(set(weights or {}) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"unknown SSA loss terms {unknown}; the terms are {', '.join(LOSS_TERMS)}")
    return {**DEFAULT_SSA_LOSS_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}


def ssa_loss_terms(
    classifier, features, labels, student=None, resize_method="matmul", weights=None, compile_pixel_terms=False
):
    """All eight SSA-Seg training losses.

    Args:
        classifier: a built `SSAClassifier` with its teacher.
        features: F (B, H, W, C), the decode head's features.
        labels: Y (B, Hy, Wy) integer labels at image resolution; 255 (any value outside [0, K)) =
            ignore.
        student: optional output of `classifier.forward_student(features, training=True)` already
            computed by the model's forward pass (it is recomputed, without dropout, if omitted).
        resize_method: how logits are upsampled to label size (`resize_bilinear`'s `method`: the
            same sampling either way; `benchmarks/loss_step.py --resize` compares their speed).
        weights: {term: weight} overriding `DEFAULT_SSA_LOSS_WEIGHTS` (the reference's).
        compile_pixel_terms: run `pixel_loss_terms` through the backend's compiler where the step
            is not compiled as a whole (`compiled_for_backend`: torch.compile on PyTorch; the recipe's
            `train.compile_loss`). The same terms.

    Returns:
        dict of the eight weighted float32 scalars named in `LOSS_TERMS`; their sum is the
        training loss.
    """
    weights = full_loss_weights(weights)
    if student is None:
        student = classifier.forward_student(features, training=False)
    labels = ops.cast(labels, "int32")
    labels_small = downsample_labels(labels, student["refined_logits"].shape[1:3])
    teacher = classifier.forward_teacher(features, student["feat_pos"], labels_small)

    refined, teacher_logits = student["refined_logits"], teacher["logits"]
    pixel_terms = compiled_for_backend(pixel_loss_terms) if compile_pixel_terms else pixel_loss_terms
    terms = {
        **pixel_terms(refined, student["coarse_logits"], teacher_logits, labels, resize_method),
        "response_distill": response_distillation(refined, teacher_logits, labels_small),
        "semantic_distill": semantic_distillation(
            student["semantic_prototypes"], teacher["semantic"], classifier.scale, weights["semantic_distill"]
        ),
        "spatial_distill": spatial_distillation(
            student["spatial_prototypes"], teacher["spatial"], weights["spatial_distill"]
        ),
    }
    weighted_inside = ("semantic_distill", "spatial_distill")
    return {
        name: terms[name] if name in weighted_inside or weights[name] == 1.0 else terms[name] * weights[name]
        for name in LOSS_TERMS
    }


def pixel_loss_terms(refined, coarse, teacher_logits, labels, resize_method="matmul"):
    """SSA-Seg's five terms at label (image) size, unweighted: main_ce, coarse_ce, teacher_ce,
    dice_refined, dice_teacher.

    They read four upsamplings of the (B, h, w, K) float32 logits R, M, T (R with half-pixel centres;
    R, M, T with align_corners) -- the image-size maps that dominate SSA's extra training cost -- and
    nothing else, so this is the one piece `ssa_loss_terms(compile_pixel_terms=True)` hands to the
    backend's compiler. labels: (B, Hy, Wy) int32.
    """
    label_size = (int(labels.shape[1]), int(labels.shape[2]))
    num_classes = refined.shape[-1]
    label_index = safe_labels(labels, num_classes)

    def upsampled(logits, align_corners):
        """Logits at label size, and each pixel's label logit read from the small logits."""
        return (
            resize_bilinear(logits, label_size, align_corners=align_corners, method=resize_method),
            resize_bilinear_at(logits, label_index, label_size, align_corners=align_corners),
        )

    refined_main, refined_main_picked = upsampled(refined, align_corners=False)
    refined_up, refined_picked = upsampled(refined, align_corners=True)
    coarse_up, coarse_picked = upsampled(coarse, align_corners=True)
    teacher_up, teacher_picked = upsampled(teacher_logits, align_corners=True)
    class_counts = class_pixel_counts(labels, num_classes)
    return {
        "main_ce": cross_entropy(refined_main, labels, "all", picked=refined_main_picked),
        "coarse_ce": cross_entropy(coarse_up, labels, "valid", picked=coarse_picked),
        "teacher_ce": cross_entropy(teacher_up, labels, "valid", picked=teacher_picked),
        "dice_refined": dice_loss(refined_up, labels, class_counts, picked=refined_picked),
        "dice_teacher": dice_loss(teacher_up, labels, class_counts, picked=teacher_picked),
    }


def baseline_loss_terms(logits, labels, resize_method="matmul", compile_pixel_terms=False):
    """The plain classifier's loss (mmseg 0.30 decode head): half-pixel upsampling, CE over all pixels.
    `resize_method` and `compile_pixel_terms` as in `ssa_loss_terms`."""
    if compile_pixel_terms:
        return compiled_for_backend(baseline_loss_terms)(logits, labels, resize_method)
    label_size = (int(labels.shape[1]), int(labels.shape[2]))
    logits = ops.cast(logits, "float32")
    picked = resize_bilinear_at(logits, safe_labels(labels, logits.shape[-1]), label_size)
    upsampled = resize_bilinear(logits, label_size, align_corners=False, method=resize_method)
    return {"main_ce": cross_entropy(upsampled, labels, "all", picked=picked)}
