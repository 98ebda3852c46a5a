"""Pure training and evaluation steps: `train_step(state, batch) -> (state, metrics)`.

No config reads, prints or Python side effects inside; static settings are bound with
`functools.partial` by the caller, which jits each step once. Metrics are returned as sums
(loss sum, correct count, example count) so that they aggregate exactly over any number of steps
and over padded evaluation batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnjax.train.state import TrainState

Batch = dict[str, jax.Array]
AUX_LOSS_WEIGHT = 0.3
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
            mutable=["batch_stats", "intermediates"],
        )
        losses = cross_entropy(
            logits, batch["label"], num_classes=num_classes, label_smoothing=label_smoothing
        )
        loss = losses.mean()
        # Auxiliary classifiers (GoogLeNet) sow their logits; weight 0.3 as in Szegedy et al.
        for aux_logits in jax.tree.leaves(updates.get("intermediates", {}).get("aux_logits", {})):
            loss += (
                AUX_LOSS_WEIGHT
                * cross_entropy(
                    aux_logits,
                    batch["label"],
                    num_classes=num_classes,
                    label_smoothing=label_smoothing,
                ).mean()
            )
        return loss, (logits, losses, updates)

    grads, (logits, losses, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    if state.batch_stats:
        state = state.replace(batch_stats=updates["batch_stats"])
    metrics = {
        "loss_sum": losses.sum(),
        "correct": (logits.argmax(-1) == batch["label"]).sum().astype(jnp.float32),
        "count": jnp.asarray(losses.size, jnp.float32),  # examples, or pixels for dense tasks
    }
    return state, metrics


def eval_step(
    state: TrainState, batch: Batch, *, num_classes: int, with_confusion: bool = False
) -> Metrics:
    """Loss and accuracy sums on `batch`, counting only examples whose `mask` is 1.

    Labels may be per example [B] or per pixel [B, H, W]; with `with_confusion`, also the
    confusion matrix [true class, predicted class] of the counted examples or pixels.
    """
    logits = state.apply_fn(_variables(state, state.params), batch["image"], train=False)
    losses = cross_entropy(logits, batch["label"], num_classes=num_classes)
    mask = jnp.broadcast_to(
        batch["mask"].reshape(-1, *([1] * (losses.ndim - 1))), losses.shape
    )  # [B] -> the shape of the labels
    predictions = logits.argmax(-1)
    metrics = {
        "loss_sum": (losses * mask).sum(),
        "correct": ((predictions == batch["label"]) * mask).sum(),
        "count": mask.sum(),
    }
    if with_confusion:
        metrics["confusion"] = (
            jnp.zeros((num_classes, num_classes), jnp.float32)
            .at[batch["label"].ravel(), predictions.ravel()]
            .add(mask.ravel())
        )
    return metrics


def add_metrics(total: Metrics, new: Metrics) -> Metrics:
    """Elementwise sum of two metric dicts (kept on device: no host sync)."""
    return jax.tree.map(jnp.add, total, new)


def zero_metrics() -> Metrics:
    """Empty metric sums."""
    return {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}


def summarize(sums: dict) -> dict[str, float]:
    """Mean loss and accuracy from metric sums; mean IoU too when a confusion matrix is there.

    Mean IoU averages, over the classes that occur or are predicted, TP / (TP + FP + FN).
    """
    count = max(float(sums["count"]), 1.0)
    summary = {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count}
    if "confusion" in sums:
        confusion = np.asarray(sums["confusion"], np.float64)
        true_positives = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - true_positives
        summary["mean_iou"] = float((true_positives[union > 0] / union[union > 0]).mean())
    return summary
