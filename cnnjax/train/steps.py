"""Pure training and evaluation steps: `train_step(state, batch) -> (state, metrics)`.

No config reads, prints or Python side effects inside; the static settings travel in one frozen,
hashable `StepOptions` bound with `functools.partial` by the caller, which jits each step once
(adding an option is one field). Metrics are returned as sums (loss sum, correct count, example
count) so that they aggregate exactly over any number of steps. Evaluation is the masked-sum
evaluator of cnnjax/train/evaluation.py.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from cnnjax.data.normalization import Normalization, model_inputs
from cnnjax.train.state import TrainState

Batch = dict[str, jax.Array]
AUX_LOSS_WEIGHT = 0.3
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What a train or evaluation step computes besides the model: hashable, so that a different
    choice is a different function for `jax.jit` (bind it with `functools.partial`).

    `compute_dtype`: "float32", or e.g. "bfloat16" for mixed precision (parameters and images
    cast for the forward and backward passes; master weights stay float32);
    `grad_accum_steps`: micro-batches per step; `ema_decay`: 0, or the decay of `ema_params`;
    `loss_scale_period`: float16 only, finite steps after which the loss scale doubles;
    `normalization`: how uint8 images become float32 inputs, on the device (the input's
    `normalization`); None when the batches' images are floats already;
    `eval_mirrored`: evaluation averages the softmax of each image [B, H, W, C] and of its
    left-right mirror (AlexNet's test-time augmentation, the 2 views of `cnnjax eval --crops=2`).
    """

    num_classes: int
    label_smoothing: float = 0.0
    compute_dtype: str = "float32"
    grad_accum_steps: int = 1
    ema_decay: float = 0.0
    loss_scale_period: int = 2000
    normalization: Normalization | None = None
    eval_mirrored: bool = False

    @property
    def dtype(self):
        """The dtype to cast to, or None for float32 (no cast)."""
        return None if self.compute_dtype == "float32" else jnp.dtype(self.compute_dtype)

    @property
    def loss_scaling(self) -> bool:
        """Dynamic loss scaling: float16's narrow range flushes small gradients to zero (and
        large ones overflow) without it; bfloat16 has float32's range and needs none."""
        return self.compute_dtype == "float16"


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy [B] against (optionally smoothed) one-hot labels."""
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def model_variables(params, batch_stats) -> dict:
    """The variables `apply` takes: params, and batch_stats when the model has any."""
    if batch_stats:
        return {"params": params, "batch_stats": batch_stats}
    return {"params": params}


def cast_floats(tree, dtype):
    """Floating-point leaves of `tree` in `dtype` (None: unchanged); integers stay as they are."""
    if dtype is None:
        return tree
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def training_loss(
    params,
    batch_stats,
    apply_fn,
    batch: Batch,
    dropout_key: jax.Array,
    options: StepOptions,
):
    """The training objective: (mean loss, (logits, per-example losses, new batch_stats)).

    Cross-entropy of the logits plus 0.3 x that of any auxiliary logits the model sows under
    `intermediates/aux_logits`, with batch norm in training mode (batch statistics) and dropout
    drawn from `dropout_key`. `train_step` differentiates exactly this function, and so does the
    gradient check (cnnjax/inspect/gradcheck.py). With `options.compute_dtype` the forward pass
    runs on a cast copy of the parameters and images.
    """
    num_classes, label_smoothing = options.num_classes, options.label_smoothing
    logits, updates = apply_fn(
        model_variables(cast_floats(params, options.dtype), batch_stats),
        cast_floats(batch["image"], options.dtype),
        train=True,
        rngs={"dropout": dropout_key},
        mutable=["batch_stats", "intermediates"],
    )
    # The softmax runs in at least float32: bfloat16 logits are widened, while float64 logits
    # (the gradient check) keep their precision.
    loss_dtype = jnp.promote_types(logits.dtype, jnp.float32)
    logits = logits.astype(loss_dtype)
    losses = cross_entropy(
        logits, batch["label"], num_classes=num_classes, label_smoothing=label_smoothing
    )
    loss = losses.mean()
    # Auxiliary classifiers (GoogLeNet) sow their logits; weight 0.3 as in Szegedy et al.
    for aux_logits in jax.tree.leaves(updates.get("intermediates", {}).get("aux_logits", {})):
        aux = cross_entropy(
            aux_logits.astype(loss_dtype),
            batch["label"],
            num_classes=num_classes,
            label_smoothing=label_smoothing,
        )
        loss += AUX_LOSS_WEIGHT * aux.mean()
    return loss, (logits, losses, updates.get("batch_stats", batch_stats))


def gradients(
    state: TrainState,
    params,
    batch_stats,
    batch: Batch,
    dropout_key: jax.Array,
    options: StepOptions,
):
    """(grads, logits, per-example losses, new batch_stats) of `training_loss` on `batch`.

    With `options.compute_dtype` (e.g. bfloat16) the forward and backward passes run in that
    dtype on a cast copy of the parameters; the gradients come back in the parameters' dtype
    (float32), so the optimizer state and the master weights stay in float32. Logits are cast
    back to float32 before the softmax.
    """
    loss_fn = functools.partial(
        training_loss,
        batch_stats=batch_stats,
        apply_fn=state.apply_fn,
        batch=batch,
        dropout_key=dropout_key,
        options=options,
    )
    if not options.loss_scaling:
        grads, (logits, losses, new_stats) = jax.grad(loss_fn, has_aux=True)(params)
        return grads, logits, losses, new_stats
    # float16: differentiate the scaled loss, so that the backward pass's small values stay
    # above float16's underflow, then unscale the (float32) gradients.
    scale = state.loss_scale["scale"]

    def scaled_loss_fn(p):
        loss, aux = loss_fn(p)
        return loss * scale, aux

    grads, (logits, losses, new_stats) = jax.grad(scaled_loss_fn, has_aux=True)(params)
    return jax.tree.map(lambda g: g / scale, grads), logits, losses, new_stats


def accumulated_gradients(state: TrainState, batch: Batch, dropout_key, options: StepOptions):
    """`gradients` over `options.grad_accum_steps` (k) equal slices of `batch`, averaged: the
    same update as one step on the whole batch for models without batch statistics, in 1/k of
    the activation memory. Batch statistics are updated slice after slice (as k smaller steps
    would), and each slice draws its own dropout key. uint8 images are normalized first
    (`options.normalization`)."""
    batch = {**batch, "image": model_inputs(batch["image"], options.normalization)}
    micro_batches = options.grad_accum_steps
    if micro_batches == 1:
        return gradients(state, state.params, state.batch_stats, batch, dropout_key, options)
    size = batch["label"].shape[0]
    if size % micro_batches:
        raise ValueError(f"batch of {size} does not split into {micro_batches} micro-batches")
    slices = jax.tree.map(
        lambda x: x.reshape(micro_batches, size // micro_batches, *x.shape[1:]), batch
    )

    def one_slice(carry, inputs):
        grad_sum, batch_stats = carry
        micro, index = inputs
        key = jax.random.fold_in(dropout_key, index)
        grads, logits, losses, batch_stats = gradients(
            state, state.params, batch_stats, micro, key, options
        )
        return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats), (logits, losses)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grad_sum, batch_stats), (logits, losses) = jax.lax.scan(
        one_slice, (zeros, state.batch_stats), (slices, jnp.arange(micro_batches))
    )
    grads = jax.tree.map(lambda g: g / micro_batches, grad_sum)
    merge = lambda x: x.reshape(size, *x.shape[2:])  # noqa: E731
    return grads, merge(logits), merge(losses), batch_stats


def step_metrics(logits, losses, labels) -> Metrics:
    return {
        "loss_sum": losses.sum(),
        "correct": (logits.argmax(-1) == labels).sum().astype(jnp.float32),
        "count": jnp.asarray(losses.size, jnp.float32),  # examples, or pixels for dense tasks
    }


# "No non-finite step yet": a float32 step count far beyond any run (exact up to 2**24 steps).
NO_STEP = float(2**31)
# Metric sums combined by minimum instead of addition.
MIN_METRICS = ("first_nonfinite_step",)


def all_finite(tree) -> jax.Array:
    """True when every element of every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def finiteness_metrics(
    loss_sum: jax.Array, grads, step: jax.Array, loss_scaling: bool = False
) -> Metrics:
    """Whether this step's loss and gradient norm are finite, as metric sums: the count of
    non-finite steps and the first such step (1-based, NO_STEP when none), and the steps that
    loss scaling skipped for overflowing gradients. The loop reads them at its log steps and
    stops a diverged run before it saves anything; with loss scaling, overflowing gradients are
    skipped instead, and only a non-finite loss means divergence."""
    finite = jnp.isfinite(loss_sum)
    if loss_scaling:
        skipped = ~all_finite(grads)
    else:
        finite &= jnp.isfinite(optax.tree.norm(grads))
        skipped = jnp.zeros((), bool)
    return {
        "nonfinite_steps": jnp.where(finite, 0.0, 1.0).astype(jnp.float32),
        "first_nonfinite_step": jnp.where(finite, NO_STEP, step + 1).astype(jnp.float32),
        "skipped_steps": skipped.astype(jnp.float32),
    }


