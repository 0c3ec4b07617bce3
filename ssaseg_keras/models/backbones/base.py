"""Backbone base class: a functional `keras.Model` whose outputs are a 4-level feature pyramid."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class Backbone(keras.Model):
    """A functional model from images (B, H, W, 3) to a list of 4 stage features (B, H/s, W/s, C_s).

    Subclasses build their graph in `__init__` and pass `inputs`/`outputs` to this constructor.
    Stage i (1-based) has stride 2^(i+1); `pyramid_outputs` names the same tensors keras-hub style
    (`P2` = stride 4 ... `P5` = stride 32) and `stage_channels` lists their widths.

    Serialisation: `get_config` holds the constructor arguments (not the graph); `from_config`
    calls the constructor again.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        outputs = self.outputs
        self.stage_channels = [int(t.shape[-1]) for t in outputs]
        self.pyramid_outputs = {f"P{i + 2}": t for i, t in enumerate(outputs)}

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        if isinstance(self.dtype_policy, keras.DTypePolicy):
            config["dtype"] = keras.dtype_policies.serialize(self.dtype_policy)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
