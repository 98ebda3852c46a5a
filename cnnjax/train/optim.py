"""Optax optimizers and learning-rate schedules built from `config.optimizer`, and the checks
of that section."""

from __future__ import annotations

import jax
import ml_collections
import optax

from cnnjax.config_values import check_choice, check_fraction, check_positive, is_finite
from cnnjax.errors import UserError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")


def validate_optimizer_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for the first invalid setting of `config.optimizer`; `config` is the
    whole run config, as the warm-up is checked against the run's length (`config.train`)."""
    optimizer = config.optimizer
    check_choice("optimizer", optimizer.name, OPTIMIZERS)
    check_choice("schedule", optimizer.schedule, SCHEDULES)
    check_positive(optimizer.learning_rate, "optimizer.learning_rate")
    check_fraction(optimizer.momentum, "optimizer.momentum")
    check_positive(optimizer.weight_decay, "optimizer.weight_decay", allow_zero=True)
    check_positive(optimizer.grad_clip_norm, "optimizer.grad_clip_norm", allow_zero=True)
    check_fraction(optimizer.label_smoothing, "optimizer.label_smoothing")
    check_positive(optimizer.warmup_epochs, "optimizer.warmup_epochs", allow_zero=True)
    epochs = config.train.epochs
    # With train.steps set, the run's length in epochs is only known once the data is loaded.
    if config.train.steps is None and optimizer.warmup_epochs > epochs:
        raise UserError(
            f"config.optimizer.warmup_epochs={optimizer.warmup_epochs} is longer than the run "
            f"(config.train.epochs={epochs}, train.steps unset), so the learning rate never "
            f"reaches its peak: set config.optimizer.warmup_epochs=... to at most {epochs}"
        )
    for epoch in optimizer.decay_epochs:
        if not (is_finite(epoch) and epoch >= 0):
            raise UserError(
                f"config.optimizer.decay_epochs entries must be finite numbers >= 0 (got "
                f"{optimizer.decay_epochs}): set config.optimizer.decay_epochs='(30, 60)'"
            )
    check_positive(optimizer.decay_factor, "optimizer.decay_factor")
    if (
        optimizer.schedule == "step"
        and optimizer.decay_factor > 1
        and not optimizer.allow_lr_increase
    ):
        raise UserError(
            f"config.optimizer.decay_factor={optimizer.decay_factor} > 1 raises the learning "
            "rate at each of optimizer.decay_epochs: set config.optimizer.decay_factor=... "
            "to at most 1, or config.optimizer.allow_lr_increase=True if that is meant"
        )


def make_schedule(
    config: ml_collections.ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The learning rate as a function of the step, peaking at `config.learning_rate`."""
    peak = config.learning_rate
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "constant":
        schedule = optax.constant_schedule(peak)
        if warmup_steps:
            warmup = optax.linear_schedule(0.0, peak, warmup_steps)
            schedule = optax.join_schedules([warmup, schedule], [warmup_steps])
        return schedule
    if config.schedule in ("cosine", "warmup_cosine"):
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup_steps else peak,
            peak_value=peak,
            warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1),
        )
    if config.schedule == "step":
        boundaries = {int(e * steps_per_epoch): config.decay_factor for e in config.decay_epochs}
        return optax.piecewise_constant_schedule(peak, boundaries)
    raise UserError(f"unknown schedule {config.schedule!r}: choose one of {', '.join(SCHEDULES)}")


def decay_mask(params) -> object:
    """True for parameters that weight decay applies to: kernels, never biases or norm scales.

    Biases and normalization scales/offsets are the 1-D leaves; decaying them only hurts
    (Goyal et al. 2017, and timm / big_vision defaults).
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    config: ml_collections.ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
    """The optimizer named by `config.name`, with schedule, weight decay and clipping."""
    schedule = make_schedule(config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    name = config.name
    if name == "sgd":
        base = optax.sgd(schedule)
    elif name in ("momentum", "nesterov"):
        base = optax.sgd(schedule, momentum=config.momentum, nesterov=name == "nesterov")
    elif name == "adam":
        base = optax.adam(schedule)
    elif name == "adamw":
        # Decoupled decay (Loshchilov & Hutter), scaled by the schedule as in the paper.
        base = optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    elif name == "rmsprop":
        base = optax.rmsprop(schedule, momentum=config.momentum)
    else:
        raise UserError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    chain = []
    if config.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.weight_decay > 0 and name != "adamw":
        # Coupled decay: adds weight_decay * w to the gradient, i.e. L2 regularization of the loss.
        chain.append(optax.add_decayed_weights(config.weight_decay, mask=decay_mask))
    return optax.chain(*chain, base)
