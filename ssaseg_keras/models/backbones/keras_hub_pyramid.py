"""Any keras-hub feature-pyramid backbone (ResNet, CSPNet, DenseNet, EfficientNet, MiT) as a Backbone.

`KerasHubBackbone` wraps a `keras_hub.models.FeaturePyramidBackbone` and returns 4 of its
`pyramid_outputs` as the stage features at strides 4, 8, 16 and 32 (NHWC). keras-hub names levels
by its own count (MiT's stride-4 level is `P1`, CSPDarkNet's is `P3`), so by default the levels are
chosen by their measured stride; `levels` names them explicitly.

keras-hub 0.32's pyramid backbones: ResNet, CSPNet, DenseNet, EfficientNet (P2-P5 at strides 4-32;
CSPDarkNet P3-P6), MiT (P1-P4, fixed square size only). DINOV2/DINOV3 (ViTs, one stride for every
level) and RetinaNet (an FPN, P3-P7) have pyramid outputs too but no stride-4..32 levels: refused.

The adapter's graph *is* the keras-hub graph from its input to the chosen levels: the same layers and
variables, nothing added (layers after the last level, e.g. EfficientNet's top conv, are left out).

Serialisation stores the keras-hub model's own serialized config, so a saved model rebuilds offline
and on any backend; the weights come from the `.keras` file, never from the preset again.

keras-hub is imported only when a `KerasHubBackbone` is built.
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

# Constructor keywords keras-hub backbones use for their input shape (EfficientNet: input_shape).
SHAPE_KEYWORDS = ("image_shape", "input_shape")
OFFLINE_HINT = (
    "a preset name needs network access once (keras-hub downloads and caches it); offline give a "
    "local preset directory (`keras_hub.models.Backbone.from_preset` reads one, "
    "`backbone.save_to_preset(directory)` writes one) or class_name + arguments"
)


def import_keras_hub():
    try:
        import keras_hub
    except ImportError as error:
        raise UserError(
            "model.backbone type keras_hub needs keras-hub: `pip install keras-hub`."
        ) from error
    return keras_hub


def pyramid_backbone_classes(keras_hub):
    """{name: class} of the keras-hub backbones that have `pyramid_outputs`."""
    base = keras_hub.models.FeaturePyramidBackbone
    classes = {}
    for name in dir(keras_hub.models):
        candidate = getattr(keras_hub.models, name)
        if inspect.isclass(candidate) and issubclass(candidate, base) and candidate is not base:
            classes[name] = candidate
    return dict(sorted(classes.items()))


def _check_pyramid_class(keras_hub, backbone_class, source):
    if not issubclass(backbone_class, keras_hub.models.FeaturePyramidBackbone):
        raise UserError(
            f"{source}: {backbone_class.__name__} has no pyramid_outputs, so it cannot feed a "
            "segmentation head. keras-hub backbones with pyramid outputs: "
            f"{', '.join(pyramid_backbone_classes(keras_hub))}."
        )


def _shape_keyword(backbone_class):
    parameters = inspect.signature(backbone_class.__init__).parameters
    return next((key for key in SHAPE_KEYWORDS if key in parameters), None)


def resolve_class(keras_hub, class_name):
    """The keras-hub backbone class named `class_name` ("ResNetBackbone" or "keras_hub.models.ResNetBackbone")."""
    short_name = str(class_name).rsplit(".", 1)[-1].removeprefix("keras_hub>")
    candidate = getattr(keras_hub.models, short_name, None)
    if not (inspect.isclass(candidate) and issubclass(candidate, keras_hub.models.Backbone)):
        raise UserError(
            f"model.backbone.class_name: keras-hub has no backbone class {class_name!r}. Backbones with "
            f"pyramid outputs: {', '.join(pyramid_backbone_classes(keras_hub))}."
        )
    _check_pyramid_class(keras_hub, candidate, "model.backbone.class_name")
    return candidate


def build_from_class(keras_hub, class_name, arguments, image_shape, dtype):
    """A randomly initialised `class_name(**arguments)`; `image_shape` is passed on when the class
    takes an input shape, `arguments` do not set one and the caller fixed a size."""
    backbone_class = resolve_class(keras_hub, class_name)
    arguments = dict(arguments or {})
    shape_keyword = _shape_keyword(backbone_class)
    if shape_keyword and shape_keyword not in arguments and not is_open(image_shape):
        arguments[shape_keyword] = tuple(image_shape)
    if dtype is not None:
        arguments.setdefault("dtype", dtype)
    try:
        return backbone_class(**arguments)
    except (TypeError, ValueError, AssertionError) as error:
        raise UserError(
            f"model.backbone: keras_hub.models.{backbone_class.__name__}(**arguments) failed with "
            f"arguments {arguments}: {type(error).__name__}: {error}"
        ) from error


def _preset_error(preset, error):
    if isinstance(error, OSError):  # requests' ConnectionError (no network), a missing file
        return UserError(f"keras-hub preset {preset!r} could not be read ({error}): {OFFLINE_HINT}.")
    return UserError(
        f"keras-hub preset {preset!r}: {str(error).splitlines()[0]} Give a preset name "
        "(`keras_hub.models.Backbone.presets` lists them), a kaggle:// or hf:// handle, or a local "
        f"preset directory; {OFFLINE_HINT}."
    )


def preset_class(keras_hub, preset):
    """The backbone class a preset's config.json names (read before building, to check it and to
    know its input-shape keyword); None when this keras-hub has no preset loader API."""
    try:
        from keras_hub.src.utils.preset_utils import get_preset_loader
    except ImportError:  # a keras-hub that moved its private loader: from_preset still works
        return None
    try:
        return get_preset_loader(preset).check_backbone_class()
    except (OSError, ValueError) as error:
        raise _preset_error(preset, error) from error


def load_preset(keras_hub, preset, load_weights, image_shape, dtype):
    """`keras_hub.models.Backbone.from_preset(preset)`, with the caller's fixed size passed on when the
    preset's class takes `image_shape`. Raises one UserError for an unreachable or unknown preset."""
    backbone_class = preset_class(keras_hub, preset)
    kwargs = {}
    if backbone_class is not None:
        _check_pyramid_class(keras_hub, backbone_class, f"keras-hub preset {preset!r}")
        # keras-hub's preset loader forwards `image_shape` (and dtype) to the constructor, nothing else.
        if _shape_keyword(backbone_class) == "image_shape" and not is_open(image_shape):
            kwargs["image_shape"] = tuple(image_shape)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=bool(load_weights), **kwargs)
    except (OSError, ValueError) as error:
        raise _preset_error(preset, error) from error
    _check_pyramid_class(keras_hub, type(backbone), f"keras-hub preset {preset!r}")
    return backbone


