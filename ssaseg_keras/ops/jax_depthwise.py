"""JAX backend on CPU: depthwise convolutions as shifted multiply-adds instead of XLA's grouped conv.

Keras 3 runs `depthwise_conv` on JAX as `lax.conv_general_dilated(feature_group_count=C)`. XLA's CPU
backend executes that grouped convolution (and its two gradients) about 1.6-16x slower than the
same arithmetic written as one multiply-add per kernel tap over shifted views of the padded input,
which XLA fuses into a few loops (BENCHMARKS.md, "Issue 19 on CPU", lever 8): SegNeXt's
MSCAN, whose blocks run five strip / square depthwise convolutions and a 3x3 one at 4-8x width,
trained ~2x faster per step with it. The sum is the same per output value (products of the same
float32 numbers, added tap by tap), so results agree with the grouped conv to float32 rounding
(tests/test_ops_jax_depthwise.py).

`install_from_environment()` (called by `import ssaseg_keras` on the JAX backend) puts
`depthwise_conv` below into Keras' JAX backend (a private hook: `keras.src.backend.jax.nn.depthwise_conv`).
`SSASEG_KERAS_JAX_DEPTHWISE` chooses:

- `auto` (default): shifted multiply-adds on the CPU for float32 inputs whose output has at least
  `MIN_OUTPUT_ELEMENTS` values; Keras' grouped conv otherwise (GPUs and TPUs, where it is unmeasured;
  tiny tensors, where the larger program costs more compile time than it saves);
- `shifted`: shifted multiply-adds wherever the layout allows (any device, any size);
- `keras`: Keras' own grouped conv everywhere.

Only channels-last 2-D convolutions with static sizes, dilation 1, depth multiplier 1 and "same" /
"valid" padding take the shifted form (strides any); everything else -- Keras' shape inference with
symbolic batch sizes included -- goes through Keras' function.
"""

from __future__ import annotations

import os
import warnings

ENV_VAR = "SSASEG_KERAS_JAX_DEPTHWISE"
MODES = ("auto", "shifted", "keras")
# 2 x 8 x 8 x 256 outputs (SegNeXt-T's last stage at 256x256, batch 2); the suite's tiny models stay
# below it, and keep XLA's quicker compile of the grouped conv.
MIN_OUTPUT_ELEMENTS = 1 << 15
_state = {"original": None, "mode": "keras"}


def _keras_jax_nn():
    from keras.src.backend.jax import nn as jax_nn

    return jax_nn


def _same_padding(size, kernel, stride):
    """TensorFlow's / XLA's "SAME" padding (before, after) of one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def shifted_depthwise_conv(inputs, kernel, strides=1, padding="valid"):
    """Channels-last depthwise 2-D convolution as one multiply-add per kernel tap.

    Args:
        inputs: (B, H, W, C); kernel: (kh, kw, C, 1) (Keras' depthwise layout, multiplier 1);
        strides: int or (sh, sw); padding: "same" | "valid".

    Returns:
        (B, out_h, out_w, C), as `lax.conv_general_dilated(..., feature_group_count=C)` gives.
    """
    from jax import lax
    from jax import numpy as jnp

    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    sh, sw = _pair(strides)
    height, width = int(inputs.shape[1]), int(inputs.shape[2])
    if padding == "same":
        pad_h, pad_w = _same_padding(height, kh, sh), _same_padding(width, kw, sw)
        inputs = jnp.pad(inputs, ((0, 0), pad_h, pad_w, (0, 0)))
        height, width = height + sum(pad_h), width + sum(pad_w)
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    batch, channels = inputs.shape[0], inputs.shape[3]
    taps = kernel[..., 0]  # (kh, kw, C)
    out = None
    for row in range(kh):  # kernel taps: a static, small count (at most a few dozen)
        for col in range(kw):
            view = lax.slice(
                inputs,
                (0, row, col, 0),
                (batch, row + (out_h - 1) * sh + 1, col + (out_w - 1) * sw + 1, channels),
                (1, sh, sw, 1),
            )
            term = view * taps[row, col]
            out = term if out is None else out + term
    return out


def _takes_shifted_form(inputs, kernel, strides, padding, data_format, dilation_rate, mode):
    """Whether `depthwise_conv` should run `shifted_depthwise_conv` for this call."""
    from keras.src.backend.config import standardize_data_format

    if mode == "keras" or len(inputs.shape) != 4 or int(kernel.shape[-1]) != 1:
        return False
    if standardize_data_format(data_format) != "channels_last" or padding not in ("same", "valid"):
        return False
    # Static sizes only: Keras traces shape inference with symbolic (jax.export) batch dimensions.
    if _pair(dilation_rate) != (1, 1) or not all(type(dim) is int for dim in (*inputs.shape, *kernel.shape)):
        return False
    if mode == "shifted":
        return True
    import jax

    if jax.default_backend() != "cpu" or str(inputs.dtype) != "float32":
        return False
    sh, sw = _pair(strides)
    batch, height, width, channels = (int(dim) for dim in inputs.shape)
    return batch * -(-height // sh) * -(-width // sw) * channels >= MIN_OUTPUT_ELEMENTS


def use_shifted_depthwise(mode: str = "auto") -> str:
    """Install `mode` (one of `MODES`) into Keras' JAX backend; returns the mode in use afterwards
    ('keras' when this Keras has no `depthwise_conv` there to replace)."""
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}: mode {mode!r} is not one of {', '.join(MODES)}")
    jax_nn = _keras_jax_nn()
    if _state["original"] is None:
        original = getattr(jax_nn, "depthwise_conv", None)
        if original is None:
            return "keras"
        _state["original"] = original

        def depthwise_conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
            """Keras' JAX `depthwise_conv`, as shifted multiply-adds where `_takes_shifted_form`."""
            from keras.src.backend.jax.core import convert_to_tensor

            inputs, kernel = convert_to_tensor(inputs), convert_to_tensor(kernel)
            if _takes_shifted_form(inputs, kernel, strides, padding, data_format, dilation_rate, _state["mode"]):
                return shifted_depthwise_conv(inputs, kernel, strides, padding)
            return original(inputs, kernel, strides, padding, data_format, dilation_rate)

        jax_nn.depthwise_conv = depthwise_conv
    if mode == "keras":
        jax_nn.depthwise_conv = _state["original"]
        _state["original"] = None
    _state["mode"] = mode
    return mode


def mode_in_use() -> str:
    """'auto', 'shifted' or 'keras' (Keras' grouped conv)."""
    return _state["mode"]


def install_from_environment() -> None:
    """What `import ssaseg_keras` does on the JAX backend: `SSASEG_KERAS_JAX_DEPTHWISE` (default auto)."""
    choice = os.environ.get(ENV_VAR, "auto").strip().lower()
    if choice not in MODES:
        # Read at import time, before any command can report an error: one line, and the default.
        warnings.warn(
            f"{ENV_VAR}={choice!r} is not one of {', '.join(MODES)}; using 'auto'. Set it to one of them "
            "to silence this.",
            stacklevel=2,
        )
        choice = "auto"
    if use_shifted_depthwise(choice) != choice:
        warnings.warn(
            "ssaseg_keras: this Keras has no JAX `depthwise_conv` to replace; depthwise convolutions run "
            "as Keras' grouped convolutions (slower on CPU, same numbers).",
            stacklevel=2,
        )
