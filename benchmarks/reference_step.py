"""Side by side in one process: the reference SSA-Seg implementation's SegNeXt-T training step (and
its baseline's) against ours on the PyTorch backend, on the same random batch.

The reference code is not part of this repository: point `--reference` at a clone of
https://github.com/xwmaxwma/SSAClassifier. It was written for mmseg 0.x / mmcv 1.x; this script runs
it on mmsegmentation 1.2.2 with mmcv-lite (CPU) by mapping the few 0.x names it imports onto their
1.x places (`install_reference_shims`), without changing its modules. Set up once:

    python -m venv /tmp/refenv && /tmp/refenv/bin/pip install -e '.[all]' torch==2.13.0 \\
        mmcv-lite==2.1.0 mmengine 'mmsegmentation==1.2.2' ftfy regex
    KERAS_BACKEND=torch /tmp/refenv/bin/python benchmarks/reference_step.py \\
        --reference /path/to/SSAClassifier --batch 2 --size 256 --iters 5 --warmup 2

What each side runs (float32, train mode, 171 classes, SegNeXt-T: MSCAN-T + LightHamHead, C=256):
- reference: its MSCAN and LightHamHead / LightHamHead_ssa with the SegNeXt-T config (BN instead of
  SyncBN: one process), its `forward_train` and mmseg 0.x's loss reduction (the sum of the terms
  named `loss*`), backward, torch's AdamW with the recipe's parameter groups (head lr x10, no decay
  on norms and pos_block), and the loss read on the host as mmseg's logging does. On a CPU its
  `.cuda()` calls are made no-ops for the timed calls.
- ours: `ssaseg-keras benchmark recipes/segnext_t_coco.yaml` (`ssaseg_keras.benchmark.benchmark`),
  both models, the same batch size and image size (its inference figures are measured too).

Prints the median step of each and the ratios; `--json` writes them with the conditions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
INSTALL = "pip install torch==2.13.0 mmcv-lite==2.1.0 mmengine 'mmsegmentation==1.2.2' ftfy regex opencv-python-headless"


def install_reference_shims(reference_dir):
    """Make the reference's modules importable on mmseg 1.2.2 / mmcv-lite 2.x / mmengine.

    The 0.x names it imports: `mmseg.models.builder.{BACKBONES,HEADS,LOSSES}` (here decorators that
    register nothing: mmseg 1.x registers its own MSCAN and LightHamHead under the same names),
    `mmseg.ops.resize`, `mmcv.runner.BaseModule`, `mmcv.cnn.utils.weight_init`, and mmseg 0.x's
    `BaseDecodeHead.losses` / `forward_train`. Its package `models` is set up without running its
    `__init__` (which imports every family and their extra dependencies)."""
    root = os.path.abspath(reference_dir)
    if not os.path.isfile(os.path.join(root, "models", "decode_heads", "ham_head_ssa.py")):
        raise SystemExit(
            f"--reference {reference_dir}: not a clone of xwmaxwma/SSAClassifier (no models/decode_heads/ham_head_ssa.py)"
        )
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference_tools"))
    from mmseg_stub import stub_mmcv_ops

    stub_mmcv_ops()
    try:
        import cv2  # noqa: F401  (the reference's distillation loss runs cv2.Canny)
        import mmengine.model
        import mmengine.model.weight_init
        import torch
        from mmseg.models.decode_heads.decode_head import BaseDecodeHead
        from mmseg.models.utils import resize
    except ImportError as error:
        raise SystemExit(f"the reference needs mmsegmentation 1.2.2 and friends ({error}): {INSTALL}") from None

    class NoRegistry:
        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    builder = types.ModuleType("mmseg.models.builder")
    builder.BACKBONES = builder.HEADS = builder.LOSSES = NoRegistry()
    sys.modules["mmseg.models.builder"] = builder
    ops = types.ModuleType("mmseg.ops")
    ops.resize = resize
    sys.modules["mmseg.ops"] = ops
    runner = types.ModuleType("mmcv.runner")
    runner.BaseModule = mmengine.model.BaseModule
    sys.modules["mmcv.runner"] = runner
    sys.modules["mmcv.cnn.utils.weight_init"] = mmengine.model.weight_init
    try:
        import torchvision  # noqa: F401  (the reference's losses/misc.py imports it)
    except ImportError:
        vision = types.ModuleType("torchvision")
        vision._is_tracing = lambda: False  # the one name misc.py calls
        sys.modules["torchvision"] = vision

    class DecodeHead0x(BaseDecodeHead):
        """mmseg 0.x's decode-head training API on mmseg 1.x's BaseDecodeHead."""

        def losses(self, seg_logit, seg_label):
            seg_logit = resize(seg_logit, size=seg_label.shape[2:], mode="bilinear", align_corners=self.align_corners)
            return {"loss_ce": self.loss_decode(seg_logit, seg_label.squeeze(1), ignore_index=self.ignore_index)}

        def forward_train(self, inputs, img_metas, gt_semantic_seg, train_cfg):
            return self.losses(self.forward(inputs), gt_semantic_seg)

    decode_head = types.ModuleType("mmseg.models.decode_heads.decode_head")
    decode_head.BaseDecodeHead = DecodeHead0x
    sys.modules["mmseg.models.decode_heads.decode_head"] = decode_head

    for package in ("models", "models.backbones", "models.decode_heads", "models.losses"):
        module = types.ModuleType(package)
        module.__path__ = [os.path.join(root, *package.split("."))]
        sys.modules[package] = module
    sys.modules["models.losses"].SSALoss = importlib.import_module("models.losses.ssa_loss").SSALoss
    return {
        "MSCAN": importlib.import_module("models.backbones.mscan").MSCAN,
        "LightHamHead": importlib.import_module("models.decode_heads.ham_head").LightHamHead,
        "LightHamHead_ssa": importlib.import_module("models.decode_heads.ham_head_ssa").LightHamHead_ssa,
        "torch": torch,
    }


@contextlib.contextmanager
def cuda_calls_stay_on_cpu(torch):
    """The reference moves a few tensors with `.cuda()` inside its loss; on a CPU, leave them."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def reference_step(classes, head_name, images, labels, seed=0):
    """The reference's training step as a zero-argument function (returns the loss as a float)."""
    torch = classes["torch"]
    torch.manual_seed(seed)
    backbone = classes["MSCAN"](
        embed_dims=[32, 64, 160, 256], mlp_ratios=[8, 8, 4, 4], drop_rate=0.0, drop_path_rate=0.1,
        depths=[3, 3, 5, 2], norm_cfg=dict(type="BN", requires_grad=True),
    )  # fmt: skip
    head = classes[head_name](
        in_channels=[64, 160, 256], in_index=[1, 2, 3], channels=256, ham_channels=256,
        ham_kwargs=dict(MD_R=16), dropout_ratio=0.1, num_classes=171,
        norm_cfg=dict(type="GN", num_groups=32, requires_grad=True), align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    )  # fmt: skip
    backbone.train()
    head.train()
    groups = {}
    for prefix, module in (("backbone.", backbone), ("decode_head.", head)):
        for name, parameter in module.named_parameters():
            name = prefix + name
            lr = 6e-5 * (10.0 if "head" in name else 1.0)
            decay = 0.0 if ("norm" in name or "pos_block" in name) else 0.01
            groups.setdefault((lr, decay), []).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()], betas=(0.9, 0.999)
    )
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))))
    y = torch.from_numpy(labels.astype(np.int64))[:, None]

    def step():
        optimizer.zero_grad()
        with cuda_calls_stay_on_cpu(torch):
            losses = head.forward_train(backbone(x), None, y, None)
        loss = sum(value for name, value in losses.items() if "loss" in name)
        loss.backward()
        optimizer.step()
        return float(loss.item())

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a clone of xwmaxwma/SSAClassifier")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for ours, e.g. train.compile_loss=true")  # fmt: skip
    parser.add_argument("--json", help="write the figures (and conditions) to this file")
    args = parser.parse_args()
    # Ours needs multiples of 32; the reference's boundary mask crops 6 pixels from each side of the
    # 1/8-size label map, so it needs more than 12 of them.
    if args.size % 32 or args.size < 128:
        parser.error(f"--size {args.size}: must be a multiple of 32 and at least 128")
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--batch and --iters must be >= 1, --warmup >= 0")

    import keras

    if keras.backend.backend() != "torch":
        raise SystemExit("run with KERAS_BACKEND=torch: the reference is PyTorch code")
    from ssaseg_keras.benchmark import benchmark
    from ssaseg_keras.benchmark.runner import median_ms, random_batch
    from ssaseg_keras.recipes import load_recipe
    from ssaseg_keras.utils.errors import UserError

    try:  # checked before the reference runs: a bad --set is one line, not minutes later
        recipe = load_recipe(os.path.join(HERE, "..", "recipes", "segnext_t_coco.yaml"), args.set)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    classes = install_reference_shims(args.reference)
    torch = classes["torch"]
    images, labels = random_batch(args.batch, (args.size, args.size), 171, seed=0)
    figures = {}
    for name, head in (("reference_baseline", "LightHamHead"), ("reference_ssa", "LightHamHead_ssa")):
        print(f"[{name}] {args.warmup} warm-up + {args.iters} timed steps ...", flush=True)
        figures[name], _ = median_ms(reference_step(classes, head, images, labels), args.iters, args.warmup)
    print("[ours] ssaseg_keras.benchmark (baseline, then SSA) ...", flush=True)
    try:
        report = benchmark(recipe, args.batch, (args.size, args.size), args.iters, args.warmup, precision="float32")
    except UserError as error:  # e.g. a precision the device lacks: one line, as the CLI says it
        raise SystemExit(f"error: {error}") from None
    figures["ours_baseline"] = report["models"]["baseline"]["train_step_ms"]
    figures["ours_ssa"] = report["models"]["model"]["train_step_ms"]

    conditions = {
        "torch": torch.__version__, "keras": keras.__version__, "threads": torch.get_num_threads(),
        "batch": args.batch, "size": args.size, "classes": 171, "precision": "float32",
        "iters": args.iters, "warmup": args.warmup, "overrides": args.set,
    }  # fmt: skip
    print(f"SegNeXt-T, 171 classes, batch {args.batch}, {args.size}x{args.size}, float32, median of "
          f"{args.iters} after {args.warmup}; torch {torch.__version__}, keras {keras.__version__}"
          + (f"; ours with {', '.join(args.set)}" if args.set else ""))  # fmt: skip
    print(f"{'train step (ms)':20s} {'baseline':>10s} {'SSA':>10s} {'SSA/baseline':>13s}")
    for side in ("reference", "ours"):
        base, ssa = figures[f"{side}_baseline"], figures[f"{side}_ssa"]
        print(f"{side:20s} {base:10.1f} {ssa:10.1f} {ssa / base:12.2f}x")
    print(f"{'ours / reference':20s} {figures['ours_baseline'] / figures['reference_baseline']:9.2f}x"
          f" {figures['ours_ssa'] / figures['reference_ssa']:9.2f}x")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"conditions": conditions, "train_step_ms": figures}, f, indent=1)


if __name__ == "__main__":
    main()
