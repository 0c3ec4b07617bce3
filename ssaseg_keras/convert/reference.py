"""Copy reference (PyTorch / mmseg 0.30) weights into our layers and models, strictly.

Each of our layer classes that has a reference counterpart registers a *mapping*: a function that
yields `(reference_name, keras_variable, transform)` for a built layer. `transform` turns the
reference's array layout into ours (conv OIHW -> HWIO, linear (out, in) -> (in, out), ...). Models
compose the mappings of their parts under name prefixes, so one loader serves a lone SSAClassifier,
a backbone and a whole segmentor.

Strict by default: a reference name with no variable, a variable that received nothing, or a shape
that does not fit is an error that lists every offender by name. Buffers that carry no weight
(`num_batches_tracked`, a loss's `empty_weight`) are skipped.
"""

from __future__ import annotations

import collections
import fnmatch
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

# Reference buffers that hold no learned weight.
SKIPPED_BUFFERS = ("*num_batches_tracked", "*empty_weight")

Transform = Callable[[np.ndarray], np.ndarray]
Mapping_ = Iterator[tuple[str, object, Transform]]

_MAPPINGS: dict[type, Callable[..., Mapping_]] = {}
_UNUSED: dict[type, tuple[str, ...]] = {}


class ReferenceWeightsError(ValueError):
    """The reference arrays do not fit the target: the message names every offending weight."""


# ----------------------------------------------------------------- layouts
def identity(array):
    return array


def linear_kernel(array):
    """torch Linear weight (out, in) -> Keras Dense kernel (in, out)."""
    return np.transpose(array)


def conv_kernel(array):
    """torch Conv2d weight (O, I, kh, kw) -> Keras Conv2D kernel (kh, kw, I, O)."""
    return np.transpose(array, (2, 3, 1, 0))


def depthwise_kernel(array):
    """torch depthwise Conv2d weight (C, 1, kh, kw) -> Keras DepthwiseConv2D kernel (kh, kw, C, 1)."""
    return np.transpose(array, (2, 3, 0, 1))


def pointwise_as_dense(array):
    """torch 1x1 Conv2d weight (O, I, 1, 1) -> Keras Dense kernel (I, O)."""
    return np.transpose(array.reshape(array.shape[0], array.shape[1]))


# ---------------------------------------------------------------- registry
def register_reference_mapping(layer_class):
    """Decorator: `fn(layer) -> iterator of (name, variable, transform)` becomes the mapping for
    `layer_class` (and its subclasses without a mapping of their own)."""

    def decorator(fn):
        _MAPPINGS[layer_class] = fn
        return fn

    return decorator


def register_reference_unused(layer_class, patterns):
    """Declare reference names (glob patterns, relative to the layer's own prefix) that the reference
    counterpart of `layer_class` holds but that have no place in it on purpose: a module the reference
    builds and never calls (AFFormer's head `align`), buffers rebuilt here (EfficientFormerV2's
    attention-bias indices). Whole-checkpoint and pretrained loaders skip them and list them as skipped."""
    _UNUSED[layer_class] = tuple(patterns)


def reference_unused(target, prefix=""):
    """The patterns `register_reference_unused` declared for `target`'s class (or a base), under `prefix`."""
    for cls in type(target).__mro__:
        if cls in _UNUSED:
            return tuple(prefix + pattern for pattern in _UNUSED[cls])
    return ()


def reference_mapping(target, prefix=""):
    """All `(prefix + name, variable, transform)` of a built layer or model, via its registered mapping."""
    for cls in type(target).__mro__:
        if cls in _MAPPINGS:
            for name, variable, transform in _MAPPINGS[cls](target):
                yield prefix + name, variable, transform
            return
    raise TypeError(
        f"No reference-weight mapping is registered for {type(target).__name__}; "
        "register one with ssaseg_keras.convert.register_reference_mapping."
    )


def dense_mapping(layer, name, conv1x1=False):
    """Mapping of a Keras Dense standing for a torch Linear (or a 1x1 Conv2d when conv1x1)."""
    yield f"{name}.weight", layer.kernel, pointwise_as_dense if conv1x1 else linear_kernel
    if layer.use_bias:
        yield f"{name}.bias", layer.bias, identity


def conv_mapping(layer, name):
    """Mapping of a Keras Conv2D / DepthwiseConv2D standing for a torch Conv2d."""
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        yield f"{name}.weight", layer.kernel, depthwise_kernel
    else:
        yield f"{name}.weight", layer.kernel, conv_kernel
    if layer.use_bias:
        yield f"{name}.bias", layer.bias, identity


