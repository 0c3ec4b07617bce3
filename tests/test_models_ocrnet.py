"""OCRNet + HRNetV2 (issue 17, second part): whole-model mmseg parity of the cascade at a size whose
branches are not multiples of 32, exact parameter counts (the issue's table) and GFLOPs at 512 (in the count test).

`tests/data/ocrnet_hrnet_mmseg.npz` was made by `tests/reference_tools/ocrnet_hrnet_mmseg.py` with
mmsegmentation 1.2.2: a tiny HRNet (stage 1 one Bottleneck of 8; stages 2-4 with 1, 2, 1 modules of 2
BasicBlocks, widths 8/16/24/32) + the FCN region stage (resize_concat, 80 channels) + OCRHead (32, 16
attention channels) with random weights and BN statistics, eval mode, 72x104.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import DATA_DIR, end_to_end_on
from models_helpers import assert_matches_mmseg, load_mmseg_state

from ssaseg_keras.models import build_segmentor, inference_model
from ssaseg_keras.utils.variables import count_parameters


def tiny_ocrnet(ssa=False, num_classes=5, modules=(1, 2, 1), blocks=2):
    """The reference tool's tiny OCRNet as a recipe `model:` section."""
    return {
        "family": "ocrnet",
        "size": "hr48",
        "num_classes": num_classes,
        "ssa": ssa,
        "backbone": {"widths": [8, 16, 24, 32], "modules": list(modules), "blocks": blocks,
                     "stage1_channels": 8, "stage1_blocks": 1},
        "head": {"channels": 32, "ocr_channels": 16},
    }  # fmt: skip


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(DATA_DIR / "ocrnet_hrnet_mmseg.npz"))


def test_whole_ocrnet_hrnet_reproduces_mmseg_and_round_trips(reference, tmp_path):
    model = load_mmseg_state(build_segmentor(tiny_ocrnet()), reference)
    outputs = assert_matches_mmseg(
        model, reference
    )  # stages, region logits, OCR features, logits, inference
    assert [s.shape for s in outputs["stages"]] == [
        (2, 18, 26, 8),
        (2, 9, 13, 16),
        (2, 5, 7, 24),
        (2, 3, 4, 32),
    ]
    assert (
        model.region_head.head.channels == 80
    )  # the concatenated branches' width, as mmseg's configs
    # The cascade travels in a .keras file (region stage, OCR head, HRNet's fuse layers).
    from conftest import nchw_to_nhwc

    path = str(tmp_path / "ocrnet.keras")
    model.save(path)
    images = nchw_to_nhwc(reference["input/images_nchw"])
    loaded = keras.saving.load_model(path)
    assert loaded.region_head.head.bn_momentum == 0.81
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(images)),
        keras.ops.convert_to_numpy(model(images)),
        rtol=1e-6,
        atol=1e-6,
    )


# (baseline, SSA "inference" (deployed: no teacher), SSA training): mmseg's own models (the issue).
COUNTS = {150: (70_533_100, 71_664_620, 72_714_220), 171: (70_559_014, 71_701_286, 72_750_886)}


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [150, 171])
def test_full_size_parameter_counts_are_mmsegs(num_classes):
    if keras.backend.backend() != "torch":  # shapes make the counts, the same on every backend (CI time)
        pytest.skip("backend: counted on PyTorch, the fastest to build full-size models")
    baseline, ssa_inference, ssa_training = COUNTS[num_classes]
    model = build_segmentor(
        {"family": "ocrnet", "size": "hr48", "num_classes": num_classes, "ssa": True}
    )
    trainable = count_parameters(model.trainable_variables)
    assert trainable == ssa_training
    teacher = count_parameters([v for v in model.classifier.trainable_variables if "gt_" in v.path])
    assert trainable - teacher == ssa_inference
    body = trainable - count_parameters(model.classifier.trainable_variables)
    assert (
        body + 512 * num_classes + num_classes == baseline
    )  # the plain 1x1 classifier instead of SSA
    assert count_parameters(model.backbone.trainable_variables) == 65_325_120  # HRNetV2-W48
    # The cascade's first stage is part of the deployed model (its logits feed the OCR head).
    deployed = inference_model(model)
    assert count_parameters(deployed.trainable_variables) == ssa_inference
    if num_classes == 150:  # mmcv's get_flops convention at 512x512: the paper's 165.0 (baseline 164.8;
        # measured here 164.61 -> 164.85, BENCHMARKS.md)
        from ssaseg_keras.benchmark.flops import count_macs

        assert count_macs(deployed, (512, 512))["paper"] / 1e9 == pytest.approx(165.0, rel=0.03)


