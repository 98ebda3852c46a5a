"""Pure training and evaluation steps: `train_step(state, batch) -> (state, metrics)`.

No config reads, prints or Python side effects inside; static settings are bound with
`functools.partial` by the caller, which jits each step once. Metrics are returned as sums
(loss sum, correct count, example count) so that they aggregate exactly over any number of steps
and over padded evaluation batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cnnjax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy [B] against (optionally smoothed) one-hot labels."""
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def _variables(state: TrainState, params) -> dict:
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def train_step(
    state: TrainState, batch: Batch, *, num_classes: int, label_smoothing: float = 0.0
) -> tuple[TrainState, Metrics]:
    """One gradient step on `batch` {'image': [B, H, W, C], 'label': [B]}."""
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    dropout_key = jax.random.fold_in(step_key, 0)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            _variables(state, params),
            batch["image"],
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        losses = cross_entropy(
            logits, batch["label"], num_classes=num_classes, label_smoothing=label_smoothing
        )
        return losses.mean(), (logits, losses, updates)

    grads, (logits, losses, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    if state.batch_stats:
        state = state.replace(batch_stats=updates["batch_stats"])
    metrics = {
        "loss_sum": losses.sum(),
        "correct": (logits.argmax(-1) == batch["label"]).sum().astype(jnp.float32),
        "count": jnp.asarray(losses.shape[0], jnp.float32),
    }
    return state, metrics


def eval_step(state: TrainState, batch: Batch, *, num_classes: int) -> Metrics:
    """Loss and accuracy sums on `batch`, counting only examples whose `mask` is 1."""
    logits = state.apply_fn(_variables(state, state.params), batch["image"], train=False)
    losses = cross_entropy(logits, batch["label"], num_classes=num_classes)
    mask = batch["mask"]
    return {
        "loss_sum": (losses * mask).sum(),
        "correct": ((logits.argmax(-1) == batch["label"]) * mask).sum(),
        "count": mask.sum(),
    }


def add_metrics(total: Metrics, new: Metrics) -> Metrics:
    """Elementwise sum of two metric dicts (kept on device: no host sync)."""
    return jax.tree.map(jnp.add, total, new)


def zero_metrics() -> Metrics:
    """Empty metric sums."""
    return {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}


def summarize(sums: dict) -> dict[str, float]:
    """Mean loss and accuracy from metric sums (host floats)."""
    count = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}
