"""KerasCVBackbone: keras-cv feature-pyramid backbones as 4-stage backbones, their reference names,
errors, local presets, `.keras` round trips and an UperNet over one. Tiny random configs; no network."""

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

from ssaseg_keras.convert import keras_hub_pyramid as hub_names
from ssaseg_keras.convert.reference import load_reference_weights, reference_mapping
from ssaseg_keras.models.backbones.keras_cv_pyramid import KerasCVBackbone
from ssaseg_keras.models.builder import build_segmentor
from ssaseg_keras.recipes import validate_model
from ssaseg_keras.training.optimizer import multipliers_of, parameter_groups, reference_names
from ssaseg_keras.utils.errors import RecipeError, UserError

pytest.importorskip("keras_cv", reason="backend: keras-cv is not installed in this environment")

IMAGES = np.random.default_rng(0).uniform(-2.0, 2.0, (2, 64, 96, 3)).astype("float32")
# keras-cv's ResNet (V1) keeps its 64-filter stem; bottleneck blocks give 4 x filters channels.
TINY_RESNET = {"stackwise_filters": [8, 8, 16, 16], "stackwise_blocks": [1, 1, 1, 1], "stackwise_strides": [1, 2, 2, 2]}
# stem 7x7 conv 9408 + BN 256; blocks (1x1 shortcut, 1x1, 3x3, 1x1 convs + 4 BNs): 3712, 2432, 6528, 9088
PARAMS_RESNET = 31424
# keras-cv's EfficientNetV2: a stride-2 stem and four stride-2 stages.
TINY_EFFICIENTNET = {
    "width_coefficient": 1.0,
    "depth_coefficient": 1.0,
    "stackwise_kernel_sizes": [3, 3, 3, 3],
    "stackwise_num_repeats": [1, 1, 1, 1],
    "stackwise_input_filters": [8, 8, 8, 16],
    "stackwise_output_filters": [8, 8, 16, 16],
    "stackwise_expansion_ratios": [2, 2, 2, 2],  # a fused block with ratio 1 ignores its stride
    "stackwise_squeeze_and_excite_ratios": [0, 0, 0, 0],
    "stackwise_strides": [2, 2, 2, 2],
    "stackwise_conv_types": ["fused", "fused", "unfused", "unfused"],
}
# keras-cv's MiT: 1, 2, 5, 8 heads per stage (fixed), levels P1..P4 at strides 4..32, fixed size only.
TINY_MIT = {"depths": [1, 1, 1, 1], "embedding_dims": [8, 8, 20, 16]}


def keras_cv_features(backbone):
    """The wrapped keras-cv model's own pyramid layers at the adapter's levels, as a keras.Model."""
    cv = backbone.keras_cv_backbone
    names = [cv.pyramid_level_inputs[level] for level in backbone.levels]
    return keras.Model(cv.inputs[0], [cv.get_layer(name).output for name in names])


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
    return KerasCVBackbone(class_name="ResNetBackbone", arguments=TINY_RESNET, name="backbone")


@pytest.fixture(scope="module")
def mit():
    return KerasCVBackbone(class_name="MiTBackbone", arguments=TINY_MIT, image_shape=(64, 64, 3))


# ------------------------------------------------------------------ features
def test_resnet_stages_are_keras_cvs_pyramid_layers_at_a_nonsquare_size(resnet):
    assert resnet.levels == ["P2", "P3", "P4", "P5"]
    assert tuple(resnet.inputs[0].shape) == (None, None, None, 3)
    assert resnet.stage_channels == [32, 32, 64, 64]
    features = predict(resnet)
    assert [f.shape for f in features] == [(2, 16, 24, 32), (2, 8, 12, 32), (2, 4, 6, 64), (2, 2, 3, 64)]
    expected = predict(keras_cv_features(resnet))
    for got, want in zip(features, expected):
        assert float(np.std(want)) > 1e-3  # a real feature map, not zeros
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert resnet.count_params() == resnet.keras_cv_backbone.count_params() == PARAMS_RESNET


