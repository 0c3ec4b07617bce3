"""PyTorch-only ops: convolutions and pools through channels-last views give Keras' numbers exactly; the loss
compilation's toolchain check."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="backend: the layout views are PyTorch's")


def layers_under_test():
    return [
        keras.layers.Conv2D(6, 3, padding="same"),
        keras.layers.Conv2D(6, 3, strides=2, padding="same"),  # asymmetric "same": Keras pads first
        keras.layers.Conv2D(6, 1),
        keras.layers.DepthwiseConv2D((1, 7), padding="same"),
        keras.layers.DepthwiseConv2D(5, dilation_rate=2, padding="same"),
        keras.layers.MaxPooling2D(3, strides=2, padding="same"),
        keras.layers.AveragePooling2D(2),
    ]


def run(layer, x):
    """Output and input gradient of sum(layer(x) * weights), as numpy."""
    import torch

    xt = torch.tensor(x, requires_grad=True)
    out = layer(xt)
    weights = torch.tensor(np.random.default_rng(1).normal(size=tuple(out.shape)).astype("float32"))
    (out * weights).sum().backward()
    return out.detach().numpy(), xt.grad.numpy(), out


def test_views_are_installed_by_import_and_give_keras_numbers_bit_for_bit():
    from ssaseg_keras.ops import torch_layout

    assert torch_layout.layout_in_use() == "channels_last_views"
    x = np.random.default_rng(0).normal(size=(2, 13, 10, 4)).astype("float32")
    try:
        for layer in layers_under_test():
            layer.build(x.shape)
            torch_layout.use_channels_last_views(False)
            expected, expected_grad, _ = run(layer, x)
            torch_layout.use_channels_last_views(True)
            out, grad, tensor = run(layer, x)
            np.testing.assert_array_equal(out, expected, err_msg=layer.name)
            np.testing.assert_array_equal(grad, expected_grad, err_msg=layer.name)
            assert tensor.is_contiguous(), layer.name  # NHWC memory again: the next layer copies nothing
    finally:
        torch_layout.use_channels_last_views(True)


def test_views_skip_the_layout_copies():
    """The view path issues no copy of the input; Keras' path two (NCHW, then channels-last)."""
    import torch

    from ssaseg_keras.ops import torch_layout

    layer = keras.layers.DepthwiseConv2D(3, padding="same")
    x = torch.randn(1, 16, 16, 8)
    layer.build(tuple(x.shape))

    def input_copies():
        with torch.profiler.profile(record_shapes=True) as prof:
            layer(x)
        events = prof.key_averages(group_by_input_shape=True)
        return sum(e.count for e in events if e.key == "aten::copy_" and e.input_shapes[0] == [1, 8, 16, 16])

    try:
        torch_layout.use_channels_last_views(False)
        assert input_copies() == 2
        torch_layout.use_channels_last_views(True)
        assert input_copies() == 0
    finally:
        torch_layout.use_channels_last_views(True)


def test_a_bad_environment_value_is_one_warning_and_the_default(monkeypatch):
    from ssaseg_keras.ops import torch_layout

    monkeypatch.setenv(torch_layout.ENV_VAR, "fast")
    with pytest.warns(UserWarning, match="SSASEG_KERAS_TORCH_LAYOUT='fast' is neither 'views'"):
        torch_layout.install_from_environment()
    assert torch_layout.layout_in_use() == "channels_last_views"
    monkeypatch.setenv(torch_layout.ENV_VAR, "keras")
    try:
        torch_layout.install_from_environment()
        assert torch_layout.layout_in_use() == "keras"
    finally:
        torch_layout.use_channels_last_views(True)


def test_loss_compilation_without_a_cpp_compiler_names_the_key(monkeypatch):
    import torch
    from torch._inductor import cpp_builder

    from ssaseg_keras.ops.compile import check_loss_compilation_toolchain
    from ssaseg_keras.utils.errors import UserError

    def no_compiler():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(UserError, match="train.compile_loss: torch.compile needs a C.. compiler on CPU"):
        check_loss_compilation_toolchain()
