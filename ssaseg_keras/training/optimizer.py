"""The reference's optimizers: AdamW (or SGD, for the CNN recipes) with mmcv parameter groups, and the
warm-up + poly schedule.

Parameter groups follow mmcv's `paramwise_cfg.custom_keys` exactly, applied to each weight's
*reference* name (e.g. `backbone.block1.0.norm1.weight`, `decode_head.conv_seg.weight`), so the
same weights get the same treatment as in the reference: the longest matching key wins (ties by
alphabetical order) and only that key's multipliers apply. The SegNeXt / SegFormer recipes use
`{"pos_block": decay 0, "norm": decay 0, "head": lr x10}` (the default), UperNet-Swin's
`{"absolute_pos_embed": decay 0, "relative_position_bias_table": decay 0, "norm": decay 0}` (the
recipe's `train.custom_keys`). The names come from the model's
registered reference mapping (`ssaseg_keras.convert`); a model with a trainable weight that has no
reference name is an error, not a guess from Keras paths (which name keras-cv's attention layers
`.../seg_former_multihead_attention/dense/kernel`: "head" would match).

`GroupedAdamW` is Keras' AdamW with a learning-rate and a weight-decay multiplier per variable:
the multiplier scales Adam's *step* (scaling gradients would not, Adam being scale-invariant), and
the decoupled decay uses the group's learning rate, as torch's AdamW does. Updates run once per group
through Keras' own backend update, so PyTorch gets Keras' multi-tensor (foreach) Adam.
"""

from __future__ import annotations

import collections

import keras
from keras import ops

from ssaseg_keras.utils.errors import UserError
from ssaseg_keras.utils.variables import count_parameters

DEFAULT_CUSTOM_KEYS = {
    "pos_block": {"decay_mult": 0.0},
    "norm": {"decay_mult": 0.0},
    "head": {"lr_mult": 10.0},
}


def reference_names(model):
    """{id(variable): reference name} of every trainable variable of `model`.

    Raises:
        UserError naming the model part without a registered reference mapping, or the trainable
        variables that the mapping does not name.
    """
    from ssaseg_keras.convert.reference import reference_mapping

    try:
        names = {id(variable): name for name, variable, _ in reference_mapping(model)}
    except TypeError as error:  # no mapping registered for the model or one of its parts
        raise UserError(
            f"parameter groups of {model.name}: {error} The lr/decay multipliers are applied to the "
            "reference's parameter names, so every part of the model needs one."
        ) from error
    unnamed = [v.path for v in model.trainable_variables if id(v) not in names]
    if unnamed:
        raise UserError(
            f"parameter groups of {model.name}: {len(unnamed)} trainable variables have no reference "
            f"name ({', '.join(unnamed[:5])}{', ...' if len(unnamed) > 5 else ''}); extend the part's "
            "reference mapping (ssaseg_keras.convert.register_reference_mapping)."
        )
    return names


def multipliers_of(name, custom_keys=None):
    """mmcv's (lr_mult, decay_mult) for one reference parameter name under `custom_keys`."""
    keys = DEFAULT_CUSTOM_KEYS if custom_keys is None else custom_keys
    for key in sorted(sorted(keys), key=len, reverse=True):
        if key in name:
            return float(keys[key].get("lr_mult", 1.0)), float(keys[key].get("decay_mult", 1.0))
    return 1.0, 1.0


def parameter_groups(model, custom_keys=None, head_lr_mult=None):
    """{variable.path: (lr_mult, decay_mult)} for the model's trainable variables (mmcv's rule).

    Args:
        model: a built model with a registered reference mapping (every `build_segmentor` model).
        custom_keys: {substring: {"lr_mult": x, "decay_mult": y}}; None: `DEFAULT_CUSTOM_KEYS`; {}: none.
        head_lr_mult: overrides the "head" key's lr_mult (the recipe's `train.head_lr_mult`).
    """
    keys = {k: dict(v) for k, v in (DEFAULT_CUSTOM_KEYS if custom_keys is None else custom_keys).items()}
    if head_lr_mult is not None and "head" in keys:
        keys["head"]["lr_mult"] = float(head_lr_mult)
    names = reference_names(model)
    return {variable.path: multipliers_of(names[id(variable)], keys) for variable in model.trainable_variables}


