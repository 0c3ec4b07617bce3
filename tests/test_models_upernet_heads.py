"""UperNet's heads against mmsegmentation 1.2.2's `UPerHead` and `FCNHead` (issue 16, first part).

`tests/data/uper_head_mmseg.npz` and `fcn_head_mmseg.npz` were made by
`tests/reference_tools/upernet_heads_mmseg.py`: tiny heads with random weights and BatchNorm
statistics, eval mode, on stage features of odd sizes (19x25 ... 3x4), so the pyramid pooling bins
overlap and no upsampling is a plain doubling.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import DATA_DIR, nchw_to_nhwc, to_numpy

from ssaseg_keras.convert import load_reference_weights
from ssaseg_keras.models.heads.fcn_head import FCNHead
from ssaseg_keras.models.heads.uper_head import UPerHead, adaptive_average_pool
from ssaseg_keras.utils.variables import count_parameters


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(DATA_DIR / "uper_head_mmseg.npz"))


def _head_from(reference):
    state = {k[len("state/"):]: v for k, v in reference.items() if k.startswith("state/")}
    inputs = [nchw_to_nhwc(reference[f"input/stage{i}_nchw"]) for i in range(1, 5)]
    head = UPerHead(channels=8, pool_scales=(1, 2, 3, 6))
    head.build([x.shape for x in inputs])
    # Strict: every tensor of mmseg's head (but its classifier) has a place, every weight a tensor.
    report = load_reference_weights(head, state, ignore=["conv_seg.*"])
    assert len(report.loaded) == len([k for k in state if not k.startswith("conv_seg")])
    return head, state, inputs


def test_uper_head_reproduces_mmseg_features(reference):
    head, state, inputs = _head_from(reference)
    features = to_numpy(head([keras.ops.convert_to_tensor(x) for x in inputs], training=False))
    expected = nchw_to_nhwc(reference["out/features_nchw"])
    assert features.shape == expected.shape == (2, 19, 25, 8)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    logits = features @ state["conv_seg.weight"][:, :, 0, 0].T + state["conv_seg.bias"]
    expected_logits = nchw_to_nhwc(reference["out/logits_nchw"])
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4 * np.abs(expected_logits).max())
    mmseg_params = sum(v.size for k, v in state.items() if not k.startswith("conv_seg") and "running" not in k)
    assert count_parameters(head.trainable_variables) == mmseg_params


def test_adaptive_average_pool_is_torchs_with_overlapping_bins():
    x = np.random.default_rng(0).normal(size=(2, 7, 5, 3)).astype("float32")
    pooled = to_numpy(adaptive_average_pool(keras.ops.convert_to_tensor(x), 3))
    for i in range(3):
        for j in range(3):
            rows = slice((i * 7) // 3, -(-((i + 1) * 7) // 3))
            cols = slice((j * 5) // 3, -(-((j + 1) * 5) // 3))
            np.testing.assert_allclose(pooled[:, i, j], x[:, rows, cols].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_uper_head_swin_t_size_has_mmsegs_parameter_count_and_reloads():
    """UperNet Swin-T's head (in_channels 96-768, 512 channels): 31,420,416 trainable parameters
    without conv_seg, as mmseg 1.2.2 counts them (reference_tools/uper_head_mmseg.py's set-up)."""
    shapes = [(None, None, None, c) for c in (96, 192, 384, 768)]
    head = UPerHead(channels=512)
    head.build(shapes)
    assert count_parameters(head.trainable_variables) == 31_420_416
    clone = UPerHead.from_config(head.get_config())
    assert clone.get_config() == head.get_config()


def test_fcn_head_reproduces_mmseg_features():
    reference = dict(np.load(DATA_DIR / "fcn_head_mmseg.npz"))
    state = {k[len("state/"):]: v for k, v in reference.items() if k.startswith("state/")}
    inputs = [keras.ops.convert_to_tensor(nchw_to_nhwc(reference[f"input/stage{i}_nchw"])) for i in range(1, 5)]
    head = FCNHead(channels=8, num_convs=2, concat_input=True, in_index=2)
    head.build([tuple(x.shape) for x in inputs])
    report = load_reference_weights(head, state, ignore=["conv_seg.*"])
    assert len(report.loaded) == len([k for k in state if not k.startswith("conv_seg")])
    features = to_numpy(head(inputs, training=False))
    expected = nchw_to_nhwc(reference["out/features_nchw"])
    assert features.shape == expected.shape == (2, 5, 7, 8)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    mmseg_params = sum(v.size for k, v in state.items() if not k.startswith("conv_seg") and "running" not in k)
    assert count_parameters(head.trainable_variables) == mmseg_params


def test_fcn_auxiliary_head_at_upernet_swin_t_size_has_mmsegs_parameter_count():
    """UperNet Swin-T's auxiliary head (stage 3, 384 -> 256 channels, one conv, no concat):
    885,248 trainable parameters without conv_seg, as mmseg 1.2.2 counts them."""
    head = FCNHead(channels=256, num_convs=1, concat_input=False, in_index=2)
    head.build([(None, None, None, c) for c in (96, 192, 384, 768)])
    assert count_parameters(head.trainable_variables) == 885_248
    assert FCNHead.from_config(head.get_config()).get_config() == head.get_config()
