"""JAX-only op: depthwise convolutions as shifted multiply-adds (`ops.jax_depthwise`) give the grouped
convolution's values and gradients, and `auto` picks them only where it should."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="backend: the shifted depthwise conv is JAX's")

# (kernel, strides, padding, input (H, W)): MSCAN's square and strip kernels, EfficientFormerV2's
# strided ones, odd sizes where "same" pads one side more.
CASES = [
    ((3, 3), 1, "same", (9, 7)),
    ((5, 5), 1, "same", (8, 8)),
    ((1, 7), 1, "same", (6, 11)),
    ((21, 1), 1, "same", (23, 5)),
    ((3, 3), 2, "same", (9, 8)),
    ((3, 3), 2, "valid", (10, 9)),
    ((2, 4), (1, 2), "same", (7, 10)),
]


def value_and_gradients(layer, x, upstream):
    """sum(layer(x) * upstream) and its gradients with respect to x and the layer's kernel and bias."""
    import jax

    kernel, bias = (variable.value for variable in layer.weights)

    def loss(x, kernel, bias):
        out, _ = layer.stateless_call([kernel, bias], [], x)
        return (out * upstream).sum(), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(x, kernel, bias)
    return [np.asarray(out)] + [np.asarray(g) for g in grads]


@pytest.mark.parametrize("kernel, strides, padding, size", CASES)
def test_shifted_form_gives_the_grouped_convs_values_and_gradients(kernel, strides, padding, size):
    from ssaseg_keras.ops import jax_depthwise

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *size, 5)).astype("float32")
    layer = keras.layers.DepthwiseConv2D(kernel, strides=strides, padding=padding)
    layer.build(x.shape)
    layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    out_shape = layer.compute_output_shape(x.shape)
    upstream = rng.normal(size=out_shape).astype("float32")
    try:
        jax_depthwise.use_shifted_depthwise("keras")
        expected = value_and_gradients(layer, x, upstream)
        jax_depthwise.use_shifted_depthwise("shifted")
        got = value_and_gradients(layer, x, upstream)
    finally:
        jax_depthwise.install_from_environment()
    for name, a, b in zip(("output", "input grad", "kernel grad", "bias grad"), got, expected):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_auto_mode_takes_the_shifted_form_only_where_it_pays(monkeypatch):
    """Import installs `auto`; it runs the shifted form for large float32 CPU inputs only, and the
    layouts it does not cover (dilation, depth multiplier) keep Keras' grouped conv."""
    import jax

    from ssaseg_keras.ops import jax_depthwise

    assert jax_depthwise.mode_in_use() == "auto"
    calls = []
    real = jax_depthwise.shifted_depthwise_conv
    monkeypatch.setattr(jax_depthwise, "shifted_depthwise_conv", lambda *a: calls.append(a[0].shape) or real(*a))

    def conv(shape, dtype="float32", **kwargs):
        layer = keras.layers.DepthwiseConv2D(3, padding="same", dtype=dtype, **kwargs)
        layer(np.zeros(shape, "float32"))

    big = (2, 16, 16, 64)  # 2 x 16 x 16 x 64 = 32,768 outputs: MIN_OUTPUT_ELEMENTS
    assert np.prod(big) == jax_depthwise.MIN_OUTPUT_ELEMENTS
    conv(big)
    conv((2, 16, 16, 63))  # one channel short of the threshold
    conv(big, dilation_rate=2)
    conv(big, depth_multiplier=2)
    conv(big, dtype="bfloat16")
    expected = [big] if jax.default_backend() == "cpu" else []
    assert calls == expected


def test_a_bad_mode_is_refused_with_the_choices():
    from ssaseg_keras.ops import jax_depthwise

    with pytest.raises(ValueError, match="auto, shifted, keras"):
        jax_depthwise.use_shifted_depthwise("fast")


def test_shape_inference_with_a_symbolic_batch_keeps_the_grouped_conv():
    """Keras infers functional models' shapes on JAX with symbolic (jax.export) batch sizes, which
    `auto`'s size threshold cannot compare: those calls take Keras' conv instead of failing."""
    from ssaseg_keras.ops import jax_depthwise

    class Wrapper(keras.layers.Layer):  # no compute_output_shape: Keras traces `call` symbolically
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.DepthwiseConv2D(3, padding="same")

        def call(self, x):
            return self.conv(x)

    assert jax_depthwise.mode_in_use() == "auto"
    inputs = keras.Input((64, 64, 16))
    outputs = Wrapper()(inputs)
    model = keras.Model(inputs, outputs)
    assert tuple(outputs.shape) == (None, 64, 64, 16)
    assert model(np.ones((2, 64, 64, 16), "float32")).shape == (2, 64, 64, 16)
