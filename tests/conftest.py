"""Shared test helpers. The suite runs once per backend (tox sets KERAS_BACKEND for each env).

Per-backend code lives only here, in test utilities (autodiff and compilers are backend APIs); the
library itself is backend-agnostic.
"""

from __future__ import annotations

import os
import pathlib

import keras
import numpy as np
import pytest

DATA_DIR = pathlib.Path(__file__).parent / "data"
BACKEND = keras.backend.backend()
ALL_BACKENDS = ("tensorflow", "jax", "torch")

# Keep TensorFlow (used by tf.data in some tests) off any GPU when it is not the Keras backend.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def value_and_grad(fn, x):
    """(fn(x), d fn / d x) as numpy, for a scalar-valued fn of one tensor, with the backend's autodiff."""
    if BACKEND == "jax":
        import jax

        # One XLA program (eager JAX would compile one per op and shape; see `run_once`).
        value, grad = jax.jit(jax.value_and_grad(fn))(jax.numpy.asarray(x))
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            value = fn(xt)
        grad = tape.gradient(value, xt)
    elif BACKEND == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        value = fn(xt)
        value.backward()
        grad = xt.grad
    else:  # pragma: no cover
        raise NotImplementedError(BACKEND)
    return to_numpy(value), to_numpy(grad)


def run_once(fn, *args):
    """fn(*args) with every output as NumPy (a dict, list or tuple of tensors, or one), for calls on
    built layers in tests (the SSA loss terms). On JAX it runs under one `jax.jit`: eager JAX compiles one XLA
    program per op and shape (a tiny UperNet-Swin's first forward: 843 compiles, 25 s; jitted, 3 s).
    Inside, a `keras.StatelessScope` keeps variable updates (BatchNorm statistics, seed states) out of
    the model, so use it for inference-like calls whose state changes the test does not read. The
    other backends call fn eagerly."""
    if BACKEND != "jax":
        return keras.tree.map_structure(_numpy_or_none, fn(*args))
    import jax

    def stateless(*inputs):
        with keras.StatelessScope():
            return fn(*inputs)

    arrays = keras.tree.map_structure(lambda x: x if x is None else jax.numpy.asarray(x), args)
    return keras.tree.map_structure(_numpy_or_none, jax.jit(stateless)(*arrays))


def _numpy_or_none(x):
    return None if x is None else to_numpy(x)


def compile_fn(fn):
    """fn compiled by the backend's graph compiler with static shapes and no fallback to eager:
    jax.jit, tf.function(jit_compile=True) (XLA), torch.compile(fullgraph=True). A host round trip or
    a shape-dependent Python branch inside fn makes this fail."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "torch":
        import torch

        torch._dynamo.reset()
        return torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=False)
    raise NotImplementedError(BACKEND)  # pragma: no cover


def end_to_end_on(*backends):
    """Run a family's end-to-end trainer run (train, evaluate, export) on these backends only. CI has
    2 cores and 40 minutes for all three backends; each such run compiles a training step, and the
    family's parity tests (forward pass, conversion) still run on every backend, as do SegNeXt's and
    UperNet-Swin's end-to-end runs (the only tests that take Swin's gradients)."""
    return pytest.mark.skipif(BACKEND not in backends, reason=end_to_end_reason(backends))


def end_to_end_reason(backends):
    """The skip reason of `end_to_end_on` (also for a parametrized run skipped inside the test)."""
    return f"backend: this end-to-end run is on {' and '.join(backends)} (CI time)"


@pytest.fixture(scope="session")
def golden_head():
    """The reference's SSA head fixture (see /shared/golden/README.md), NCHW as stored."""
    return dict(np.load(DATA_DIR / "ssa_head_small.npz"))


def nchw_to_nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def pytest_collection_modifyitems(config, items):
    """Run `slow` tests first (with the tests of their `xdist_group`, kept together so module
    fixtures are built once). With `-n 2`, a long test picked up last leaves the other worker idle;
    started first, the short tests fill in around it."""

    def group(item):
        marker = item.get_closest_marker("xdist_group")
        return marker.args[0] if marker and marker.args else None

    slow_groups = {group(item) for item in items if item.get_closest_marker("slow")} - {None}
    items.sort(key=lambda item: not (item.get_closest_marker("slow") or group(item) in slow_groups))


# Skips that are by design say why in their reason's first word: "backend:" (the test is about one
# backend, or one is enough) or "opt-in:" (a long quality run). Anything else -- a missing module
# (`importorskip`), a skip a refactor left behind -- hides a test that should have run: with
# SSASEG_STRICT_SKIPS=1 (tox, so CI) it fails instead.
ALLOWED_SKIP_PREFIXES = ("backend:", "opt-in:")


def _skip_reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
        return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("SSASEG_STRICT_SKIPS") != "1" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if not reason.startswith(ALLOWED_SKIP_PREFIXES):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped without a 'backend:' or 'opt-in:' reason, which fails under SSASEG_STRICT_SKIPS=1 "
            f"(tox): {reason}"
        )
