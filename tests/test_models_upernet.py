"""UperNet-Swin (issue 16): whole-model mmseg parity with the auxiliary head, the auxiliary loss, the
deployed model, exact parameter counts and the Swin parameter groups.

`tests/data/upernet_swin_mmseg.npz` was made by `tests/reference_tools/upernet_swin_mmseg.py` with
mmsegmentation 1.2.2: a tiny Swin (16 channels, window 7) + UPerHead (32) + FCNHead auxiliary head
(16) with random weights and BatchNorm statistics, eval mode, at 160x224 (window padding on every
stage).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import DATA_DIR, nchw_to_nhwc, to_numpy
from models_helpers import assert_matches_mmseg, load_mmseg_state

from ssaseg_keras.models import build_segmentor, inference_model
from ssaseg_keras.ops.resize import resize_bilinear
from ssaseg_keras.training.optimizer import parameter_groups
from ssaseg_keras.utils.variables import count_parameters

TINY_SWIN = {"embed_dims": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4], "window_size": 7}
SWIN_CUSTOM_KEYS = {
    "absolute_pos_embed": {"decay_mult": 0.0},
    "relative_position_bias_table": {"decay_mult": 0.0},
    "norm": {"decay_mult": 0.0},
}


def tiny_upernet(ssa=True, num_classes=5, **extra):
    """The reference tool's tiny UperNet-Swin as a recipe `model:` section."""
    return {
        "family": "upernet",
        "size": "t",
        "num_classes": num_classes,
        "ssa": ssa,
        "backbone": dict(TINY_SWIN),
        "head": {"channels": 32},
        "auxiliary_head": {"channels": 16},
        "seed": 3,
        **extra,
    }


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(DATA_DIR / "upernet_swin_mmseg.npz"))


@pytest.fixture(scope="module")
def mmseg_model(reference):
    """The tiny baseline UperNet with mmseg's whole state dict loaded strictly."""
    return load_mmseg_state(build_segmentor(tiny_upernet(ssa=False)), reference)


def test_whole_upernet_swin_reproduces_mmseg(reference, mmseg_model):
    outputs = assert_matches_mmseg(mmseg_model, reference)  # stages, head features, logits, aux, inference
    assert outputs["aux_logits"].shape == (2, 10, 14, 5)  # stage 3 of 160x224


def test_auxiliary_loss_is_its_weight_times_the_cross_entropy_of_its_upsampled_logits(mmseg_model):
    rng = np.random.RandomState(0)
    images = rng.randn(2, 64, 96, 3).astype("float32")
    labels = rng.randint(0, 5, size=(2, 64, 96)).astype("int32")
    labels[:, :8] = 255
    outputs = mmseg_model(images, training=True)
    assert sorted(outputs) == ["aux_logits_0", "features", "logits"]
    terms = mmseg_model.loss_terms(labels, outputs)
    assert sorted(terms) == ["aux_ce", "main_ce"]
    up = to_numpy(resize_bilinear(outputs["aux_logits_0"], (64, 96), align_corners=False)).astype("float64")
    log_p = up - up.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    valid = labels != 255
    picked = np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    expected = 0.4 * (-(picked * valid).sum() / labels.size)  # mmseg: mean over all pixels
    np.testing.assert_allclose(float(to_numpy(terms["aux_ce"])), expected, rtol=1e-5)
    total = mmseg_model.compute_loss(images, labels, outputs)
    np.testing.assert_allclose(float(to_numpy(total)), float(to_numpy(terms["main_ce"] + terms["aux_ce"])), rtol=1e-6)


