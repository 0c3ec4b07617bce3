"""Resizes against PyTorch's F.interpolate (the reference's), on the active Keras backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # a test requirement: the parity suites never skip
from conftest import to_numpy

from ssaseg_keras.ops import downsample_labels, resize_bilinear


@pytest.mark.parametrize("method", ["matmul", "banded", "gather"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(16, 20), (3, 4), (7, 30), (20, 5), (1, 1), (14, 18)])
def test_bilinear_matches_torch(size, align_corners, method):
    x = np.random.default_rng(0).normal(size=(2, 7, 9, 3)).astype("float32")
    expected = torch.nn.functional.interpolate(
        torch.tensor(x).permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=align_corners
    ).permute(0, 2, 3, 1)
    resized = resize_bilinear(x, size, align_corners, method=method)
    np.testing.assert_allclose(to_numpy(resized), expected.numpy(), atol=2e-6)


def test_bilinear_names_an_unknown_method():
    with pytest.raises(ValueError, match="method='bicubic', expected one of"):
        resize_bilinear(np.zeros((1, 2, 2, 1), "float32"), (4, 4), method="bicubic")


@pytest.mark.parametrize("shape", [(37, 50, 16, 16), (64, 64, 16, 16), (100, 77, 13, 9), (10, 10, 30, 7)])
def test_label_downsampling_matches_torch_legacy_nearest(shape):
    in_h, in_w, out_h, out_w = shape
    labels = np.random.default_rng(1).integers(0, 256, size=(2, in_h, in_w)).astype("int32")
    expected = torch.nn.functional.interpolate(torch.tensor(labels[:, None]).float(), size=(out_h, out_w), mode="nearest")
    np.testing.assert_array_equal(to_numpy(downsample_labels(labels, (out_h, out_w))), expected[:, 0].numpy())


@pytest.mark.parametrize("size", [(16, 20), (3, 4), (7, 9), (20, 5)])
def test_bilinear_with_dynamic_sizes_samples_like_torch(size):
    """Sizes given as tensors (what a graph of unknown image size has) take the gather path: same result."""
    from keras import ops

    x = np.random.default_rng(2).normal(size=(2, 7, 9, 3)).astype("float32")
    dynamic = (ops.convert_to_tensor(size[0], "int32"), ops.convert_to_tensor(size[1], "int32"))
    expected = torch.nn.functional.interpolate(
        torch.tensor(x).permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(to_numpy(resize_bilinear(x, dynamic)), expected.numpy(), atol=2e-6)
    with pytest.raises(ValueError, match="static sizes"):
        resize_bilinear(x, dynamic, align_corners=True)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(56, 72), (16, 20), (3, 4), (7, 9), (1, 1)])
def test_bilinear_at_picks_the_resized_channel_like_torch(size, align_corners):
    """`resize_bilinear_at` = F.interpolate(...)[b, i, j, channel[b, i, j]], value and gradient."""
    from conftest import value_and_grad

    from ssaseg_keras.ops import resize_bilinear_at

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 9, 5)).astype("float32")
    channel = rng.integers(0, 5, size=(2,) + size).astype("int32")
    weights = rng.normal(size=(2,) + size).astype("float32")
    xt = torch.tensor(x, requires_grad=True)
    full = torch.nn.functional.interpolate(
        xt.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=align_corners
    ).permute(0, 2, 3, 1)
    picked = torch.gather(full, -1, torch.tensor(channel, dtype=torch.int64)[..., None])[..., 0]
    (picked * torch.tensor(weights)).sum().backward()

    from keras import ops

    value, grad = value_and_grad(
        lambda v: ops.sum(resize_bilinear_at(v, channel, size, align_corners) * ops.convert_to_tensor(weights)), x
    )
    np.testing.assert_allclose(to_numpy(resize_bilinear_at(x, channel, size, align_corners)), picked.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(value, float((picked * torch.tensor(weights)).sum()), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, xt.grad.numpy(), atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    "in_size, size", [((12, 14), (96, 112)), ((16, 10), (32, 40)), ((9, 10), (33, 40)), ((13, 8), (64, 32))]
)
def test_banded_upsampling_matches_torch_with_its_gradient(in_size, size, align_corners):
    """method="banded", upsampling by 2-8x, runs the interpolation matrix's band (`interpolation_band`), also where
    sampling positions fall exactly on input rows (9 -> 33 with align_corners) and where the output
    size is no multiple of the input's: torch's values and input gradient."""
    from conftest import value_and_grad
    from keras import ops

    from ssaseg_keras.ops.resize import interpolation_band

    assert all(interpolation_band(i, o, align_corners) is not None for i, o in zip(in_size, size))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, *in_size, 3)).astype("float32")
    weights = rng.normal(size=(2, *size, 3)).astype("float32")
    xt = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.interpolate(
        xt.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=align_corners
    ).permute(0, 2, 3, 1)
    (expected * torch.tensor(weights)).sum().backward()
    value, grad = value_and_grad(
        lambda v: ops.sum(resize_bilinear(v, size, align_corners, "banded") * ops.convert_to_tensor(weights)), x
    )
    resized = resize_bilinear(x, size, align_corners, "banded")
    np.testing.assert_allclose(to_numpy(resized), expected.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-5, atol=1e-5)  # sums of up to 64 terms


def test_band_is_only_used_where_it_saves_work():
    """Downsampling, equal sizes and small factors keep the dense matrix; 32 -> 256 uses windows of
    3 input rows for blocks of 8 output rows."""
    from ssaseg_keras.ops.resize import interpolation_band

    assert interpolation_band(64, 32, False) is None
    assert interpolation_band(9, 17, True) is None  # 17 is prime: blocks of one row save too little
    block, window, starts = interpolation_band(32, 256, True)
    assert (block, window, len(starts)) == (8, 3, 32)
    assert starts[0] == 0 and starts[-1] == 32 - 3


def test_banded_upsampling_compiles_without_graph_breaks():
    """The band's layout is Python arithmetic on static sizes, so the backend's compiler takes the
    banded resize whole (torch.compile fullgraph, XLA): the same values as eager."""
    from conftest import compile_fn
    from keras import ops

    x = np.random.default_rng(5).normal(size=(2, 8, 10, 3)).astype("float32")

    def banded(v):
        return resize_bilinear(v, (64, 40), True, "banded")

    compiled = compile_fn(banded)(ops.convert_to_tensor(x))
    np.testing.assert_allclose(to_numpy(compiled), to_numpy(banded(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_band_holds_every_tap_of_torchs_interpolation(align_corners):
    """For every upsampling from 2..48 rows by 1.2x-9x, each output row's non-zero weights in torch's
    own interpolation matrix (F.interpolate of an identity) fall inside its block's window: the
    band's float64 positions and their margin never drop a tap that torch's float32 positions use."""
    from ssaseg_keras.ops.resize import interpolation_band

    checked = 0
    for in_size in range(2, 49):
        for out_size in sorted({int(in_size * f) for f in (1.2, 1.5, 2, 2.5, 3, 4, 5.3, 8, 9)} | {4 * in_size + 1}):
            band = interpolation_band(in_size, out_size, align_corners)
            if band is None:
                continue
            block, window, starts = band
            matrix = torch.nn.functional.interpolate(
                torch.eye(in_size)[None], size=out_size, mode="linear", align_corners=align_corners
            )[0].T.numpy()  # (out, in): row i holds output i's weights
            rows, columns = np.nonzero(matrix)
            first = np.asarray(starts)[rows // block]
            assert ((columns >= first) & (columns < first + window)).all(), (in_size, out_size)
            checked += 1
    assert checked > 300  # the band is taken for most of these sizes
