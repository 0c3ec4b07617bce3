"""Any keras-cv feature-pyramid backbone (ResNet V1/V2, CSPDarkNet, DenseNet, EfficientNet V1/V2/Lite,
MobileNetV3, MiT, YOLOV8) as a Backbone.

`KerasCVBackbone` wraps a `keras_cv.models.Backbone` and returns the outputs of 4 of the layers its
`pyramid_level_inputs` names ({"P2": layer name, ...}) as the stage features at strides 4, 8, 16 and
32 (NHWC). keras-cv's level names do not always match their stride (the EfficientNets, MobileNetV3
and MiT count levels from 1), so the levels are chosen by measured stride, as `KerasHubBackbone`
does (`pyramid_common`); `levels` names them explicitly.

keras-cv 0.9's backbones without pyramid levels (ViTDet, VideoSwin, CenterPillar) are refused.

The adapter's graph *is* the keras-cv graph from its input to the chosen levels: the same layers and
variables, nothing added (layers after the last level, e.g. EfficientNet's top conv, are left out).
The library feeds mean/std-normalised images, so keras-cv's built-in 1/255 rescaling is off unless
`arguments` set `include_rescaling: true`.

Serialisation stores the keras-cv model's own serialized config, so a saved model rebuilds offline
and on any backend; the weights come from the `.keras` file, never from the preset again.

keras-cv (and the TensorFlow it imports) is imported only when a `KerasCVBackbone` is built.
"""

from __future__ import annotations

import inspect

import keras

from ssaseg_keras.models.backbones.base import Backbone
from ssaseg_keras.models.backbones.pyramid_common import (
    check_image_shape,
    is_open,
    level_strides,
    select_levels,
)
from ssaseg_keras.utils.errors import UserError

OFFLINE_HINT = (
    "a preset name needs network access once (keras-cv downloads it from Kaggle and caches it); "
    "offline give a local preset directory (a copy of the preset's config.json and weights file) "
    "or class_name + arguments"
)


def import_keras_cv():
    try:
        import keras_cv
    except ImportError as error:
        raise UserError(
            "model.backbone type keras_cv needs keras-cv (which imports TensorFlow): "
            f"`pip install keras-cv tensorflow` ({error})."
        ) from error
    return keras_cv


def backbone_classes(keras_cv):
    """{name: class} of every `keras_cv.models` backbone, size aliases (ResNet50Backbone) included."""
    base = keras_cv.models.Backbone
    classes = {}
    for name in dir(keras_cv.models):
        candidate = getattr(keras_cv.models, name)
        if inspect.isclass(candidate) and issubclass(candidate, base) and candidate is not base:
            classes[name] = candidate
    return dict(sorted(classes.items()))


def has_pyramid(keras_cv, backbone_class):
    """Whether `backbone_class`'s models name pyramid levels: keras-cv's ViTDet and VideoSwin
    override `pyramid_level_inputs` to raise, CenterPillar never sets it."""
    if backbone_class.pyramid_level_inputs is not keras_cv.models.Backbone.pyramid_level_inputs:
        return False
    try:
        return "pyramid_level_inputs" in inspect.getsource(backbone_class.__init__)
    except (OSError, TypeError):  # no source shipped: let the built model decide
        return True


def pyramid_backbone_classes(keras_cv):
    """{name: class} of keras-cv's pyramid backbones, without the size aliases (which define
    `__new__` to build a preset's configuration)."""
    return {
        name: cls
        for name, cls in backbone_classes(keras_cv).items()
        if has_pyramid(keras_cv, cls) and "__new__" not in vars(cls)
    }


def _pyramid_list(keras_cv):
    return (
        f"{', '.join(pyramid_backbone_classes(keras_cv))} (and their size aliases, e.g. ResNet50Backbone)"
    )


def resolve_class(keras_cv, class_name):
    """The keras-cv backbone class named `class_name` ("ResNetBackbone" or "keras_cv.models.ResNetBackbone")."""
    short_name = str(class_name).rsplit(".", 1)[-1].removeprefix("keras_cv>")
    candidate = backbone_classes(keras_cv).get(short_name)
    if candidate is None:
        raise UserError(
            f"model.backbone.class_name: keras-cv has no backbone class {class_name!r}. Backbones with "
            f"pyramid_level_inputs: {_pyramid_list(keras_cv)}."
        )
    if not has_pyramid(keras_cv, candidate):
        raise _no_pyramid(keras_cv, candidate.__name__, "model.backbone.class_name")
    return candidate


