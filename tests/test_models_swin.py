"""Swin backbone: mmseg 1.2.2 parity (tests/reference_tools/upernet_swin_mmseg.py), the official-layout
converter, exact parameter counts, serialisation, stochastic depth and checkpoint errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import DATA_DIR, nchw_to_nhwc, to_numpy

from ssaseg_keras.convert.reference import load_reference_weights
from ssaseg_keras.convert.swin import load_swin_pretrained, official_to_mmseg
from ssaseg_keras.models.backbones.swin import SwinBackbone, SwinBlock
from ssaseg_keras.utils.errors import CheckpointError

# One worker runs the module, so the loaded tiny backbone (and its compiled predict) is shared.
pytestmark = pytest.mark.xdist_group("swin")

GOLDEN = DATA_DIR / "upernet_swin_mmseg.npz"
TINY = {"embed_dims": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 7}
# Small images for the eager calls (one shape, so each backend compiles its kernels once).
SMALL_IMAGES = np.random.RandomState(1).randn(6, 32, 32, 3).astype("float32")
OUTPUT_NORMS = [f"norm{i}.{part}" for i in range(4) for part in ("weight", "bias")]


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


def group(golden, prefix):
    return {key[len(prefix) :]: value for key, value in golden.items() if key.startswith(prefix)}


@pytest.fixture(scope="module")
def tiny_backbone(golden):
    backbone = SwinBackbone(**TINY, drop_path_rate=0.3, seed=0)
    report = load_reference_weights(backbone, group(golden, "state/"), prefix="backbone.")
    assert report.num_loaded == 125  # every float tensor of mmseg's tiny SwinTransformer
    return backbone


def assert_stages_match(backbone, golden, image_key, suffix):
    outputs = backbone.predict(nchw_to_nhwc(golden[f"input/{image_key}"]), verbose=0)
    assert len(outputs) == 4
    for stage, output in enumerate(outputs, start=1):
        expected = nchw_to_nhwc(golden[f"out/stage{stage}{suffix}_nchw"])
        assert output.shape == expected.shape
        np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("image_key, suffix", [("images_nchw", ""), ("images2_nchw", "_b")])
def test_swin_matches_mmseg_at_padded_and_odd_sizes(tiny_backbone, golden, image_key, suffix):
    # 160x224: every stage pads to window multiples; 200x136: odd sides, patch merging pads too.
    assert tiny_backbone.stage_channels == [16, 32, 64, 128]
    assert_stages_match(tiny_backbone, golden, image_key, suffix)


def test_official_layout_loads_to_the_same_outputs(tiny_backbone, golden, tmp_path):
    official = group(golden, "official/")
    import torch  # a test requirement (the reference checkpoints are .pth files)

    path = tmp_path / "swin_official.pth"
    torch.save({"model": {name: torch.from_numpy(value) for name, value in official.items()}}, path)
    for variable in tiny_backbone.weights:  # forget the mmseg weights loaded by the fixture
        variable.assign(np.zeros(variable.shape, variable.dtype))
    report = load_swin_pretrained(tiny_backbone, path)
    # The official file has no output norms: they are named, and left as they were (zeros here).
    assert sorted(report.kept) == sorted(OUTPUT_NORMS)
    assert {"head.weight", "head.bias", "norm.weight", "norm.bias"} <= set(report.skipped)
    assert "not in the file, kept at their initial values: norm0.weight" in report.describe()
    assert report.num_loaded == 125 - len(OUTPUT_NORMS)
    assert not any(name.startswith("norm") for name in report.loaded)
    assert not np.any(to_numpy(tiny_backbone.get_layer("norm2").gamma))
    for i in range(4):  # the mmseg file's output norms, to compare the outputs
        norm = tiny_backbone.get_layer(f"norm{i}")
        norm.gamma.assign(golden[f"state/backbone.norm{i}.weight"])
        norm.beta.assign(golden[f"state/backbone.norm{i}.bias"])
    assert_stages_match(tiny_backbone, golden, "images_nchw", "")


def test_official_converter_reorders_patch_merging_to_unfold_order(golden):
    converted = official_to_mmseg(group(golden, "official/"))
    state = group(golden, "state/backbone.")
    assert set(converted) == set(state) - set(OUTPUT_NORMS)
    for name, value in converted.items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    # The reordering is not the identity: the official columns differ from mmseg's.
    official = golden["official/layers.0.downsample.reduction.weight"]
    assert not np.array_equal(official, state["stages.0.downsample.reduction.weight"])


SWIN_B = {"embed_dims": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)}
SWIN_L = {"embed_dims": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48)}


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def swin_parameter_formula(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4,
                           patch_size=4):  # fmt: skip
    """Trainable parameters of mmseg's SwinTransformer (4 output norms), from its module list."""
    width = embed_dims
    total = patch_size * patch_size * 3 * width + width + 2 * width  # patch_embed: conv + norm
    for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
        hidden = mlp_ratio * width
        norm1_qkv_proj = 2 * width + (3 * width * width + 3 * width) + (width * width + width)
        table_norm2 = (2 * window_size - 1) ** 2 * heads + 2 * width
        fc1_fc2 = (width * hidden + hidden) + (hidden * width + width)
        block = norm1_qkv_proj + table_norm2 + fc1_fc2
        total += depth * block + 2 * width  # blocks, output norm
        if stage < 3:
            # downsample: norm(4C), reduction 4C -> 2C without bias
            total += 2 * 4 * width + 4 * width * 2 * width
            width *= 2
    return total


