"""Import mmsegmentation 1.2.2 with mmcv-lite: a stand-in `mmcv.ops` before mmseg is imported.

mmcv-lite has no compiled ops; the reference tools' modules (MiT, SegformerHead, UPerHead, FCNHead)
do not use them, but mmseg imports `mmcv.ops` at import time. Every name of the stand-in is a class
that raises when used. Call `stub_mmcv_ops()` before `import mmseg`.
"""

from __future__ import annotations

import sys
import types


def stub_mmcv_ops():
    module = types.ModuleType("mmcv.ops")

    def placeholder(name):
        def unavailable(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} is not available in mmcv-lite")

        return type(name, (), {"__init__": unavailable, "__call__": unavailable})

    module.__getattr__ = lambda name: placeholder(name) if not name.startswith("__") else None
    sys.modules["mmcv.ops"] = module