def _no_pyramid(keras_cv, name, source):
    return UserError(
        f"{source}: {name} has no pyramid_level_inputs, so it cannot feed a segmentation head. "
        f"keras-cv backbones with pyramid_level_inputs: {_pyramid_list(keras_cv)}."
    )


def constructor_arguments(backbone_class, arguments, image_shape):
    """`arguments` with the adapter's defaults: no 1/255 rescaling, and the caller's fixed size as
    `input_shape` when `arguments` do not set one."""
    arguments = dict(arguments or {})
    parameters = inspect.signature(backbone_class.__init__).parameters
    if "include_rescaling" in parameters:
        arguments.setdefault("include_rescaling", False)
    if "input_shape" in parameters and "input_shape" not in arguments and not is_open(image_shape):
        arguments["input_shape"] = tuple(image_shape)
    return arguments


def _preset_error(preset, error):
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "does not include weights" in message:
        return UserError(
            f"keras-cv preset {preset!r} has no weights (an architecture only): set "
            "model.backbone.load_weights: false for a random initialisation, or choose a preset with "
            "weights (`keras_cv.models.<Class>.presets_with_weights` lists them)."
        )
    if message.startswith("Unknown preset identifier"):  # not a name, handle or existing directory
        return UserError(
            f"keras-cv preset {preset!r} is not a keras-cv preset name (`keras_cv.models.<Class>.presets` "
            f"lists them), a kaggle:// handle or an existing local preset directory; {OFFLINE_HINT}."
        )
    if isinstance(error, (OSError, ImportError)) or message.startswith("URL fetch failure"):
        # requests' ConnectionError (no network), a missing file, kagglehub not installed
        return UserError(f"keras-cv preset {preset!r} could not be read ({message}): {OFFLINE_HINT}.")
    return UserError(
        f"keras-cv preset {preset!r}: {message} Give a preset name (`keras_cv.models.<Class>.presets` "
        f"lists them), a kaggle:// handle, or a local preset directory; {OFFLINE_HINT}."
    )


def preset_class(keras_cv, preset):
    """(class, loader) of `preset`: the backbone class whose `presets` has the short name, or the
    class its config.json names (a kaggle:// handle or a local directory), and the class whose
    `from_preset` loads it."""
    for backbone_class in backbone_classes(keras_cv).values():
        if "__new__" not in vars(backbone_class) and preset in backbone_class.presets:
            return backbone_class, backbone_class
    try:
        from keras_cv.src.utils.preset_utils import check_preset_class
    except ImportError:  # a keras-cv that moved its private loader: from_preset still works
        return None, keras_cv.models.Backbone
    try:
        return check_preset_class(preset, keras_cv.models.Backbone), keras_cv.models.Backbone
    except (OSError, ValueError, ImportError) as error:
        raise _preset_error(preset, error) from error
    except Exception as error:  # keras.utils.get_file raises a bare Exception for a failed download
        if str(error).startswith("URL fetch failure"):
            raise _preset_error(preset, error) from error
        raise


def load_preset(keras_cv, preset, load_weights, arguments, image_shape):
    """`from_preset(preset, **arguments)` of the preset's class, with the adapter's defaults
    (`constructor_arguments`). Raises one UserError for an unreachable, unknown or weightless preset."""
    backbone_class, loader = preset_class(keras_cv, preset)
    if backbone_class is not None:
        if not has_pyramid(keras_cv, backbone_class):
            raise _no_pyramid(keras_cv, backbone_class.__name__, f"keras-cv preset {preset!r}")
        arguments = constructor_arguments(backbone_class, arguments, image_shape)
    try:
        return loader.from_preset(preset, load_weights=bool(load_weights), **dict(arguments or {}))
    except (OSError, ValueError, ImportError) as error:
        raise _preset_error(preset, error) from error


def build_from_class(keras_cv, class_name, arguments, image_shape):
    """A randomly initialised `class_name(**arguments)` (see `constructor_arguments`)."""
    backbone_class = resolve_class(keras_cv, class_name)
    arguments = constructor_arguments(backbone_class, arguments, image_shape)
    try:
        return backbone_class(**arguments)
    except (TypeError, ValueError, AssertionError) as error:
        raise UserError(
            f"model.backbone: keras_cv.models.{backbone_class.__name__}(**arguments) failed with "
            f"arguments {arguments}: {type(error).__name__}: {error}"
        ) from error
    except OSError as error:  # a size alias reads its preset's configuration
        raise UserError(
            f"model.backbone: keras_cv.models.{backbone_class.__name__} reads a keras-cv preset's "
            f"configuration, which could not be read ({error}): {OFFLINE_HINT}."
        ) from error


