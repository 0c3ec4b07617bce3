"""PyTorch backend: Keras' channels-last convolutions and pools without their two layout copies.

Keras 3 (3.15) runs a channels-last `conv` / `depthwise_conv` / pool on PyTorch as
`permute(NHWC -> NCHW).contiguous()` -- a full copy into NCHW memory -- and, for convolutions,
`.contiguous(memory_format=torch.channels_last)` -- a second full copy, back into NHWC memory --
before calling torch. The permuted view of a contiguous NHWC tensor already *is* an NCHW tensor in
channels-last memory, which torch's convolutions and pools take as is: skipping both copies runs the
same kernels on the same memory, so the numbers are identical (tests/test_ops_torch.py), and a
convolution-heavy network such as MSCAN (three depthwise convolutions per block) saves two image-size
copies per convolution, forward and backward (BENCHMARKS.md, "CPU profile").

`use_channels_last_views()` installs this into Keras' PyTorch backend (it is a private hook of Keras:
`keras.src.backend.torch.nn._transpose_spatial_inputs`); `import ssaseg_keras` calls it when the
backend is torch. Only 4-D NHWC-contiguous inputs take the view; anything else (1-D/3-D, strided
tensors) goes through Keras' own function. Set SSASEG_KERAS_TORCH_LAYOUT=keras to keep Keras' copies
(`layout_in_use()` says which is active; the benchmark records it).
"""

from __future__ import annotations

import os
import warnings

ENV_VAR = "SSASEG_KERAS_TORCH_LAYOUT"
_state = {"original": None}


def _keras_torch_nn():
    from keras.src.backend.torch import nn as torch_nn

    return torch_nn


def use_channels_last_views(enable: bool = True) -> bool:
    """Install (or, with enable=False, remove) the copy-free layout in Keras' PyTorch backend.

    Returns whether it is installed afterwards: False when asked not to, or when this Keras has no
    `_transpose_spatial_inputs` hook (then Keras' own path runs, unchanged).
    """
    torch_nn = _keras_torch_nn()
    if not enable:
        if _state["original"] is not None:
            torch_nn._transpose_spatial_inputs = _state["original"]
            _state["original"] = None
        return False
    if _state["original"] is not None:
        return True
    original = getattr(torch_nn, "_transpose_spatial_inputs", None)
    if original is None:
        return False
    import torch

    def channels_last_view(inputs):
        """NHWC -> NCHW as a view when the NHWC tensor is contiguous (channels-last memory), else Keras'."""
        if inputs.ndim == 4 and inputs.is_contiguous():
            return torch.permute(inputs, (0, 3, 1, 2))
        return original(inputs)

    torch_nn._transpose_spatial_inputs = channels_last_view
    _state["original"] = original
    return True


def layout_in_use() -> str:
    """'channels_last_views' when installed, else 'keras' (Keras' copies)."""
    return "channels_last_views" if _state["original"] is not None else "keras"


def install_from_environment() -> None:
    """What `import ssaseg_keras` does on the torch backend: the views unless SSASEG_KERAS_TORCH_LAYOUT=keras."""
    choice = os.environ.get(ENV_VAR, "views").strip().lower()
    if choice not in ("views", "keras"):
        # Read at import time, before any command can report an error: one line, and the default.
        warnings.warn(
            f"{ENV_VAR}={choice!r} is neither 'views' (the default, no layout copies) nor 'keras' "
            "(Keras' copies); using 'views'. Set it to one of the two to silence this.",
            stacklevel=2,
        )
        choice = "views"
    if not use_channels_last_views(choice == "views") and choice == "views":
        warnings.warn(
            "ssaseg_keras: this Keras has no torch `_transpose_spatial_inputs` hook; its convolutions keep "
            "their layout copies (slower, same numbers). `ops.torch_layout.layout_in_use()` says 'keras'.",
            stacklevel=2,
        )