def deserialize_backbone(keras_hub, serialized):
    """A keras-hub backbone from `keras.saving.serialize_keras_object` output (random weights)."""
    if isinstance(serialized, keras_hub.models.Backbone):
        backbone = serialized
    else:
        backbone = keras.saving.deserialize_keras_object(serialized)
    _check_pyramid_class(keras_hub, type(backbone), "model.backbone")
    return backbone


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class KerasHubBackbone(Backbone):
    """A keras-hub feature-pyramid backbone: images (B, H, W, C) -> [stage1 .. stage4], NHWC.

    Stage i is the keras-hub level `levels[i]`, at stride 4, 8, 16, 32. Build it from exactly one of
    `preset` or `class_name` + `arguments` (or a keras-hub model / its serialized config, which is
    what `from_config` passes).

    The input shape is the keras-hub model's: open sides (None) where the architecture allows
    (ResNet, CSPNet, DenseNet, EfficientNet); keras-hub's MiT needs a fixed square `image_shape`.
    A fixed `image_shape` is passed on to classes that take one.

    Args:
        preset: a keras-hub preset name, a kaggle:// or hf:// handle, or a local preset directory.
        class_name: a `keras_hub.models` backbone class with pyramid outputs, e.g. "ResNetBackbone".
        arguments: `class_name`'s constructor arguments (random initialisation).
        load_weights: load the preset's weights (False: the preset's architecture, random weights).
        levels: 4 keras-hub level names (e.g. ["P2", "P3", "P4", "P5"]); None: the levels at strides
            4, 8, 16, 32.
        image_shape: (H, W, C), None for a side left open.
        keras_hub_backbone: a built `keras_hub.models.Backbone`, or its
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
        keras_hub_backbone=None,
        dtype=None,
        **kwargs,
    ):
        keras_hub = import_keras_hub()
        image_shape = tuple(image_shape)
        if keras_hub_backbone is not None:
            backbone = deserialize_backbone(keras_hub, keras_hub_backbone)
        elif (preset is None) == (class_name is None):
            raise UserError(
                "model.backbone (type keras_hub) needs exactly one of `preset` (a keras-hub preset name "
                "or local preset directory) or `class_name` + `arguments`; got "
                f"preset={preset!r}, class_name={class_name!r}."
            )
        elif preset is not None:
            backbone = load_preset(keras_hub, preset, load_weights, image_shape, dtype)
        else:
            backbone = build_from_class(keras_hub, class_name, arguments, image_shape, dtype)

        image = backbone.inputs[0]
        check_image_shape(type(backbone).__name__, image.shape[1:], image_shape)
        selected = select_levels(type(backbone).__name__, level_strides(image, backbone.pyramid_outputs), levels)
        outputs = [backbone.pyramid_outputs[level] for level in selected]
        super().__init__(inputs=image, outputs=outputs, dtype=dtype, **kwargs)
        # Not tracked as a sublayer: its layers are already this model's (tracking would add a
        # second path to every variable); kept for get_config.
        self.__dict__["keras_hub_backbone"] = backbone
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
            "keras_hub_backbone": keras.saving.serialize_keras_object(self.__dict__["keras_hub_backbone"]),
        }