def describe_groups(model, groups):
    """One line per (lr_mult, decay_mult): how many reference tensors (as the reference counts
    them: one `in_proj_weight` for the three Keras query/key/value kernels) and parameters."""
    names = reference_names(model)
    tensors, parameters = collections.defaultdict(set), collections.Counter()
    for variable in model.trainable_variables:
        group = groups[variable.path]
        tensors[group].add(names[id(variable)])
        parameters[group] += count_parameters([variable])
    return [
        f"lr x{lr:g} decay x{decay:g}: {len(tensors[(lr, decay)])} tensors, {parameters[(lr, decay)]:,} parameters"
        for lr, decay in sorted(tensors)
    ]


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class WarmupPolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """mmcv's iteration-based schedule: poly decay with a linear warm-up multiplied in.

    lr(i) = ((base - min_lr) * (1 - i / max_iters) ** power + min_lr) * w(i), where
    w(i) = 1 - (1 - i / warmup_iters) * (1 - warmup_ratio) for i < warmup_iters, else 1.
    `i` counts optimizer updates: the step counter divided by `accumulate_steps`.
    """

    def __init__(self, base_lr, max_iters, warmup_iters=0, warmup_ratio=1e-6, power=1.0, min_lr=0.0,
                 accumulate_steps=1, multiplier=1.0):  # fmt: skip
        self.base_lr = float(base_lr)
        self.max_iters = int(max_iters)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.power = float(power)
        self.min_lr = float(min_lr)
        self.accumulate_steps = int(accumulate_steps)
        self.multiplier = float(multiplier)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.accumulate_steps > 1:
            step = ops.floor(step / self.accumulate_steps)
        progress = ops.minimum(step / float(max(self.max_iters, 1)), 1.0)
        regular = (self.base_lr - self.min_lr) * ops.power(1.0 - progress, self.power) + self.min_lr
        if self.warmup_iters > 0:
            k = (1.0 - step / float(self.warmup_iters)) * (1.0 - self.warmup_ratio)
            regular = ops.where(step < self.warmup_iters, regular * (1.0 - k), regular)
        return regular * self.multiplier

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "max_iters": self.max_iters,
            "warmup_iters": self.warmup_iters,
            "warmup_ratio": self.warmup_ratio,
            "power": self.power,
            "min_lr": self.min_lr,
            "accumulate_steps": self.accumulate_steps,
            "multiplier": self.multiplier,
        }


def _backend_adamw():
    """Keras' AdamW class as this backend runs it.

    On PyTorch, `keras.optimizers.AdamW(...)` returns Keras' multi-tensor (`torch._foreach_*`)
    subclass, but only for AdamW itself, not for its subclasses; deriving from that class gives
    GroupedAdamW the same update (a few ops per group instead of ~10 eager ops per variable; see
    BENCHMARKS.md). JAX and TensorFlow compile the per-variable update, so the public class serves.
    """
    if keras.backend.backend() == "torch":
        try:
            from keras.src.backend.torch.optimizers.torch_adamw import AdamW
        except ImportError:  # a Keras that moved it: the per-variable update still works
            return keras.optimizers.AdamW
        return AdamW
    return keras.optimizers.AdamW


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class GroupedAdamW(_backend_adamw()):
    """AdamW with per-variable learning-rate and weight-decay multipliers.

    Args:
        groups: {variable.path: (lr_mult, decay_mult)} (see `parameter_groups`); every variable
            must be listed (empty: (1, 1) for all).
        **kwargs: keras.optimizers.AdamW's arguments.
    """

    def __init__(self, groups=None, **kwargs):
        super().__init__(**kwargs)
        self.groups = {str(k): (float(v[0]), float(v[1])) for k, v in (groups or {}).items()}

    def build(self, variables):
        super().build(variables)
        if self.groups:
            ungrouped = [v.path for v in variables if v.path not in self.groups]
            if ungrouped:  # e.g. groups made for another model: never fall back to (1, 1) silently
                raise ValueError(
                    f"GroupedAdamW: {len(ungrouped)} variables have no group ({', '.join(ungrouped[:5])}); "
                    "make the groups with parameter_groups(model) for the model being trained"
                )
        self._lr_mults = [self.groups.get(v.path, (1.0, 1.0))[0] for v in variables]
        self._decay_mults = [self.groups.get(v.path, (1.0, 1.0))[1] for v in variables]

    def _multipliers(self, variable):
        index = self._get_variable_index(variable)
        return self._lr_mults[index], self._decay_mults[index]

    def _positions_by(self, variables, key):
        """{key(lr_mult, decay_mult): [positions in `variables`]}, in first-seen order."""
        groups = {}
        for position, variable in enumerate(variables):
            groups.setdefault(key(*self._multipliers(variable)), []).append(position)
        return groups

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # One call of Keras' backend update per learning-rate group: on PyTorch that is Keras' foreach
        # (multi-tensor) Adam over the whole group instead of ~10 small ops per variable.
        for lr_mult, positions in self._positions_by(trainable_variables, lambda lr, _: lr).items():
            super()._backend_update_step(
                [grads[i] for i in positions],
                [trainable_variables[i] for i in positions],
                learning_rate if lr_mult == 1.0 else learning_rate * lr_mult,
            )

    def _apply_weight_decay(self, variables):
        # Decoupled decay with the group's learning rate: p -= lr * (wd * lr_mult * decay_mult) * p,
        # done by Keras' backend decay (a foreach on PyTorch) once per distinct factor; Keras' decay
        # reads `self.weight_decay`, so it is set to each group's factor in turn.
        if self.weight_decay is None:
            return
        base = self.weight_decay
        groups = self._positions_by(variables, lambda lr_mult, decay_mult: lr_mult * decay_mult)
        try:
            for factor, positions in groups.items():
                if factor != 0.0:
                    self.weight_decay = base * factor
                    super()._apply_weight_decay([variables[i] for i in positions])
        finally:
            self.weight_decay = base

    def get_config(self):
        return {**super().get_config(), "groups": {k: list(v) for k, v in self.groups.items()}}