def deserialize_backbone(keras_cv, serialized):
    """A keras-cv backbone from `keras.saving.serialize_keras_object` output (random weights)."""
    if isinstance(serialized, keras_cv.models.Backbone):
        return serialized
    return keras.saving.deserialize_keras_object(serialized)


def pyramid_outputs(keras_cv, backbone):
    """{level: output tensor of the layer `pyramid_level_inputs` names}."""
    try:
        layer_names = dict(backbone.pyramid_level_inputs)
    except NotImplementedError:
        layer_names = {}
    if not layer_names:
        raise _no_pyramid(keras_cv, type(backbone).__name__, "model.backbone")
    return {level: backbone.get_layer(name).output for level, name in layer_names.items()}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class KerasCVBackbone(Backbone):
    """A keras-cv feature-pyramid backbone: images (B, H, W, C) -> [stage1 .. stage4], NHWC.

    Stage i is the output of the layer keras-cv's `pyramid_level_inputs[levels[i]]` names, at stride
    4, 8, 16, 32. Build it from exactly one of `preset` or `class_name` + `arguments` (or a keras-cv
    model / its serialized config, which is what `from_config` passes).

    The input shape is the keras-cv model's: open sides (None) for the convolutional backbones;
    keras-cv's MiT needs a fixed size (224x224 unless `image_shape` or `arguments` set one). A fixed
    `image_shape` is passed on as `input_shape`.

    Args:
        preset: a keras-cv preset name (e.g. "resnet50_v2_imagenet"), a kaggle:// handle, or a local
            preset directory.
        class_name: a `keras_cv.models` backbone class with pyramid levels, e.g. "ResNetBackbone".
        arguments: `class_name`'s constructor arguments (random initialisation); with a preset,
            overrides of the preset's configuration. `include_rescaling` defaults to False.
        load_weights: load the preset's weights (False: the preset's architecture, random weights).
        levels: 4 keras-cv level names (e.g. ["P2", "P3", "P4", "P5"]); None: the levels at strides
            4, 8, 16, 32.
        image_shape: (H, W, C), None for a side left open.
        keras_cv_backbone: a built `keras_cv.models.Backbone`, or its
            `keras.saving.serialize_keras_object` config; overrides `preset` and `class_name`, which
            are then only kept as a record.
    """

    def __init__(
        self,
        preset=None,
        class_name=None,
        arguments=None,
        load_weights=True,
        levels=None,
        image_shape=(None, None, 3),
        keras_cv_backbone=None,
        dtype=None,
        **kwargs,
    ):
        keras_cv = import_keras_cv()
        image_shape = tuple(image_shape)
        if keras_cv_backbone is not None:
            backbone = deserialize_backbone(keras_cv, keras_cv_backbone)
        elif (preset is None) == (class_name is None):
            raise UserError(
                "model.backbone (type keras_cv) needs exactly one of `preset` (a keras-cv preset name "
                "or local preset directory) or `class_name` + `arguments`; got "
                f"preset={preset!r}, class_name={class_name!r}."
            )
        elif preset is not None:
            backbone = load_preset(keras_cv, preset, load_weights, arguments, image_shape)
        else:
            backbone = build_from_class(keras_cv, class_name, arguments, image_shape)

        name = type(backbone).__name__
        image = backbone.inputs[0]
        check_image_shape(name, image.shape[1:], image_shape)
        outputs = pyramid_outputs(keras_cv, backbone)
        selected = select_levels(name, level_strides(image, outputs), levels)
        super().__init__(inputs=image, outputs=[outputs[level] for level in selected], dtype=dtype, **kwargs)
        # Not tracked as a sublayer: its layers are already this model's (tracking would add a
        # second path to every variable); kept for get_config.
        self.__dict__["keras_cv_backbone"] = backbone
        self.preset = preset
        self.class_name = class_name
        self.arguments = dict(arguments) if arguments else None
        self.loads_preset_weights = bool(load_weights)  # `load_weights` is keras.Model's method
        self.levels = selected
        self.image_shape = image_shape

    def get_config(self):
        return {
            **super().get_config(),
            "preset": self.preset,
            "class_name": self.class_name,
            "arguments": self.arguments,
            "load_weights": self.loads_preset_weights,
            "levels": list(self.levels),
            "image_shape": self.image_shape,
            "keras_cv_backbone": keras.saving.serialize_keras_object(self.__dict__["keras_cv_backbone"]),
        }