def next_loss_scale(loss_scale: dict, finite: jax.Array, period: int) -> dict:
    """Dynamic loss scaling's rule: halve the scale at an overflow (never below 1), double it
    after `period` finite steps in a row."""
    good_steps = jnp.where(finite, loss_scale["good_steps"] + 1, 0)
    grow = good_steps >= period
    scale = loss_scale["scale"]
    scale = jnp.where(finite, jnp.where(grow, scale * 2.0, scale), jnp.maximum(scale / 2.0, 1.0))
    return {"scale": scale, "good_steps": jnp.where(grow, 0, good_steps).astype(jnp.int32)}


def apply_update(state: TrainState, grads, batch_stats, options: StepOptions) -> TrainState:
    """The optimizer step, the new batch statistics and the EMA of the weights; with loss
    scaling, a step whose gradients overflowed changes nothing but the step and the scale."""
    updated = state.apply_gradients(grads=grads)
    if updated.batch_stats:
        updated = updated.replace(batch_stats=batch_stats)
    if options.ema_decay:
        updated = updated.replace(
            ema_params=optax.incremental_update(
                updated.params, updated.ema_params, 1.0 - options.ema_decay
            )
        )
    if not options.loss_scaling:
        return updated
    finite = all_finite(grads)
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    return kept.replace(
        step=updated.step,
        loss_scale=next_loss_scale(state.loss_scale, finite, options.loss_scale_period),
    )


