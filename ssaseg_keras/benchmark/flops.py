"""Analytic multiply-add (MAC) counts of a segmentor at one image size, on any backend.

The model is called once on a symbolic input (no computation); every `Conv2D`, `DepthwiseConv2D`
and `Dense` records its input and output shapes, and the NMF of the Hamburger, the SSA classifier
and the decode head record theirs. From those shapes:

- `conv_dense`: multiply-adds of convolutions (depthwise included) and dense layers;
- `bias`: one add per output element of a layer with a bias;
- `matmul`: multiply-adds of products outside layers: NMF's matrix products (all update steps of
  inference), SSA's three pixel-by-class einsums (two prototype poolings, the cosine logits) and
  Swin's window attention (queries x keys, weights x values over the padded windows);
- `resize`: bilinear resizes, 4 multiply-adds per output element (decode head inputs, logits to
  the image).

`paper` = conv_dense + bias is the convention of mmcv's `get_flops` that the SSA-Seg and SegNeXt
tables use (module hooks: products inside functional code such as NMF or einsums are not seen);
`total` adds `matmul` and `resize`. Norms, activations and softmaxes are not counted.
"""

from __future__ import annotations

import keras

RESIZE_MACS_PER_OUTPUT = 4


def _prod(shape):
    out = 1
    for size in shape:
        out *= int(size)
    return out


def _leaf_macs(layer, in_shape, out_shape):
    """(multiply-adds, bias adds) of one Conv2D / DepthwiseConv2D / Dense call."""
    outputs = _prod(out_shape)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        macs = outputs * kh * kw
    elif isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        macs = outputs * kh * kw * int(in_shape[-1]) // int(getattr(layer, "groups", 1) or 1)
    else:
        macs = outputs * int(in_shape[-1])
    return macs, outputs if layer.use_bias else 0


def nmf_macs(batch, pixels, channels, rank, steps):
    """Multiply-adds of `NMF2D.call` on (batch, pixels, channels) with `steps` update steps."""
    ncr, crr, nrr = pixels * channels * rank, channels * rank * rank, pixels * rank * rank
    coef_updates, bases_updates = steps + 1, steps
    per_image = (
        ncr  # initial X B
        + coef_updates * (ncr + crr + nrr)  # X B, B^T B, coef (B^T B)
        + bases_updates * (ncr + nrr + crr)  # X^T coef, coef^T coef, B (coef^T coef)
        + ncr  # output coef B^T
    )
    return batch * per_image


def count_macs(model, image_size, batch=1):
    """Multiply-add counts of `model(images, training=False)` for images (batch, H, W, 3).

    Returns a dict of ints: `conv_dense`, `bias`, `matmul`, `resize`, `paper` (conv_dense + bias,
    the papers' convention) and `total`, plus `by_part` ({backbone, decode_head, classifier}:
    their conv_dense + bias; a cascade's region head counts in decode_head).
    """
    from ssaseg_keras.layers.ssa import SSAClassifier
    from ssaseg_keras.models.backbones.swin import SwinWindowAttention
    from ssaseg_keras.models.heads.ham_head import NMF2D, LightHamHead
    from ssaseg_keras.models.heads.ocr_head import OCRHead

    height, width = int(image_size[0]), int(image_size[1])
    records = []
    patched = []

    def record(layer, kind):
        original = layer.call

        def call(*args, **kwargs):
            out = original(*args, **kwargs)
            first = args[0] if args else next(iter(kwargs.values()))
            if isinstance(first, list | tuple):
                in_shape = [tuple(t.shape) for t in first]
            else:
                in_shape = tuple(first.shape)
            records.append((kind, layer, in_shape, tuple(out.shape), kwargs.get("training", False)))
            return out

        object.__setattr__(layer, "call", call)
        patched.append(layer)

    parts = {}
    for attribute in ("backbone", "region_head", "decode_head", "classifier"):
        part = getattr(model, attribute, None)
        if part is None:
            continue
        part_name = "decode_head" if attribute == "region_head" else attribute
        for layer in part._flatten_layers(include_self=True, recursive=True):
            parts[id(layer)] = part_name
            if isinstance(
                layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D | keras.layers.Dense
            ):
                record(layer, "leaf")
            elif isinstance(layer, NMF2D):
                record(layer, "nmf")
            elif isinstance(layer, SSAClassifier):
                record(layer, "ssa")
            elif isinstance(layer, SwinWindowAttention):
                record(layer, "window_attention")
            elif isinstance(layer, LightHamHead):
                record(layer, "ham_head")
            elif isinstance(layer, OCRHead):
                record(layer, "ocr_head")
    try:
        model(keras.KerasTensor((batch, height, width, 3), dtype="float32"), training=False)
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")

    counts = {"conv_dense": 0, "bias": 0, "matmul": 0, "resize": 0}
    by_part = {"backbone": 0, "decode_head": 0, "classifier": 0}
    for kind, layer, in_shape, out_shape, training in records:
        if kind == "leaf":
            macs, bias = _leaf_macs(layer, in_shape, out_shape)
            counts["conv_dense"] += macs
            counts["bias"] += bias
            by_part[parts[id(layer)]] += macs + bias
        elif kind == "nmf":
            b, h, w, c = in_shape
            steps = layer.train_steps if training else layer.eval_steps
            counts["matmul"] += nmf_macs(b, h * w, c, layer.rank, steps)
        elif kind == "ssa":
            b, h, w, c = in_shape
            counts["matmul"] += 3 * b * h * w * layer.num_classes * c
        elif kind == "window_attention":
            b, windows, tokens, channels = in_shape  # (B, windows, window_size^2, C)
            counts["matmul"] += 2 * b * windows * tokens * tokens * channels
        elif kind == "ocr_head":  # the region gather (hw K C) and the attention (2 hw K C')
            b, h, w, c = out_shape
            counts["matmul"] += b * h * w * model.num_classes * (c + 2 * layer.ocr_channels)
        elif kind == "ham_head":
            selected = [in_shape[i] for i in layer.in_index]
            target = selected[0][1:3]
            for shape in selected:
                if tuple(shape[1:3]) != tuple(target):
                    counts["resize"] += (
                        RESIZE_MACS_PER_OUTPUT * shape[0] * target[0] * target[1] * shape[-1]
                    )
    counts["resize"] += RESIZE_MACS_PER_OUTPUT * batch * height * width * model.num_classes
    counts["paper"] = counts["conv_dense"] + counts["bias"]
    counts["total"] = counts["paper"] + counts["matmul"] + counts["resize"]
    counts["by_part"] = by_part
    return counts
