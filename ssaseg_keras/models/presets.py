"""Model sizes as data: backbone and decode-head arguments of every family and size.

SegNeXt (MSCAN + LightHamHead) follows the SegNeXt paper / mmseg configs; SegFormer (MiT + all-MLP
head) the SegFormer paper. `build_segmentor` (ssaseg_keras.models) reads these tables.
"""

from __future__ import annotations

SEGNEXT_PRESETS = {
    "t": {
        "backbone": {"embed_dims": [32, 64, 160, 256], "mlp_ratios": [8, 8, 4, 4], "depths": [3, 3, 5, 2], "drop_path_rate": 0.1},
        "head": {"channels": 256, "ham_channels": 256, "rank": 16, "groups": 32},
    },
    "s": {
        "backbone": {"embed_dims": [64, 128, 320, 512], "mlp_ratios": [8, 8, 4, 4], "depths": [2, 2, 4, 2], "drop_path_rate": 0.1},
        "head": {"channels": 256, "ham_channels": 256, "rank": 16, "groups": 32},
    },
    "b": {
        "backbone": {"embed_dims": [64, 128, 320, 512], "mlp_ratios": [8, 8, 4, 4], "depths": [3, 3, 12, 3], "drop_path_rate": 0.1},
        "head": {"channels": 512, "ham_channels": 512, "rank": 16, "groups": 32},
    },
    "l": {
        "backbone": {"embed_dims": [64, 128, 320, 512], "mlp_ratios": [8, 8, 4, 4], "depths": [3, 5, 27, 3], "drop_path_rate": 0.3},
        "head": {"channels": 1024, "ham_channels": 1024, "rank": 16, "groups": 32},
    },
}

SEGFORMER_PRESETS = {
    "b0": {"backbone": {"embed_dims": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "drop_path_rate": 0.1}, "head": {"channels": 256}},
    "b1": {"backbone": {"embed_dims": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "drop_path_rate": 0.1}, "head": {"channels": 256}},
    "b2": {"backbone": {"embed_dims": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "drop_path_rate": 0.1}, "head": {"channels": 768}},
    "b3": {"backbone": {"embed_dims": [64, 128, 320, 512], "depths": [3, 4, 18, 3], "drop_path_rate": 0.1}, "head": {"channels": 768}},
    "b4": {"backbone": {"embed_dims": [64, 128, 320, 512], "depths": [3, 8, 27, 3], "drop_path_rate": 0.1}, "head": {"channels": 768}},
    "b5": {"backbone": {"embed_dims": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "drop_path_rate": 0.1}, "head": {"channels": 768}},
}

PRESETS = {"segnext": SEGNEXT_PRESETS, "segformer": SEGFORMER_PRESETS}
FAMILIES = tuple(PRESETS)


def sizes(family):
    """The size names of a family, e.g. sizes("segnext") -> ("t", "s", "b", "l")."""
    return tuple(PRESETS[family])