def test_rescaling_is_off_unless_the_arguments_turn_it_on(resnet):
    assert resnet.keras_cv_backbone.include_rescaling is False
    rescaled = KerasCVBackbone(class_name="ResNetBackbone", arguments={**TINY_RESNET, "include_rescaling": True})
    rescaled.set_weights(resnet.get_weights())  # Rescaling(1/255) has no weights
    for got, want in zip(predict(rescaled, IMAGES * 255.0), predict(resnet)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_efficientnet_levels_are_chosen_by_stride():
    # Five levels P1..P5 at strides 2..32; keras-cv's P5 is its 1x1 top conv's activation (1280).
    backbone = KerasCVBackbone(class_name="EfficientNetV2Backbone", arguments=TINY_EFFICIENTNET)
    assert sorted(backbone.keras_cv_backbone.pyramid_level_inputs) == ["P1", "P2", "P3", "P4", "P5"]
    assert backbone.levels == ["P2", "P3", "P4", "P5"]
    features = predict(backbone)
    assert [f.shape for f in features] == [(2, 16, 24, 8), (2, 8, 12, 8), (2, 4, 6, 16), (2, 2, 3, 1280)]
    for got, want in zip(features, predict(keras_cv_features(backbone))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert backbone.count_params() == backbone.keras_cv_backbone.count_params()


def test_layers_after_the_last_level_are_left_out():
    # keras-cv's DenseNet normalises its last level once more (60 parameters for 15 channels).
    backbone = KerasCVBackbone(
        class_name="DenseNetBackbone", arguments={"stackwise_num_repeats": [1, 1, 1, 1], "growth_rate": 4}
    )
    assert backbone.stage_channels == [68, 38, 23, 15]
    assert backbone.count_params() == keras_cv_features(backbone).count_params()
    assert backbone.keras_cv_backbone.count_params() - backbone.count_params() == 4 * 15


def test_mit_stride4_level_is_p1_and_its_size_is_fixed(mit):
    assert mit.levels == ["P1", "P2", "P3", "P4"]
    assert sorted(mit.pyramid_outputs) == ["P2", "P3", "P4", "P5"]  # the adapter's names are by stride
    assert [tuple(t.shape) for t in mit.outputs] == [
        (None, 16, 16, 8),
        (None, 8, 8, 8),
        (None, 4, 4, 20),
        (None, 2, 2, 16),
    ]
    assert tuple(mit.inputs[0].shape) == (None, 64, 64, 3)
    assert mit.count_params() == mit.keras_cv_backbone.count_params()
    for got, want in zip(predict(mit, IMAGES[:, :, :64]), predict(keras_cv_features(mit), IMAGES[:, :, :64])):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------ reference names
def _names_and_norm_flags(model):
    owners = hub_names.variable_owners(model)
    return [(name, hub_names.is_norm_layer(owners[id(v)]), v) for name, v, _ in reference_mapping(model)]


def test_resnet_reference_names(resnet):
    entries = _names_and_norm_flags(resnet)
    names = [name for name, _, _ in entries]
    assert len(names) == len(set(names)) == len(resnet.variables) == 85
    assert names[:5] == [
        "conv1_conv.kernel",
        "conv1_bn.norm.gamma",
        "conv1_bn.norm.beta",
        "conv1_bn.norm.moving_mean",
        "conv1_bn.norm.moving_variance",
    ]
    assert {"v2_stack_0_block1_0_conv.kernel", "v2_stack_3_block1_3_bn.norm.moving_variance"} <= set(names)
    for name, in_norm, _ in entries:
        assert ("norm" in name) == in_norm, name
    # 17 BatchNormalizations: the stem, 3 per bottleneck block and 1 per shortcut projection.
    assert sum(in_norm for _, in_norm, _ in entries) == 4 * 17
    assert multipliers_of("conv1_bn.norm.gamma") == (1.0, 0.0)
    assert multipliers_of("conv1_conv.kernel") == (1.0, 1.0)
    groups = {multipliers_of(name) for name in reference_names(resnet).values()}
    assert groups == {(1.0, 0.0), (1.0, 1.0)}


def test_mit_reference_names_keep_norm_and_never_say_head(mit):
    entries = _names_and_norm_flags(mit)
    names = [name for name, _, _ in entries]
    assert len(names) == len(set(names))
    seed_states = [v for v in mit.variables if "seed_generator_state" in v.path]
    assert len(names) == len(mit.variables) - len(seed_states)
    assert not any("head" in name for name in names)
    assert any("multihd" in name for name in names)  # keras-cv's SegFormerMultiheadAttention
    for name, in_norm, _ in entries:
        assert ("norm" in name) == in_norm, name
    assert set(reference_names(mit)) >= {id(v) for v in mit.trainable_variables}


def test_reference_names_load_weights_back(resnet):
    state = {name: to_numpy(variable) + 0.5 for name, variable, _ in reference_mapping(resnet)}
    target = KerasCVBackbone(class_name="ResNetBackbone", arguments=TINY_RESNET)
    report = load_reference_weights(target, state)
    assert report.num_loaded == 85
    for name, variable, _ in reference_mapping(target):
        np.testing.assert_array_equal(to_numpy(variable), state[name])


# ------------------------------------------------------------------- errors
def test_unknown_class_lists_the_pyramid_backbones():
    with pytest.raises(UserError, match="no backbone class 'ResNetV1Backbone'") as error:
        KerasCVBackbone(class_name="ResNetV1Backbone", arguments={})
    message = str(error.value)
    for name in ("CSPDarkNetBackbone", "DenseNetBackbone", "EfficientNetV2Backbone", "MiTBackbone",
                 "MobileNetV3Backbone", "ResNetBackbone", "ResNetV2Backbone"):  # fmt: skip
        assert name in message
    assert "ViTDetBackbone" not in message and "ResNet50Backbone)" in message  # aliases: one example


def test_backbone_without_pyramid_levels_is_refused():
    with pytest.raises(UserError, match="ViTDetBackbone has no pyramid_level_inputs.*ResNetBackbone"):
        KerasCVBackbone(class_name="ViTDetBackbone", arguments={})
    # A preset name's class is known without reading the preset: refused before any download.
    with pytest.raises(UserError, match="keras-cv preset 'vitdet_base': ViTDetBackbone has no pyramid_level_inputs"):
        KerasCVBackbone(preset="vitdet_base")


def test_missing_level_names_the_levels_there_are():
    message = r"unknown levels P6.*P2 \(stride 4\), P3 \(stride 8\), P4 \(stride 16\), P5 \(stride 32\)"
    with pytest.raises(UserError, match=message):
        KerasCVBackbone(class_name="ResNetBackbone", arguments=TINY_RESNET, levels=["P3", "P4", "P5", "P6"])


def test_bad_arguments_and_image_shape_are_user_errors():
    with pytest.raises(UserError, match=r"MiTBackbone\(\*\*arguments\) failed"):  # no open size
        KerasCVBackbone(class_name="MiTBackbone", arguments={**TINY_MIT, "input_shape": (None, None, 3)})
    with pytest.raises(UserError, match=r"ResNetBackbone\(\*\*arguments\) failed.*stackwise_blocks"):
        KerasCVBackbone(class_name="ResNetBackbone", arguments={"stackwise_filters": [8]})
    with pytest.raises(UserError, match=r"image_shape \(96, 96, 3\) does not fit MiTBackbone's input \(64, 64, 3\)"):
        KerasCVBackbone(class_name="MiTBackbone", arguments={**TINY_MIT, "input_shape": (64, 64, 3)}, image_shape=(96, 96, 3))


def test_exactly_one_of_preset_or_class_name():
    with pytest.raises(UserError, match="exactly one of `preset`"):
        KerasCVBackbone()
    with pytest.raises(UserError, match="exactly one of `preset`"):
        KerasCVBackbone(preset="resnet50_imagenet", class_name="ResNetBackbone")


def test_preset_offline_is_one_clear_error(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(UserError) as error:
        KerasCVBackbone(preset="resnet50_imagenet")
    message = str(error.value)
    assert message.startswith("keras-cv preset 'resnet50_imagenet' could not be read")
    assert "needs network access once" in message
    assert "local preset directory" in message and "class_name + arguments" in message
    missing_dir = str(tmp_path / "no_such_preset")
    with pytest.raises(UserError, match=f"keras-cv preset '{missing_dir}' is not a keras-cv preset name"):
        KerasCVBackbone(preset=missing_dir)


def test_missing_keras_cv_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_cv", None)
    with pytest.raises(UserError, match="pip install keras-cv"):
        KerasCVBackbone(class_name="ResNetBackbone", arguments=TINY_RESNET)


def test_modules_import_without_keras_cv():
    code = (
        "import sys\n"
        "import ssaseg_keras, ssaseg_keras.models.backbones.keras_cv_pyramid, ssaseg_keras.convert.keras_cv_pyramid\n"
        "print(sorted(m for m in ('keras_hub', 'keras_cv', 'tensorflow') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    loaded = eval(result.stdout.strip().splitlines()[-1])
    expected = ["tensorflow"] if keras.backend.backend() == "tensorflow" else []
    assert loaded == expected


# --------------------------------------------------- presets and serialisation
def test_local_preset_and_keras_round_trip_without_the_preset(tmp_path):
    import keras_cv
    from keras_cv.src.utils.preset_utils import save_to_preset

    source = keras_cv.models.ResNetBackbone(**TINY_RESNET, include_rescaling=False)
    randomize(source)
    preset_dir = tmp_path / "tiny_resnet_preset"
    save_to_preset(source, str(preset_dir))

    backbone = KerasCVBackbone(preset=str(preset_dir), name="backbone")
    for loaded, saved in zip(backbone.keras_cv_backbone.weights, source.weights):
        np.testing.assert_array_equal(to_numpy(loaded), to_numpy(saved))
    random_init = KerasCVBackbone(preset=str(preset_dir), load_weights=False)
    assert not np.allclose(
        to_numpy(random_init.keras_cv_backbone.get_layer("conv1_conv").kernel),
        to_numpy(source.get_layer("conv1_conv").kernel),
    )
    fixed = KerasCVBackbone(preset=str(preset_dir), load_weights=False, image_shape=(64, 96, 3))
    assert tuple(fixed.inputs[0].shape) == (None, 64, 96, 3)  # a fixed size reaches the keras-cv model

    before = predict(backbone)
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    shutil.rmtree(preset_dir)  # the reload must not read the preset again
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, KerasCVBackbone)
    assert reloaded.levels == ["P2", "P3", "P4", "P5"] and reloaded.preset == str(preset_dir)
    assert reloaded.get_config()["keras_cv_backbone"]["class_name"] == "ResNetBackbone"
    for got, want in zip(predict(reloaded), before):
        np.testing.assert_array_equal(got, want)


def test_preset_without_weights_needs_load_weights_false(tmp_path):
    import keras_cv
    from keras_cv.src.utils.preset_utils import save_to_preset

    preset_dir = str(tmp_path / "architecture_only")
    save_to_preset(keras_cv.models.ResNetBackbone(**TINY_RESNET, include_rescaling=False), preset_dir, save_weights=False)
    with pytest.raises(UserError, match="has no weights.*load_weights: false"):
        KerasCVBackbone(preset=preset_dir)
    assert KerasCVBackbone(preset=preset_dir, load_weights=False).count_params() == PARAMS_RESNET


def test_keras_round_trip_with_generated_layer_names(mit, tmp_path):
    # keras-cv's MiT leaves its LayerNormalizations unnamed: their names differ in the rebuilt model.
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


# ------------------------------------------------------------------- recipes
UPERNET_KERAS_CV = {
    "family": "upernet", "size": "t", "num_classes": 5, "ssa": True,
    "backbone": {"type": "keras_cv", "class_name": "ResNetBackbone", "arguments": dict(TINY_RESNET)},
    "head": {"channels": 16}, "auxiliary_head": {"channels": 8},
}  # fmt: skip


def test_upernet_over_a_keras_cv_backbone_trains_forward_and_groups_parameters():
    model = build_segmentor(UPERNET_KERAS_CV)
    assert isinstance(model.backbone, KerasCVBackbone)
    outputs = model(IMAGES, training=True)
    assert tuple(outputs["aux_logits_0"].shape) == (2, 4, 6, 5)  # the FCN head on stage 3 (stride 16)
    assert np.all(np.isfinite(to_numpy(outputs["aux_logits_0"])))
    groups = parameter_groups(model)
    assert len(groups) == len(model.trainable_variables)
    backbone_paths = {v.path for v in model.backbone.trainable_variables}
    # mmcv's rule: backbone norms lose decay, the backbone is never a "head" (lr x10 only for heads)
    assert {groups[p] for p in backbone_paths} == {(1.0, 0.0), (1.0, 1.0)}
    assert (10.0, 1.0) in {group for path, group in groups.items() if path not in backbone_paths}


def test_recipe_checks_for_keras_cv_backbones():
    with pytest.raises(RecipeError, match="a keras_cv backbone needs `preset`.*keras-cv preset name"):
        build_segmentor({**UPERNET_KERAS_CV, "backbone": {"type": "keras_cv"}})
    with pytest.raises(RecipeError, match="model.drop_path: a keras_cv backbone takes its own arguments"):
        build_segmentor({**UPERNET_KERAS_CV, "drop_path": 0.1})
    with pytest.raises(RecipeError, match="model.pretrained: a keras_cv backbone loads its weights from its preset"):
        validate_model({**UPERNET_KERAS_CV, "pretrained": "resnet50.pth"})
