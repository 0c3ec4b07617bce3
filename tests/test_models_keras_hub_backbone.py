"""KerasHubBackbone: keras-hub feature-pyramid backbones as 4-stage backbones, their reference names,
errors, local presets and `.keras` round trips. Tiny random configs; no network."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import to_numpy

from ssaseg_keras.convert import keras_hub_pyramid as hub_names  # registers the mapping
from ssaseg_keras.convert.reference import load_reference_weights, reference_mapping
from ssaseg_keras.models.backbones.keras_hub_pyramid import KerasHubBackbone
from ssaseg_keras.training.optimizer import multipliers_of, reference_names
from ssaseg_keras.utils.errors import UserError

pytest.importorskip("keras_hub", reason="backend: keras-hub is not installed in this environment")

IMAGES = np.random.default_rng(0).uniform(0.0, 1.0, (2, 64, 96, 3)).astype("float32")
# keras-hub's ResNet requires 64 filters in the first stack, and a basic-block first stack keeps the
# stem's width, hence the 64s.
TINY_RESNET = {
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
    "stackwise_num_filters": [64, 8, 16, 16],
    "stackwise_num_blocks": [1, 1, 1, 1],
    "stackwise_num_strides": [1, 2, 2, 2],
    "block_type": "basic_block",
    "use_pre_activation": False,
}
# Five levels P1..P5 (strides 2..32): the adapter must pick P2..P5.
TINY_EFFICIENTNET = {
    "stackwise_kernel_sizes": [3, 3, 3, 3],
    "stackwise_num_repeats": [1, 1, 1, 1],
    "stackwise_input_filters": [8, 8, 8, 16],
    "stackwise_output_filters": [8, 8, 16, 16],
    "stackwise_expansion_ratios": [1, 2, 2, 2],
    "stackwise_squeeze_and_excite_ratios": [0, 0, 0, 0],
    "stackwise_strides": [2, 2, 2, 2],
    "stackwise_block_types": ["v1", "v1", "v1", "v1"],
    "stackwise_force_input_filters": [0, 0, 0, 0],
    "stackwise_nores_option": [False, False, False, False],
    "stackwise_width_coefficients": [1.0, 1.0, 1.0, 1.0],
    "stackwise_depth_coefficients": [1.0, 1.0, 1.0, 1.0],
    "num_features": 16,
}
# keras-hub's MiT names its stride-4 level P1 and only runs at a fixed square size.
TINY_MIT = {
    "layerwise_depths": [1, 1, 1, 1],
    "num_layers": 4,
    "layerwise_num_heads": [1, 1, 1, 1],
    "layerwise_sr_ratios": [8, 4, 2, 1],
    "max_drop_path_rate": 0.1,
    "layerwise_patch_sizes": [7, 3, 3, 3],
    "layerwise_strides": [4, 2, 2, 2],
    "hidden_dims": [8, 8, 16, 16],
}


def keras_hub_features(backbone):
    """The wrapped keras-hub model's own pyramid outputs at the adapter's levels, as a keras.Model."""
    hub = backbone.keras_hub_backbone
    return keras.Model(hub.inputs[0], [hub.pyramid_outputs[level] for level in backbone.levels])


def randomize(model, seed=1):
    """Give every float variable a random value (variances positive), so a round trip that loses a
    weight or a BN statistic shows."""
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        if "float" not in str(variable.dtype):
            continue
        value = rng.normal(0.0, 0.2, variable.shape)
        if "variance" in variable.path:
            value = np.abs(value) + 0.5
        variable.assign(value.astype("float32"))


def predict(model, images=IMAGES):
    return [np.asarray(x) for x in model.predict_on_batch(images)]


@pytest.fixture(scope="module")
def resnet():
    return KerasHubBackbone(class_name="ResNetBackbone", arguments=TINY_RESNET, name="backbone")


@pytest.fixture(scope="module")
def mit():
    return KerasHubBackbone(class_name="MiTBackbone", arguments=TINY_MIT, image_shape=(64, 64, 3))


# ------------------------------------------------------------------ features
def test_resnet_stages_are_keras_hubs_pyramid_outputs_at_a_nonsquare_size(resnet):
    assert resnet.levels == ["P2", "P3", "P4", "P5"]
    assert tuple(resnet.inputs[0].shape) == (None, None, None, 3)
    assert resnet.stage_channels == [64, 8, 16, 16]
    features = predict(resnet)
    assert [f.shape for f in features] == [(2, 16, 24, 64), (2, 8, 12, 8), (2, 4, 6, 16), (2, 2, 3, 16)]
    expected = predict(keras_hub_features(resnet))
    for got, want in zip(features, expected):
        assert float(np.std(want)) > 1e-3  # a real feature map, not zeros
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert resnet.count_params() == resnet.keras_hub_backbone.count_params() == 98528


def test_efficientnet_levels_are_chosen_by_stride():
    backbone = KerasHubBackbone(class_name="EfficientNetBackbone", arguments=TINY_EFFICIENTNET)
    assert sorted(backbone.keras_hub_backbone.pyramid_outputs) == ["P1", "P2", "P3", "P4", "P5"]
    assert backbone.levels == ["P2", "P3", "P4", "P5"]
    features = predict(backbone)
    assert [f.shape for f in features] == [(2, 16, 24, 8), (2, 8, 12, 8), (2, 4, 6, 16), (2, 2, 3, 16)]
    for got, want in zip(features, predict(keras_hub_features(backbone))):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert backbone.count_params() == backbone.keras_hub_backbone.count_params()


def test_cspdarknet_levels_are_p3_to_p6():
    # A stride-1 stem and five stride-2 stages: keras-hub's P2..P6 sit at strides 2..32.
    arguments = {
        "stem_filters": 8,
        "stem_kernel_size": 3,
        "stem_strides": 1,
        "stackwise_depth": [1, 1, 1, 1, 1],
        "stackwise_strides": 2,
        "stackwise_num_filters": [8, 8, 16, 16, 24],
        "block_type": "dark_block",
        "stage_type": "csp",
        "bottle_ratio": [0.5],
        "block_ratio": [1.0],
        "expand_ratio": [2.0],
    }
    backbone = KerasHubBackbone(class_name="CSPNetBackbone", arguments=arguments)
    assert backbone.levels == ["P3", "P4", "P5", "P6"]
    assert backbone.stage_channels == [8, 16, 16, 24]
    spec = backbone.compute_output_spec(keras.KerasTensor((1, 64, 96, 3)))
    assert [tuple(s.shape) for s in spec] == [(1, 16, 24, 8), (1, 8, 12, 16), (1, 4, 6, 16), (1, 2, 3, 24)]


def test_layers_after_the_last_level_are_left_out():
    # DenseNet normalises its last level once more (60 parameters for 15 channels) for classification.
    backbone = KerasHubBackbone(
        class_name="DenseNetBackbone", arguments={"stackwise_num_repeats": [1, 1, 1, 1], "growth_rate": 4}
    )
    assert backbone.count_params() == keras_hub_features(backbone).count_params()
    assert backbone.keras_hub_backbone.count_params() - backbone.count_params() == 4 * 15


def test_mit_stride4_level_is_p1_and_its_size_is_fixed(mit):
    assert mit.levels == ["P1", "P2", "P3", "P4"]
    assert sorted(mit.pyramid_outputs) == ["P2", "P3", "P4", "P5"]  # the adapter's names are by stride
    assert [tuple(t.shape) for t in mit.outputs] == [
        (None, 16, 16, 8),
        (None, 8, 8, 8),
        (None, 4, 4, 16),
        (None, 2, 2, 16),
    ]
    assert tuple(mit.inputs[0].shape) == (None, 64, 64, 3)
    assert mit.count_params() == mit.keras_hub_backbone.count_params()


# ------------------------------------------------------------ reference names
def _names_and_norm_flags(model):
    owners = hub_names.variable_owners(model)
    return [(name, hub_names.is_norm_layer(owners[id(v)]), v) for name, v, _ in reference_mapping(model)]


def test_resnet_reference_names(resnet):
    entries = _names_and_norm_flags(resnet)
    names = [name for name, _, _ in entries]
    assert len(names) == len(set(names)) == len(resnet.variables) == 60
    assert names[:6] == [
        "conv1_conv.kernel",
        "conv1_bn.norm.gamma",
        "conv1_bn.norm.beta",
        "conv1_bn.norm.moving_mean",
        "conv1_bn.norm.moving_variance",
        "stack0_block0_1_conv.kernel",
    ]
    for name, in_norm, _ in entries:
        assert ("norm" in name) == in_norm, name
    norm_count = sum(in_norm for _, in_norm, _ in entries)
    assert norm_count == 4 * 12  # 12 BatchNormalizations: stem, 2 per block, 3 shortcut projections
    # mmcv's rule with the recipes' keys: BN weights lose weight decay, nothing is a "head".
    assert multipliers_of("conv1_bn.norm.gamma") == (1.0, 0.0)
    assert multipliers_of("conv1_conv.kernel") == (1.0, 1.0)
    groups = {multipliers_of(name) for name in reference_names(resnet).values()}
    assert groups == {(1.0, 0.0), (1.0, 1.0)}


def test_mit_reference_names_keep_norm_and_never_say_head(mit):
    entries = _names_and_norm_flags(mit)
    names = [name for name, _, _ in entries]
    assert len(names) == len(set(names))
    # Drop-path seed states are not weights: 12 of MiT's variables get no name.
    seed_states = [v for v in mit.variables if "seed_generator_state" in v.path]
    assert len(seed_states) == 12
    assert len(names) == len(mit.variables) - 12 == 108
    assert not any("head" in name for name in names)
    assert "hierarchical_encoder_0_0.seg_former_multihd_attention.dense.kernel" in names
    assert "patch_and_embed_0.layer_normalization.gamma" in names  # "norm" already there: unchanged
    for name, in_norm, _ in entries:
        assert ("norm" in name) == in_norm, name
    named = set(reference_names(mit))  # every trainable variable is named
    assert named >= {id(v) for v in mit.trainable_variables}


def test_reference_names_load_weights_back(resnet):
    state = {name: to_numpy(variable) + 0.5 for name, variable, _ in reference_mapping(resnet)}
    target = KerasHubBackbone(class_name="ResNetBackbone", arguments=TINY_RESNET)
    report = load_reference_weights(target, state)
    assert report.num_loaded == 60
    for name, variable, _ in reference_mapping(target):
        np.testing.assert_array_equal(to_numpy(variable), state[name])


# ------------------------------------------------------------------- errors
def test_unknown_class_lists_the_pyramid_backbones():
    with pytest.raises(UserError, match="no backbone class 'ConvNeXtBackbone'") as error:
        KerasHubBackbone(class_name="ConvNeXtBackbone", arguments={})
    for name in ("CSPNetBackbone", "DenseNetBackbone", "EfficientNetBackbone", "MiTBackbone", "ResNetBackbone"):
        assert name in str(error.value)


def test_backbone_without_pyramid_outputs_is_refused():
    with pytest.raises(UserError, match="BertBackbone has no pyramid_outputs.*ResNetBackbone"):
        KerasHubBackbone(class_name="BertBackbone", arguments={})


def test_missing_level_names_the_levels_there_are():
    with pytest.raises(UserError, match=r"unknown levels P6.*P2 \(stride 4\), P3 \(stride 8\), P4 \(stride 16\), P5 \(stride 32\)"):
        KerasHubBackbone(class_name="ResNetBackbone", arguments=TINY_RESNET, levels=["P3", "P4", "P5", "P6"])


def test_levels_at_wrong_strides_are_refused():
    with pytest.raises(UserError, match=r"have strides \(2, 4, 8, 16\).*P1 \(stride 2\)"):
        KerasHubBackbone(
            class_name="EfficientNetBackbone", arguments=TINY_EFFICIENTNET, levels=["P1", "P2", "P3", "P4"]
        )


def test_single_stride_vit_is_refused():
    arguments = {"patch_size": 14, "num_layers": 1, "hidden_dim": 8, "num_heads": 2, "intermediate_dim": 16,
                 "image_shape": (56, 56, 3), "position_embedding_shape": (56, 56, 3)}  # fmt: skip
    message = r"DINOV2Backbone has no pyramid level at stride 4, 8, 16, 32; its levels: stage1 \(no image stride\), stem"
    with pytest.raises(UserError, match=message):
        KerasHubBackbone(class_name="DINOV2Backbone", arguments=arguments, image_shape=(56, 56, 3))


def test_bad_arguments_and_image_shape_are_user_errors():
    with pytest.raises(UserError, match=r"MiTBackbone\(\*\*arguments\) failed"):  # MiT cannot run at an open size
        KerasHubBackbone(class_name="MiTBackbone", arguments=TINY_MIT)
    with pytest.raises(UserError, match=r"image_shape \(96, 96, 3\) does not fit MiTBackbone's input \(64, 64, 3\)"):
        KerasHubBackbone(class_name="MiTBackbone", arguments={**TINY_MIT, "image_shape": (64, 64, 3)}, image_shape=(96, 96, 3))


def test_exactly_one_of_preset_or_class_name():
    with pytest.raises(UserError, match="exactly one of `preset`"):
        KerasHubBackbone()
    with pytest.raises(UserError, match="exactly one of `preset`"):
        KerasHubBackbone(preset="resnet_18_imagenet", class_name="ResNetBackbone")


def test_preset_offline_is_one_clear_error(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(UserError) as error:
        KerasHubBackbone(preset="resnet_18_imagenet")
    message = str(error.value)
    assert "'resnet_18_imagenet'" in message
    assert "needs network access once" in message
    assert "local preset directory" in message and "class_name + arguments" in message
    missing_dir = str(tmp_path / "no_such_preset")
    with pytest.raises(UserError, match=f"keras-hub preset '{missing_dir}'.*local preset directory"):
        KerasHubBackbone(preset=missing_dir)


def test_missing_keras_hub_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    with pytest.raises(UserError, match="pip install keras-hub"):
        KerasHubBackbone(class_name="ResNetBackbone", arguments=TINY_RESNET)


def test_modules_import_without_keras_hub():
    code = (
        "import sys\n"
        "import ssaseg_keras.models.backbones.keras_hub_pyramid, ssaseg_keras.convert.keras_hub_pyramid\n"
        "print(sorted(m for m in ('keras_hub', 'keras_cv', 'tensorflow') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    loaded = eval(result.stdout.strip().splitlines()[-1])
    expected = ["tensorflow"] if keras.backend.backend() == "tensorflow" else []
    assert loaded == expected


# --------------------------------------------------- presets and serialisation
def test_local_preset_and_keras_round_trip_without_the_preset(tmp_path):
    import keras_hub

    source = keras_hub.models.ResNetBackbone(**TINY_RESNET)
    randomize(source)
    preset_dir = tmp_path / "tiny_resnet_preset"
    source.save_to_preset(str(preset_dir))

    backbone = KerasHubBackbone(preset=str(preset_dir), name="backbone")
    for loaded, saved in zip(backbone.keras_hub_backbone.weights, source.weights):
        np.testing.assert_array_equal(to_numpy(loaded), to_numpy(saved))
    random_init = KerasHubBackbone(preset=str(preset_dir), load_weights=False)
    assert not np.allclose(
        to_numpy(random_init.keras_hub_backbone.get_layer("conv1_conv").kernel),
        to_numpy(source.get_layer("conv1_conv").kernel),
    )
    fixed = KerasHubBackbone(preset=str(preset_dir), load_weights=False, image_shape=(64, 96, 3))
    assert tuple(fixed.inputs[0].shape) == (None, 64, 96, 3)  # a fixed size reaches the keras-hub model

    before = predict(backbone)
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    shutil.rmtree(preset_dir)  # the reload must not read the preset again
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, KerasHubBackbone)
    assert reloaded.levels == ["P2", "P3", "P4", "P5"] and reloaded.preset == str(preset_dir)
    assert reloaded.get_config()["keras_hub_backbone"]["class_name"] == "ResNetBackbone"
    for got, want in zip(predict(reloaded), before):
        np.testing.assert_array_equal(got, want)


def test_keras_round_trip_with_generated_layer_names(mit, tmp_path):
    # keras-hub's MiT leaves its LayerNormalizations unnamed: their names differ in the rebuilt model.
    randomize(mit, seed=2)
    images = IMAGES[:, :, :64]
    before = predict(mit, images)
    path = str(tmp_path / "mit.keras")
    mit.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.levels == ["P1", "P2", "P3", "P4"] and reloaded.image_shape == (64, 64, 3)
    for got, want in zip(predict(reloaded, images), before):
        np.testing.assert_array_equal(got, want)
    assert [n for n, _, _ in reference_mapping(reloaded)] == [n for n, _, _ in reference_mapping(mit)]