@keras.saving.register_keras_serializable(package="ssaseg_keras")
class GroupedSGD(keras.optimizers.Optimizer):
    """torch's SGD (momentum, dampening 0, not Nesterov, L2 weight decay added to the gradient) with
    mmcv's per-variable learning-rate and weight-decay multipliers: for each variable

        g = grad + weight_decay * decay_mult * p;   b = momentum * b + g;   p -= lr * lr_mult * b

    (Keras' SGD folds the learning rate into its velocity, which differs from torch's once the rate
    changes, as the poly schedule does every step.)

    Args:
        groups: {variable.path: (lr_mult, decay_mult)} (see `parameter_groups`).
        momentum: torch's momentum.
        weight_decay: torch's (coupled) weight decay.
        **kwargs: keras.optimizers.Optimizer's arguments (learning_rate, global_clipnorm, ...).
    """

    def __init__(self, groups=None, momentum=0.9, weight_decay=0.0, name="grouped_sgd", **kwargs):
        super().__init__(name=name, **kwargs)
        self.groups = {str(k): (float(v[0]), float(v[1])) for k, v in (groups or {}).items()}
        self.momentum = float(momentum)
        self.coupled_weight_decay = float(weight_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if self.groups:
            ungrouped = [v.path for v in variables if v.path not in self.groups]
            if ungrouped:
                raise ValueError(
                    f"GroupedSGD: {len(ungrouped)} variables have no group ({', '.join(ungrouped[:5])}); "
                    "make the groups with parameter_groups(model) for the model being trained"
                )
        self._multipliers = [self.groups.get(v.path, (1.0, 1.0)) for v in variables]
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        lr_mult, decay_mult = self._multipliers[index]
        gradient = ops.cast(gradient, variable.dtype)
        decay = self.coupled_weight_decay * decay_mult
        if decay:
            gradient = ops.add(gradient, ops.multiply(variable, decay))
        buffer = self.momentums[index]
        self.assign(buffer, ops.add(ops.multiply(buffer, self.momentum), gradient))
        self.assign_sub(variable, ops.multiply(buffer, ops.cast(learning_rate, variable.dtype) * lr_mult))

    def get_config(self):
        return {
            **super().get_config(),
            "groups": {k: list(v) for k, v in self.groups.items()},
            "momentum": self.momentum,
            "weight_decay": self.coupled_weight_decay,
        }


def build_optimizer(model, train_config):
    """The recipe's optimizer for `model` (`train.optimizer`): GroupedAdamW or GroupedSGD, with the
    warm-up + poly schedule and mmcv's parameter groups.

    Args:
        model: the built segmentor.
        train_config: the recipe's validated `train:` section.
    """
    accumulate = int(train_config.get("accumulate_steps", 1) or 1)
    schedule = WarmupPolyDecay(
        base_lr=train_config["lr"],
        max_iters=train_config["max_iters"],
        warmup_iters=train_config.get("warmup_iters", 0),
        warmup_ratio=train_config.get("warmup_ratio", 1e-6),
        power=train_config.get("poly_power", 1.0),
        min_lr=train_config.get("min_lr", 0.0),
        accumulate_steps=accumulate,
    )
    betas = train_config.get("betas", (0.9, 0.999))
    kwargs = {}
    if train_config.get("clip_grad_norm"):
        kwargs["global_clipnorm"] = float(train_config["clip_grad_norm"])
    if accumulate > 1:
        kwargs["gradient_accumulation_steps"] = accumulate
    groups = parameter_groups(
        model, custom_keys=train_config.get("custom_keys"), head_lr_mult=train_config.get("head_lr_mult")
    )
    if train_config.get("optimizer", "adamw") == "sgd":
        return GroupedSGD(
            groups=groups,
            learning_rate=schedule,
            momentum=float(train_config.get("momentum", 0.9)),
            weight_decay=float(train_config.get("weight_decay", 0.0)),
            **kwargs,
        )
    return GroupedAdamW(
        groups=groups,
        learning_rate=schedule,
        beta_1=float(betas[0]),
        beta_2=float(betas[1]),
        epsilon=1e-8,  # torch's AdamW default (Keras' is 1e-7)
        weight_decay=float(train_config.get("weight_decay", 0.01)),
        **kwargs,
    )