def test_swin_t_parameter_count_matches_mmseg():
    # Variables created in a stateless scope are not initialised: building is fast.
    with keras.StatelessScope():
        backbone = SwinBackbone()
        assert trainable_count(backbone) == 27_520_698 == swin_parameter_formula()


def test_swin_b_and_l_parameter_counts_match_mmseg(tiny_backbone):
    # Building B and L takes a few seconds each on JAX (initialiser compiles), so they are counted by
    # the formula, which the built tiny model and Swin-T (above) check.
    assert trainable_count(tiny_backbone) == swin_parameter_formula(**TINY)
    assert swin_parameter_formula(**SWIN_B) == 86_745_016
    assert swin_parameter_formula(**SWIN_L) == 194_998_164


def test_keras_round_trip_gives_identical_outputs(tiny_backbone, tmp_path):
    path = tmp_path / "swin.keras"
    tiny_backbone.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, SwinBackbone)
    assert restored.get_config() == tiny_backbone.get_config()
    for before, after in zip(tiny_backbone(SMALL_IMAGES), restored(SMALL_IMAGES)):
        np.testing.assert_array_equal(to_numpy(after), to_numpy(before))


def test_drop_path_follows_mmseg_schedule_and_acts_only_in_training(tiny_backbone):
    blocks = [tiny_backbone.get_layer(f"stage{i}_block{j}") for i in range(4) for j in range(2)]
    # mmseg: torch.linspace(0, 0.3, 8) over the blocks in order; odd blocks shift their windows.
    np.testing.assert_allclose(
        [b.drop_path for b in blocks], [0.3 * k / 7 for k in range(8)], atol=1e-7
    )
    assert [b.shift_size for b in blocks] == [0, 3] * 4
    evaluation = to_numpy(tiny_backbone(SMALL_IMAGES, training=False)[3])
    training = to_numpy(tiny_backbone(SMALL_IMAGES, training=True)[3])
    assert np.abs(training - evaluation).max() > 1e-3

    no_drop = SwinBackbone(**TINY, drop_path_rate=0.0)
    no_drop.set_weights(tiny_backbone.get_weights())
    np.testing.assert_allclose(
        to_numpy(no_drop(SMALL_IMAGES, training=True)[3]), evaluation, rtol=1e-5, atol=1e-5
    )


def test_mixed_precision_block_stays_close_to_float32():
    # A shifted block (masked windows) in bfloat16: the scores, bias, mask and softmax run in float32.
    features = np.random.RandomState(2).randn(2, 10, 12, 32).astype("float32")
    exact = SwinBlock(num_heads=2, window_size=7, shift=True)
    mixed = SwinBlock(num_heads=2, window_size=7, shift=True, dtype="mixed_bfloat16")
    exact.build(features.shape)
    mixed.build(features.shape)
    mixed.set_weights(exact.get_weights())
    expected = to_numpy(exact(features))
    output = mixed(features)
    assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
    error = np.abs(to_numpy(keras.ops.cast(output, "float32")) - expected).max()
    assert error < 0.05 * np.abs(expected).max()  # bfloat16 keeps 8 significant bits


def save_pth(path, state):
    torch = pytest.importorskip("torch")
    torch.save({name: torch.from_numpy(np.asarray(value)) for name, value in state.items()}, path)
    return path


def test_wrong_size_and_garbage_checkpoints_are_clear_errors(tiny_backbone, golden, tmp_path):
    # A Swin-B-width file for this (embed_dims 16) model.
    wide = {
        "patch_embed.proj.weight": np.zeros((128, 3, 4, 4), "float32"),
        "layers.0.blocks.0.norm1.weight": np.zeros(128, "float32"),
    }
    with pytest.raises(CheckpointError, match=r"embed_dims 128 \(Swin-B\).*embed_dims 16"):
        load_swin_pretrained(tiny_backbone, save_pth(tmp_path / "wide.pth", wide))
    # The right width and depths, but a bias table with the wrong number of heads.
    official = group(golden, "official/")
    official["layers.3.blocks.0.attn.relative_position_bias_table"] = np.zeros((169, 8), "float32")
    with pytest.raises(
        CheckpointError,
        match=r"(?s)swin_heads\.pth.*relative_position_bias_table: reference \(169, 8\).*num_heads",
    ):
        load_swin_pretrained(tiny_backbone, save_pth(tmp_path / "swin_heads.pth", official))
    with pytest.raises(CheckpointError, match="not a Swin checkpoint"):
        load_swin_pretrained(
            tiny_backbone, save_pth(tmp_path / "other.pth", {"conv.weight": np.ones((2, 2))})
        )
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_swin_pretrained(tiny_backbone, garbage)