def step_dropout_key(state: TrainState) -> jax.Array:
    """Dropout key of this step: a function of the run's key and the step only (resumable)."""
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    return jax.random.fold_in(step_key, 0)


def train_step(state: TrainState, batch: Batch, options: StepOptions) -> tuple[TrainState, Metrics]:
    """One gradient step on `batch` {'image': [B, H, W, C], 'label': [B]}."""
    grads, logits, losses, batch_stats = accumulated_gradients(
        state, batch, step_dropout_key(state), options
    )
    metrics = step_metrics(logits, losses, batch["label"])
    metrics.update(finiteness_metrics(metrics["loss_sum"], grads, state.step, options.loss_scaling))
    return apply_update(state, grads, batch_stats, options), metrics


def add_metrics(total: Metrics, new: Metrics) -> Metrics:
    """Elementwise sum of two metric dicts, the minimum for MIN_METRICS (kept on device: no
    host sync)."""
    return {
        key: (jnp.minimum if key in MIN_METRICS else jnp.add)(total[key], new[key]) for key in total
    }


def zero_metrics() -> Metrics:
    """Empty metric sums of the train step."""
    sums = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}
    sums["nonfinite_steps"] = jnp.zeros((), jnp.float32)
    sums["first_nonfinite_step"] = jnp.full((), NO_STEP, jnp.float32)
    sums["skipped_steps"] = jnp.zeros((), jnp.float32)
    return sums


def summarize(sums: dict) -> dict[str, float]:
    """Mean loss and accuracy of the train step's metric sums (on the host), and the steps that
    float16 loss scaling skipped, when there were any."""
    count = max(float(sums["count"]), 1.0)
    summary = {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}
    if sums.get("skipped_steps"):
        summary["skipped_steps"] = int(sums["skipped_steps"])
    return summary