def test_region_stage_batchnorm_statistics_follow_the_reference_double_forward(reference):
    """mmseg's cascade runs the region stage twice per training step (its loss, then the OCR head's
    input); one update at the preset's momentum 0.81 (torch 0.19) gives its running mean exactly."""
    from conftest import nchw_to_nhwc, to_numpy
    from keras import ops

    model = load_mmseg_state(build_segmentor(tiny_ocrnet()), reference)
    stages = [
        ops.convert_to_tensor(nchw_to_nhwc(reference[f"out/stage{i}_nchw"])) for i in range(1, 5)
    ]
    model.region_head(stages, training=True)
    got = to_numpy(model.region_head.head.convs[0].norm_layer.moving_mean)
    expected = reference["out/region_bn_running_mean_after_step"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.slow
@end_to_end_on("tensorflow", "torch")
def test_tiny_ocrnet_ssa_trains_and_exports(tmp_path):
    """The recipe path end to end with the cascade: SGD, the region stage's loss `region_ce`, the
    in-training evaluation, and an export (the region stage is part of the served model). Resume and
    a later evaluation are family-independent (tests/test_training.py; FCN's run resumes with SGD)."""
    from test_upernet_training import check_run, export_and_check, recipe_of

    from ssaseg_keras.training import checkpoint as ckpt
    from ssaseg_keras.training.trainer import train

    recipe = recipe_of(
        tiny_ocrnet(ssa=True, modules=(1, 1, 1), blocks=1), name="tiny_ocrnet", optimizer="sgd", lr=0.01,
        momentum=0.9, weight_decay=5e-4, custom_keys={}, warmup_iters=0, poly_power=0.9, min_lr=1e-4,
    )  # fmt: skip
    assert recipe["model"]["dropout"] == 0.0  # OCRNet's preset: no dropout before the classifier
    work_dir = tmp_path / "wd"
    summary = train(recipe, str(work_dir), echo=lambda line: None, load_pretrained=False)
    check_run(work_dir, summary, ssa=True, head_terms=("region_ce",))
    export_and_check(tmp_path, work_dir)
    names = set(np.load(ckpt.latest_checkpoint(str(work_dir)) + "/variables.npz"))
    assert any("region_head" in name for name in names)


def test_hrnet_imagenet_file_loads_with_its_classification_head_ignored(reference, tmp_path):
    """An HRNet ImageNet `.pth` (mmseg / msra names, no prefix, plus the classification head's
    incre_modules / downsamp_modules / final_layer / classifier) loads strictly into the backbone."""
    torch = pytest.importorskip("torch")
    from conftest import to_numpy

    from ssaseg_keras.convert import load_pretrained_backbone

    weights = {
        k[len("state/backbone.") :]: v
        for k, v in reference.items()
        if k.startswith("state/backbone.")
    }
    extra = {"incre_modules.0.0.conv1.weight": np.ones((4, 8, 1, 1), "float32"), "final_layer.1.weight": np.ones(3, "float32"),
             "downsamp_modules.0.0.weight": np.ones((2, 2, 3, 3), "float32"), "classifier.weight": np.ones((10, 2048), "float32")}  # fmt: skip
    path = str(tmp_path / "hrnetv2_tiny.pth")
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in {**weights, **extra}.items()}, path)
    model = build_segmentor(tiny_ocrnet())
    report = load_pretrained_backbone(model, path, family="ocrnet")
    assert report.num_loaded == len(weights) and sorted(report.skipped) == sorted(extra)
    np.testing.assert_array_equal(to_numpy(model.backbone.get_layer("stem").conv1.kernel),
                                  np.transpose(weights["conv1.weight"], (2, 3, 1, 0)))  # fmt: skip


def test_ssa_cascade_checkpoint_converts_into_the_deployed_model(tmp_path):
    """A training checkpoint of OCRNet + SSA (`decode_head.0.*` region stage, `decode_head.1.*` OCR head
    with SSA's teacher `decode_head.1.gt_*`) loads strictly into the deployed model, teacher skipped."""
    torch = pytest.importorskip("torch")
    from conftest import to_numpy

    from ssaseg_keras.convert import (
        conv_kernel,
        convert_checkpoint,
        depthwise_kernel,
        identity,
        linear_kernel,
        pointwise_as_dense,
        reference_mapping,
    )

    to_torch = {  # each layout's inverse: Keras array -> the reference's
        identity: lambda a: a,
        linear_kernel: np.transpose,
        conv_kernel: lambda a: np.transpose(a, (3, 2, 0, 1)),
        depthwise_kernel: lambda a: np.transpose(a, (2, 3, 0, 1)),
        pointwise_as_dense: lambda a: np.transpose(a)[:, :, None, None],
    }
    trained = build_segmentor(tiny_ocrnet(ssa=True, modules=(1, 1, 1), blocks=1))
    state = {name: to_torch[transform](to_numpy(variable)) for name, variable, transform in reference_mapping(trained)}
    assert any(k.startswith("decode_head.0.convs.0.") for k in state) and any(k.startswith("decode_head.1.gt_") for k in state)
    path = str(tmp_path / "ocrnet_tiny_ssa.pth")
    torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}}, path)
    deployed, report = convert_checkpoint(path, build_segmentor(tiny_ocrnet(ssa=True, modules=(1, 1, 1), blocks=1), training=False))
    assert report.skipped and all(name.startswith("decode_head.1.gt_") for name in report.skipped)
    assert report.num_loaded == len(state) - len(report.skipped)
    images = np.random.default_rng(0).normal(size=(1, 64, 96, 3)).astype("float32")
    np.testing.assert_allclose(to_numpy(deployed(images)), to_numpy(trained(images)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, key",
    [({"backbone": {"widths": [8, 16]}}, "model.backbone"), ({"region_head": {"in_index": [0, 9]}}, "model.region_head")],
)
def test_architecture_overrides_that_cannot_build_name_the_key(overrides, key):
    """A wrong override fails in a layer's constructor or build: one RecipeError naming the keys."""
    from ssaseg_keras.utils.errors import RecipeError

    with pytest.raises(RecipeError, match=f"^[^:]*{key}[^:]*: these overrides do not build the ocrnet model"):
        build_segmentor({**tiny_ocrnet(), **overrides})