def test_deployed_model_drops_the_auxiliary_head_and_the_teacher(tmp_path):
    model = build_segmentor(tiny_upernet(ssa=True))
    assert [h.name for h in model.auxiliary_heads] == ["auxiliary_head"] and model.classifier.with_teacher
    assert model.loss_term_names[-1] == "aux_ce"
    images = np.random.RandomState(1).randn(1, 64, 64, 3).astype("float32")
    deployed = inference_model(model)
    assert deployed.auxiliary_heads == [] and not deployed.classifier.with_teacher
    np.testing.assert_allclose(to_numpy(deployed(images)), to_numpy(model(images)), rtol=1e-5, atol=1e-5)
    aux = count_parameters(model.auxiliary_heads[0].trainable_variables)
    teacher = count_parameters(model.trainable_variables) - count_parameters(deployed.trainable_variables) - aux
    assert teacher > 0 and aux == 16 * 64 * 9 + 2 * 16 + 16 * 5 + 5  # conv (no bias) + BN + conv_seg
    assert build_segmentor(tiny_upernet(ssa=True), training=False).auxiliary_heads == []
    # The training model's .keras file keeps its auxiliary head (config and weights).
    path = str(tmp_path / "upernet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.auxiliary_heads[0].loss_weight == 0.4 and loaded.auxiliary_heads[0].head.in_index == 2
    np.testing.assert_allclose(
        to_numpy(loaded.auxiliary_heads[0](loaded.backbone(images))),
        to_numpy(model.auxiliary_heads[0](model.backbone(images))),
        rtol=1e-6,
        atol=1e-6,
    )
    assert build_segmentor(tiny_upernet(ssa=False, auxiliary_head=False)).auxiliary_heads == []


def test_swin_parameter_groups_follow_mmseg_upernet_swin_optimizer():
    model = build_segmentor(tiny_upernet(ssa=True))
    from ssaseg_keras.training.optimizer import reference_names

    names = reference_names(model)
    groups = parameter_groups(model, custom_keys=SWIN_CUSTOM_KEYS)
    by_name = {names[id(v)]: groups[v.path] for v in model.trainable_variables}
    assert by_name["backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_table"] == (1.0, 0.0)
    assert by_name["backbone.stages.1.blocks.1.norm2.weight"] == (1.0, 0.0)
    assert by_name["backbone.norm3.bias"] == (1.0, 0.0)
    assert by_name["backbone.stages.2.downsample.reduction.weight"] == (1.0, 1.0)
    assert by_name["decode_head.fpn_bottleneck.conv.weight"] == (1.0, 1.0)  # no head lr multiplier
    assert by_name["auxiliary_head.conv_seg.weight"] == (1.0, 1.0)
    # mmcv's ConvModule calls its BatchNorm `bn`: the "norm" key does not reach it, in the reference too.
    assert by_name["decode_head.fpn_bottleneck.bn.weight"] == (1.0, 1.0)
    assert all(lr == 1.0 for lr, _ in groups.values())


# Trainable parameters of mmseg's own models (`../shared/reference/mmseg-params.md`): baseline,
# + SSA without the teacher (the paper's "inference": auxiliary head included), + SSA training.
COUNTS = {
    ("t", 150): (59_941_862, 61_073_382, 62_122_982),
    ("t", 171): (59_958_032, 61_100_304, 62_149_904),
    ("b", 150): (121_279_716, 122_411_236, 123_460_836),
    ("l", 150): (233_759_936, 234_891_456, 235_941_056),
}


@pytest.mark.slow
@pytest.mark.parametrize("size, classes", list(COUNTS), ids=[f"swin_{s}_k{k}" for s, k in COUNTS])
def test_full_size_parameter_counts_are_mmsegs(size, classes):
    if keras.backend.backend() == "jax":  # shapes make the counts, the same on every backend
        pytest.skip("backend: counted on TensorFlow and PyTorch; JAX compiles each initialiser (~15 s a model)")
    baseline, ssa_inference, ssa_training = COUNTS[(size, classes)]
    model = build_segmentor({"family": "upernet", "size": size, "num_classes": classes, "ssa": True})
    trainable = count_parameters(model.trainable_variables)
    assert trainable == ssa_training
    teacher = count_parameters([v for v in model.classifier.trainable_variables if "gt_" in v.path])
    assert trainable - teacher == ssa_inference
    aux = count_parameters(model.auxiliary_heads[0].trainable_variables)
    plain_classifier = 512 * classes + classes
    body = trainable - count_parameters(model.classifier.trainable_variables)
    assert body + plain_classifier == baseline
    deployed = inference_model(model)
    assert count_parameters(deployed.trainable_variables) == ssa_inference - aux
    if size == "t" and classes == 150:
        plain = build_segmentor({"family": "upernet", "size": "t", "num_classes": 150, "ssa": False})
        assert count_parameters(plain.trainable_variables) == baseline


@pytest.mark.slow
@pytest.mark.parametrize("size, baseline, ssa", [("t", 236.1, 236.3), ("l", 404.9, 405.2)])
def test_gflops_at_512_are_the_papers(size, baseline, ssa):
    """mmcv's `get_flops` convention (convolutions and dense layers, multiply-adds + bias adds; the
    auxiliary head is not run at inference) at 512x512, against the SSA-Seg paper's table."""
    if keras.backend.backend() == "jax":
        pytest.skip("backend: counted on TensorFlow and PyTorch (the count reads shapes only); JAX compiles each initialiser")
    from ssaseg_keras.benchmark.flops import count_macs

    for with_ssa, paper in ((False, baseline), (True, ssa)):
        config = {"family": "upernet", "size": size, "num_classes": 150, "ssa": with_ssa}
        macs = count_macs(build_segmentor(config, training=False), (512, 512))
        assert macs["paper"] / 1e9 == pytest.approx(paper, rel=0.03)
        assert macs["matmul"] > 0  # Swin's window attention (and SSA's einsums) in the total only


def test_an_mmseg_upernet_ssa_checkpoint_converts_strictly(tmp_path, reference):
    """A whole UperNet + SSA checkpoint in mmseg's layout (`backbone.stages.*`, `decode_head.*` with
    SSA's `center_*` / `gt_*`, `auxiliary_head.*`) loads strictly into the training model, and into
    the deployed one without its teacher and auxiliary head. SSA's tensors come from the reference
    SSA checkpoint of the SegNeXt golden model (same C = 32 channels, K = 7)."""
    import torch
    from models_helpers import GOLDEN_PTH

    from ssaseg_keras.convert import (
        convert_checkpoint,
        counts_by_part,
        read_torch_checkpoint,
        reference_mapping,
    )

    target = build_segmentor(tiny_upernet(ssa=True, num_classes=7))
    ssa_names = {name for name, _, _ in reference_mapping(target.classifier, prefix="decode_head.")}
    upernet = {k[len("state/") :]: v for k, v in reference.items() if k.startswith("state/")}
    ssa = {k: v for k, v in read_torch_checkpoint(GOLDEN_PTH).items() if k in ssa_names}
    assert len(ssa) == len(ssa_names) and "decode_head.center_pos.weight" in ssa
    state = {k: v for k, v in upernet.items() if not k.endswith(("conv_seg.weight", "conv_seg.bias"))}
    state.update(ssa)
    state["auxiliary_head.conv_seg.weight"] = np.random.RandomState(0).randn(7, 16, 1, 1).astype("float32")
    state["auxiliary_head.conv_seg.bias"] = np.zeros(7, "float32")
    path = str(tmp_path / "upernet_swin_ssa.pth")
    torch.save({"state_dict": {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}}, path)

    model, report = convert_checkpoint(path, target)
    counts = counts_by_part(report.loaded)
    assert counts["backbone"] == sum(k.startswith("backbone.") for k in state)
    assert counts["auxiliary_head"] == sum(k.startswith("auxiliary_head.") for k in state)
    assert counts["decode_head"] == sum(k.startswith("decode_head.") for k in state)
    assert any(name.startswith("decode_head.gt_center") for name in report.loaded)
    np.testing.assert_array_equal(to_numpy(model.classifier.center_pos), state["decode_head.center_pos.weight"])
    deployed, slim_report = convert_checkpoint(path, build_segmentor(tiny_upernet(ssa=True, num_classes=7), training=False))
    assert "auxiliary_head" not in counts_by_part(slim_report.loaded)
    assert not any(name.startswith("decode_head.gt_") for name in slim_report.loaded)
    images = nchw_to_nhwc(reference["input/images_nchw"])[:1]
    np.testing.assert_allclose(to_numpy(deployed(images)), to_numpy(model(images)), rtol=1e-5, atol=1e-5)
