"""Iteration-based training from a recipe, on any backend, with Keras' own `fit` loop.

`train(recipe, work_dir)` builds the model, the tf.data pipeline and the optimizer from the recipe,
and runs `model.fit` (compiled: XLA on TensorFlow, jit on JAX) in chunks of `log_interval`
iterations. The segmentor's `compute_loss` holds the SSA-Seg objective, so the step is the same
code on TensorFlow, JAX and PyTorch. Between chunks (never inside a step) the `IterationLogger`
callback prints progress, writes the JSON-lines log and TensorBoard scalars, evaluates every
`eval_interval` and checkpoints every `checkpoint_interval` iterations.
"""

from __future__ import annotations

import json
import math
import os
import time

import keras
import yaml

from ssaseg_keras.training import checkpoint as ckpt
from ssaseg_keras.training.distribute import setup_distribution
from ssaseg_keras.utils.distribution import barrier, host_mean_of
from ssaseg_keras.utils.errors import UserError
from ssaseg_keras.utils.tensorflow import import_tensorflow

PAPER_BATCH_SIZE = 16


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def set_precision(precision):
    """Set the global dtype policy (float32, mixed_float16 or mixed_bfloat16) before building."""
    keras.config.set_dtype_policy(precision)


def build_training_model(recipe, load_pretrained=True):
    """The compiled `ImageSegmenter` (the recipe's task, preprocessor included) and its optimizer.

    With `load_pretrained`, `model.pretrained` (backbone weights) is loaded and its report kept as
    `model.pretrained_report`. The optimizer's parameter groups are `model.optimizer.groups`. Under
    several devices, call it inside `DistributionPlan.scope()` (the trainer does).
    """
    from ssaseg_keras.models import build_image_segmenter
    from ssaseg_keras.training.optimizer import build_optimizer

    model = build_image_segmenter(recipe, training=True)
    if load_pretrained and recipe["model"].get("pretrained"):
        from ssaseg_keras.convert import load_pretrained_backbone

        model.pretrained_source = recipe["model"]["pretrained"]
        model.pretrained_report = load_pretrained_backbone(
            model, recipe["model"]["pretrained"], family=recipe["model"]["family"]
        )
    elif load_pretrained and getattr(model.backbone, "preset", None) and getattr(model.backbone, "loads_preset_weights", False):
        # A keras-hub backbone's preset weights (model.backbone.preset): reported like a file's.
        from ssaseg_keras.convert import LoadReport, reference_mapping

        model.pretrained_source = f"keras-hub preset {model.backbone.preset}"
        names = dict.fromkeys(name for name, _, _ in reference_mapping(model.backbone, prefix="backbone."))
        model.pretrained_report = LoadReport(loaded=list(names))
    model.compile_pixel_losses = recipe["train"]["compile_loss"]
    if model.compile_pixel_losses:
        from ssaseg_keras.ops.compile import check_loss_compilation_toolchain

        check_loss_compilation_toolchain()
    optimizer = build_optimizer(model, recipe["train"])
    model.compile(optimizer=optimizer, jit_compile="auto")
    return model


def learning_rate(model):
    """The current (base-group) learning rate as a float."""
    optimizer = model.optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = inner._learning_rate
    step = inner._iterations if hasattr(inner, "_iterations") else inner.iterations
    value = schedule(step) if callable(schedule) else schedule
    return float(keras.ops.convert_to_numpy(value))


