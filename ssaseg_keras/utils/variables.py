"""Naming and counting a model's variables.

Keras' `variable.path` is not a stable name: a layer created without a name gets a process-wide
unique one (`dense_57`, `seed_generator_15`), so the same model built after another one has other
paths. `variable_keys` names every variable by where it sits in the model instead: the chain of
layer names from the model down, where a layer whose name Keras generated is named by its class
and its rank among its parent's children of that class (`dense`, `dense_1`, ... inside each
parent). The keys are the same in every process and on every backend for models built by the same
code, which is what checkpoints and weight copies match on.
"""

from __future__ import annotations

import collections
import re

import numpy as np


def count_parameters(variables):
    """Number of scalars in `variables` (a model's `trainable_variables`, say)."""
    return int(sum(int(np.prod(v.shape)) for v in variables))


def _snake_case(name):
    """Keras' default layer name of a class name: `SegFormerMultiheadAttention` -> `seg_former_multihead_attention`."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _generated_name(layer):
    """The class-based name Keras would generate for `layer`, when its name is such a name; else None."""
    base = _snake_case(type(layer).__name__)
    return base if re.fullmatch(rf"{re.escape(base)}(_\d+)?", layer.name) else None


def _children(layer):
    return list(layer._flatten_layers(include_self=False, recursive=False))


def variable_keys(model, exclude=()):
    """{key: variable} for every variable of `model` (weights, statistics, random-generator states).

    Args:
        model: a built layer or model.
        exclude: variables to leave out (e.g. metric variables).

    Returns:
        An ordered dict: keys like `backbone/block1_0/attn/proj_1/kernel`, in `model.variables`
        order where layers are visited depth first. A layer reachable along two paths (a library
        model held by two of our layers) is named along the first.
    """
    excluded = {id(v) for v in exclude}
    keys = collections.OrderedDict()
    seen_layers, seen_variables = set(), set(excluded)

    def visit(layer, prefix):
        seen_layers.add(id(layer))
        children = _children(layer)
        in_children = {id(v) for child in children for v in child.variables}
        names = collections.Counter()
        for variable in layer.variables:
            if id(variable) in in_children or id(variable) in seen_variables:
                continue
            seen_variables.add(id(variable))
            name = variable.name.split("/")[-1]
            count = names[name]
            names[name] += 1
            key = prefix + (name if count == 0 else f"{name}_{count}")
            if key in keys:  # only when a layer is explicitly named like a sibling's generated name
                raise ValueError(f"two variables of {model.name} would both be named {key!r}; rename one layer")
            keys[key] = variable
        ranks = collections.Counter()
        for child in children:
            if id(child) in seen_layers:
                continue
            generated = _generated_name(child)
            if generated is None:
                component = child.name
            else:
                rank = ranks[generated]
                ranks[generated] += 1
                component = generated if rank == 0 else f"{generated}_{rank}"
            visit(child, f"{prefix}{component}/")

    visit(model, "")
    return keys