def norm_mapping(layer, name):
    """Mapping of a Keras BatchNormalization / LayerNormalization / GroupNormalization."""
    import keras

    yield f"{name}.weight", layer.gamma, identity
    yield f"{name}.bias", layer.beta, identity
    if isinstance(layer, keras.layers.BatchNormalization):
        yield f"{name}.running_mean", layer.moving_mean, identity
        yield f"{name}.running_var", layer.moving_variance, identity


# ------------------------------------------------------------------ loader
@dataclass
class LoadReport:
    """What `load_reference_weights` did: the names it loaded and the buffers/names it skipped;
    `kept`: the model's names the file does not have, left at their values (e.g. the output norms an
    official Swin ImageNet file lacks)."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def num_loaded(self):
        return len(self.loaded)

    def describe(self):
        """One line for users: 'loaded N weights (part: n, ...); not used: names; skipped K buffers
        without weights' (what training and `convert` print after every load)."""
        parts = ", ".join(f"{part}: {count}" for part, count in sorted(counts_by_part(self.loaded).items()))
        text = f"loaded {self.num_loaded} weights ({parts})"
        buffers = [n for n in self.skipped if any(fnmatch.fnmatchcase(n, p) for p in SKIPPED_BUFFERS)]
        names = [n for n in self.skipped if n not in buffers]
        if names:
            text += f"; not used: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
        if buffers:
            text += f"; skipped {len(buffers)} buffers without weights"
        if self.kept:
            text += f"; not in the file, kept at their initial values: {', '.join(self.kept)}"
        return text


def counts_by_part(names):
    """{"backbone": n, "decode_head": m, ...}: loaded names counted by their first component."""
    return dict(collections.Counter(name.split(".", 1)[0] for name in names))


def to_numpy(value):
    """A numpy array from a numpy array, torch tensor or anything array-like."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def load_reference_weights(
    target,
    state_dict: Mapping[str, object],
    prefix: str = "",
    strict: bool = True,
    ignore: Iterable[str] = (),
) -> LoadReport:
    """Copy reference-layout arrays into a built layer or model.

    Args:
        target: a built Keras layer or model with a registered mapping (e.g. `SSAClassifier`).
        state_dict: reference name -> array (numpy array or torch tensor), e.g. a checkpoint's
            `state_dict`.
        prefix: only names starting with `prefix` are considered, with the prefix removed (e.g.
            "decode_head." to load a head out of a whole checkpoint).
        strict: raise when a name is unused, a variable missing or a shape wrong (else log them).
        ignore: glob patterns of reference names (after the prefix) to skip on purpose, e.g.
            "gt_*" to load a training checkpoint into an inference model.

    Returns:
        LoadReport with the loaded and skipped names.

    Raises:
        ReferenceWeightsError listing every missing name, unused name and shape mismatch.
    """
    skip_patterns = tuple(SKIPPED_BUFFERS) + tuple(ignore)
    arrays = {}
    report = LoadReport()
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in skip_patterns):
            report.skipped.append(name)
            continue
        arrays[name] = value

    mapping = list(reference_mapping(target))
    missing, mismatched, assignments = {}, [], []
    seen = set()
    for name, variable, transform in mapping:  # a reference tensor may fill several variables
        seen.add(name)
        if name not in arrays:
            missing[name] = None
            continue
        value = transform(to_numpy(arrays[name]).astype("float32"))
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{name}: reference {tuple(to_numpy(arrays[name]).shape)} -> {tuple(value.shape)}, "
                f"expected {tuple(variable.shape)} ({variable.path})"
            )
            continue
        assignments.append((name, variable, value))
    unused = sorted(set(arrays) - seen)

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing from the reference weights: " + ", ".join(missing))
    if unused:
        problems.append(f"{len(unused)} reference weights with no place in the model: " + ", ".join(unused))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched))
    if problems and strict:
        raise ReferenceWeightsError(
            f"Reference weights do not fit {getattr(target, 'name', type(target).__name__)}"
            f"{f' (prefix {prefix!r})' if prefix else ''}:\n- " + "\n- ".join(problems)
        )
    for problem in problems:
        logger.warning(problem)

    for _, variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    report.loaded.extend(dict.fromkeys(name for name, _, _ in assignments))
    logger.info(report.describe())
    return report
