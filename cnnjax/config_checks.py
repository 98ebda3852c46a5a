"""Checks of a resolved config before any work starts: each problem is one line with its fix."""

from __future__ import annotations

import math

import ml_collections

from cnnjax import models
from cnnjax.errors import UserError
from cnnjax.models.layers import NORMALIZATIONS, check_choice, get_activation
from cnnjax.train.optim import OPTIMIZERS, SCHEDULES

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
PARALLEL_STEPS = ("jit", "shard_map")


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except (TypeError, OverflowError):  # None, a string, an int beyond the float range
        return False


def _positive(value, key: str, *, allow_zero: bool = False) -> None:
    # NaN compares false with everything, so a plain `value < 0` would let it through.
    bound = ">= 0" if allow_zero else "> 0"
    if not _finite(value):
        raise UserError(
            f"config.{key} must be a finite number {bound} (got {value}): set --config.{key}=..."
        )
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"config.{key} must be {bound} (got {value}): set --config.{key}=...")


def _fraction(value, key: str) -> None:
    """A probability-like setting: in [0, 1), which NaN and inf never are."""
    if not (_finite(value) and 0.0 <= value < 1.0):
        raise UserError(f"config.{key} must be in [0, 1) (got {value}): set --config.{key}=...")


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
    optimizer = config.optimizer
    check_choice("optimizer", optimizer.name, OPTIMIZERS)
    check_choice("schedule", optimizer.schedule, SCHEDULES)
    _positive(optimizer.learning_rate, "optimizer.learning_rate")
    _fraction(optimizer.momentum, "optimizer.momentum")
    _positive(optimizer.weight_decay, "optimizer.weight_decay", allow_zero=True)
    _positive(optimizer.grad_clip_norm, "optimizer.grad_clip_norm", allow_zero=True)
    _fraction(optimizer.label_smoothing, "optimizer.label_smoothing")
    _positive(optimizer.warmup_epochs, "optimizer.warmup_epochs", allow_zero=True)
    epochs = config.train.epochs
    # With train.steps set, the run's length in epochs is only known once the data is loaded.
    if config.train.steps is None and optimizer.warmup_epochs > epochs:
        raise UserError(
            f"config.optimizer.warmup_epochs={optimizer.warmup_epochs} is longer than the run "
            f"(config.train.epochs={epochs}, train.steps unset), so the learning rate never "
            f"reaches its peak: set --config.optimizer.warmup_epochs=... to at most {epochs}"
        )
    for epoch in optimizer.decay_epochs:
        if not (_finite(epoch) and epoch >= 0):
            raise UserError(
                f"config.optimizer.decay_epochs entries must be finite numbers >= 0 (got "
                f"{optimizer.decay_epochs}): set --config.optimizer.decay_epochs='(30, 60)'"
            )
    _positive(optimizer.decay_factor, "optimizer.decay_factor")
    if (
        optimizer.schedule == "step"
        and optimizer.decay_factor > 1
        and not optimizer.allow_lr_increase
    ):
        raise UserError(
            f"config.optimizer.decay_factor={optimizer.decay_factor} > 1 raises the learning "
            "rate at each of optimizer.decay_epochs: set --config.optimizer.decay_factor=... "
            "to at most 1, or --config.optimizer.allow_lr_increase=True if that is meant"
        )


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for the first invalid setting of `config`."""
    from cnnjax.data import KNOWN_DATASETS  # the data stage imports TFDS: only when needed
    from cnnjax.data.inputs import STREAMING_DATASETS
    from cnnjax.data.tasks import TASKS

    models.registry.get_spec(config.model.name)
    get_activation(config.model.activation)
    check_choice("normalization", config.model.normalization, NORMALIZATIONS)
    _fraction(config.model.dropout_rate, "model.dropout_rate")
    known = KNOWN_DATASETS + STREAMING_DATASETS
    if config.data.name not in known:
        raise UserError(f"unknown dataset {config.data.name!r}: choose one of {', '.join(known)}")
    _positive(config.data.image_size, "data.image_size")
    _positive(config.data.workers, "data.workers")
    check_choice("data task", config.data.task, TASKS)
    _positive(config.data.augment.upscale, "data.augment.upscale")
    if config.data.augment.upscale > 1 and config.data.task != "classification":
        raise UserError("config.data.augment.upscale is for image classification tasks only")
    augment = config.data.augment
    if config.data.task != "classification" and (
        augment.random_crop_padding or augment.horizontal_flip
    ):
        raise UserError(
            f"data task {config.data.task!r} takes no crop/flip augmentation: set "
            "--config.data.augment.random_crop_padding=0 and horizontal_flip=False"
        )
    task = models.registry.get_spec(config.model.name).task
    if (task == "segmentation") != (config.data.task == "segmentation"):
        raise UserError(
            f"model {config.model.name!r} is for {task} but config.data.task is "
            f"{config.data.task!r}: pick a matching model or task"
        )
    _positive(config.data.batch_size, "data.batch_size")
    _positive(config.data.eval_batch_size, "data.eval_batch_size")
    _positive(
        config.data.augment.random_crop_padding, "data.augment.random_crop_padding", allow_zero=True
    )
    _positive(config.train.epochs, "train.epochs")
    if config.train.steps is not None:
        _positive(config.train.steps, "train.steps")
    _check_optimizer(config)
    _positive(config.train.log_every_steps, "train.log_every_steps")
    _positive(config.train.eval_every_epochs, "train.eval_every_epochs")
    _positive(config.train.checkpoint_every_steps, "train.checkpoint_every_steps")
    _positive(config.train.keep_best_checkpoints, "train.keep_best_checkpoints")
    check_choice("train.compute_dtype", config.train.compute_dtype, COMPUTE_DTYPES)
    _positive(config.train.grad_accum_steps, "train.grad_accum_steps")
    if config.data.batch_size % config.train.grad_accum_steps:
        raise UserError(
            f"config.data.batch_size={config.data.batch_size} does not split into "
            f"train.grad_accum_steps={config.train.grad_accum_steps} equal micro-batches"
        )
    _fraction(config.train.ema_decay, "train.ema_decay")
    examples_per_class = config.data.train_examples_per_class
    _positive(examples_per_class, "data.train_examples_per_class", allow_zero=True)
    if config.data.name in STREAMING_DATASETS and (config.data.classes or examples_per_class):
        raise UserError("config.data.classes and train_examples_per_class are for in-memory data")
    check_choice("finetune.batch_norm", config.finetune.batch_norm, ("update", "frozen"))
    _positive(config.parallel.num_devices, "parallel.num_devices", allow_zero=True)
    check_choice("parallel.step", config.parallel.step, PARALLEL_STEPS)
    check_choice("parallel.batch_norm", config.parallel.batch_norm, ("sync", "ghost"))