def iteration_of(model):
    """Optimizer updates done so far (what the schedule and checkpoints count)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class IterationLogger(keras.callbacks.Callback):
    """Runs at the end of every chunk of `log_interval` iterations (a Keras "epoch" here).

    Prints one progress line (iteration, ETA, images/s, lr, every loss term), appends it to
    `log.jsonl`, writes TensorBoard scalars, evaluates and checkpoints on their intervals, and stops
    with a clear message naming the iteration when a loss is not finite.
    """

    def __init__(self, recipe, work_dir, evaluate_fn=None, start_iteration=0, best_miou=None, echo=print,
                 is_chief=True):  # fmt: skip
        super().__init__()
        self.is_chief = is_chief  # only process 0 writes logs, TensorBoard and checkpoints
        self.recipe = recipe
        self.train_cfg = recipe["train"]
        self.work_dir = work_dir
        self.evaluate_fn = evaluate_fn
        self.echo = echo
        self.start_iteration = start_iteration
        self.best_miou = best_miou
        self.writer = _summary_writer(os.path.join(work_dir, "tensorboard")) if is_chief else None
        self.log_path = os.path.join(work_dir, "log.jsonl")

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()
        self.chunk_started = self.started

    def on_epoch_begin(self, epoch, logs=None):
        self.chunk_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        cfg = self.train_cfg
        iteration = iteration_of(self.model)
        now = time.perf_counter()
        micro_batches = self.params.get("steps") or cfg["log_interval"] * cfg["accumulate_steps"]
        done = iteration - self.start_iteration
        rate = done / max(now - self.started, 1e-9)
        eta = (cfg["max_iters"] - iteration) / max(rate, 1e-9)
        images_per_s = micro_batches * cfg["batch_size"] / max(now - self.chunk_started, 1e-9)
        # PyTorch ranks each log their own shard's means: average them (every rank, so all stop
        # together on a NaN); JAX and TensorFlow logs are already the global batch's.
        logs = host_mean_of({k: float(v) for k, v in (logs or {}).items()})
        terms = {k: v for k, v in logs.items() if k != "loss"}
        total = float(logs.get("loss", float("nan")))
        record = {
            "iteration": iteration,
            "lr": learning_rate(self.model),
            "loss": total,
            **terms,
            "images_per_s": images_per_s,
            "eta_s": eta,
        }
        if not math.isfinite(total) or not all(math.isfinite(v) for v in terms.values()):
            bad = [k for k, v in {"loss": total, **terms}.items() if not math.isfinite(v)]
            self._log(record)
            self.model.stop_training = True
            self.diverged = TrainingDiverged(
                f"training diverged at iteration {iteration}: {', '.join(bad)} not finite. "
                "Try a lower train.lr, train.clip_grad_norm: 1.0, or precision: mixed_bfloat16 / float32; "
                f"resume from the last checkpoint in {os.path.join(self.work_dir, 'checkpoints')}"
            )
            return
        self.echo(
            f"iter {iteration}/{cfg['max_iters']}  eta {_duration(eta)}  {images_per_s:.1f} img/s  "
            f"lr {record['lr']:.3e}  loss {total:.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in terms.items())
        )
        self._log(record)

        evaluated = None
        if self.evaluate_fn and (iteration % cfg["eval_interval"] == 0 or iteration >= cfg["max_iters"]):
            evaluated = self.evaluate_fn(self.model)
            miou = evaluated["mIoU"]
            self.echo(
                f"eval  iter {iteration}  mIoU {miou:.2f}  mAcc {evaluated['mAcc']:.2f}  "
                f"aAcc {evaluated['aAcc']:.2f}  (mode: {evaluated['mode']})"
            )
            self._log({"iteration": iteration, **{f"val/{k}": evaluated[k] for k in ("mIoU", "mAcc", "aAcc")}})
        if iteration % cfg["checkpoint_interval"] == 0 or iteration >= cfg["max_iters"] or evaluated:
            is_best = evaluated is not None and (self.best_miou is None or evaluated["mIoU"] > self.best_miou)
            if is_best:
                self.best_miou = evaluated["mIoU"]
            wants = iteration % cfg["checkpoint_interval"] == 0 or iteration >= cfg["max_iters"] or is_best
            if wants and self.is_chief:
                ckpt.save_checkpoint(
                    self.work_dir,
                    self.model,
                    self.model.optimizer,
                    iteration,
                    self.recipe,
                    extra_state={"best_miou": self.best_miou, "last_eval": evaluated},
                    keep=cfg["keep_checkpoints"],
                    best=is_best,
                )

    def _log(self, record):
        if not self.is_chief:
            return
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["iteration"]
            for key, value in record.items():
                if key != "iteration" and isinstance(value, int | float) and math.isfinite(value):
                    self.writer(key if "/" in key else f"train/{key}", value, step)


def _summary_writer(logdir):
    """A `(tag, value, step)` TensorBoard scalar writer, or None when TensorFlow or TensorBoard is
    absent (the JSON-lines log is always written)."""
    try:
        import tensorboard  # noqa: F401  (tf.summary needs it for its implementation)

        tf = import_tensorflow()
    except ImportError:
        return None
    writer = tf.summary.create_file_writer(logdir)

    def write(tag, value, step):
        with writer.as_default():
            tf.summary.scalar(tag, value, step=step)
        writer.flush()

    return write


def _silent(*_args, **_kwargs):
    """The `echo` of processes other than 0."""


def _duration(seconds):
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def train(recipe, work_dir, resume=False, echo=print, load_pretrained=True, devices=None, multi_host=None):
    """Train a validated recipe into `work_dir`; returns a summary dict.

    Args:
        recipe: the validated recipe (see `ssaseg_keras.recipes.load_recipe`).
        work_dir: run folder (resolved recipe, checkpoints, logs, TensorBoard).
        resume: continue from the latest checkpoint in work_dir (iteration, schedule, optimizer,
            random-generator states and data order).
        devices: "auto" or N data-parallel devices (None: the recipe's `train.devices`);
            `train.batch_size` stays the global batch.
        multi_host: JAX only, {"coordinator", "num_processes", "process_id"} (None: the
            KERAS_DISTRIBUTION_* variables, or one host).

    Only process 0 writes (recipe, checkpoints, logs, TensorBoard) and prints.
    """
    from ssaseg_keras.data import build_dataset
    from ssaseg_keras.data.pipeline import explain_data_errors
    from ssaseg_keras.recipes import check_pretrained
    from ssaseg_keras.training.evaluation import eval_mode_name, make_evaluator
    from ssaseg_keras.training.optimizer import describe_groups

    cfg = recipe["train"]
    eval_mode = eval_mode_name(recipe["eval"]["mode"], recipe["eval"]["crop_size"], recipe["eval"]["stride"])
    resume = resume or bool(cfg.get("resume"))
    if load_pretrained and not resume:
        check_pretrained(recipe["model"])  # before anything starts: a missing file is one line
    # Before TensorFlow starts (it may split the CPU into logical devices) and before the model.
    plan = setup_distribution(
        cfg["devices"] if devices is None else devices, cfg["batch_size"], **(multi_host or {})
    )
    if not plan.is_chief:
        echo = _silent
    import_tensorflow()  # before the model: on JAX / PyTorch it keeps TensorFlow off the GPUs
    set_precision(cfg["precision"])
    keras.utils.set_random_seed(cfg["seed"])
    echo(plan.describe())
    echo(
        f"precision {cfg['precision']}  global batch {cfg['batch_size']} x {cfg['accumulate_steps']} "
        f"accumulation = {cfg['batch_size'] * cfg['accumulate_steps']} images per update"
    )
    from ssaseg_keras.ops.compile import describe_loss_compilation

    echo(describe_loss_compilation(cfg["compile_loss"]))
    if cfg["batch_size"] * cfg["accumulate_steps"] != PAPER_BATCH_SIZE:
        echo(
            f"warning: the paper's schedule uses a global batch of {PAPER_BATCH_SIZE}; this run uses "
            f"{cfg['batch_size'] * cfg['accumulate_steps']} (results and lr may differ)"
        )
    if plan.is_chief:
        os.makedirs(work_dir, exist_ok=True)
        with open(os.path.join(work_dir, "recipe.yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(recipe, handle, sort_keys=False)

    with plan.scope():
        model = build_training_model(recipe, load_pretrained=load_pretrained and not resume)
    report = getattr(model, "pretrained_report", None)
    if report is not None:
        echo(f"pretrained backbone {model.pretrained_source}: {report.describe()}")
    echo(
        f"parameter groups (mmcv rule on the reference names, base lr {cfg['lr']:g}, weight decay "
        f"{cfg['weight_decay']:g}):"
    )
    for line in describe_groups(model, model.optimizer.groups):
        echo(f"  {line}")
    start, best = 0, None
    if resume:
        checkpoint = ckpt.latest_checkpoint(work_dir)
        if checkpoint is None:
            echo(f"no checkpoint in {work_dir}: starting from iteration 0")
        else:
            ckpt.restore_model(checkpoint, model)
            ckpt.restore_optimizer(checkpoint, model.optimizer, model)
            state = ckpt.read_state(checkpoint)
            start, best = int(state["iteration"]), state.get("best_miou")
            echo(f"resumed from {checkpoint} (iteration {start}, trained on {state.get('backend')})")
    plan.prepare_model(model)  # after restoring: DDP broadcasts rank 0's weights
    if start >= cfg["max_iters"]:
        echo(f"nothing to do: iteration {start} >= max_iters {cfg['max_iters']}")
        return {"iteration": start, "best_miou": best, "eval_mode": eval_mode, "work_dir": work_dir}

    micro_per_update = cfg["accumulate_steps"]
    # Raw (0-255) augmented crops: the task's preprocessor normalises them inside `fit`.
    train_ds = build_dataset(
        recipe["data"], "train", batch_size=plan.per_process_batch, seed=cfg["seed"],
        skip_batches=start * micro_per_update, shard=plan.data_shard, normalize=False,
    )  # fmt: skip
    evaluator = make_evaluator(recipe)
    logger = IterationLogger(
        recipe, work_dir, evaluate_fn=evaluator, start_iteration=start, best_miou=best, echo=echo,
        is_chief=plan.is_chief,
    )  # fmt: skip
    chunk = math.gcd(cfg["log_interval"], cfg["eval_interval"], cfg["checkpoint_interval"], cfg["max_iters"])
    if start % chunk:
        raise UserError(
            f"cannot resume at iteration {start}: it is not a multiple of train.log_interval={chunk}"
        )
    epochs = math.ceil(cfg["max_iters"] / chunk)
    with explain_data_errors(recipe["data"], "train"):
        model.fit(
            train_ds,
            epochs=epochs,
            initial_epoch=start // chunk,
            steps_per_epoch=chunk * micro_per_update,
            callbacks=[logger],
            shuffle=False,  # the tf.data pipeline shuffles, seeded
            verbose=0,
        )
    barrier()  # PyTorch: no rank leaves before process 0 has written its last checkpoint
    if getattr(logger, "diverged", None):
        raise logger.diverged
    return {
        "iteration": iteration_of(model),
        "best_miou": logger.best_miou,
        "eval_mode": eval_mode,
        "work_dir": work_dir,
        "model": model,
        "devices": plan.devices,
        "engine": plan.engine,
    }
