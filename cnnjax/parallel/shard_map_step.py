"""The training step written per device with `jax.shard_map`, for research that needs its own
collectives (e.g. per-device "ghost" batch norm, custom gradient all-reduces).

Each device holds a slice of the batch and a replica of the state. Two things make the result
equal to the `jax.jit` step on the whole batch:

* the replicated parameters are marked device-varying (`jax.lax.pcast(..., to="varying")`)
  before differentiation; otherwise JAX treats them as one value shared by all devices and sums
  the per-device gradients in the transpose, giving N times the gradient on N devices;
* the per-device gradients of the per-device mean loss are `pmean`-ed over `data`.

Batch norm: `sync` averages batch statistics over all devices (the same numbers as one device
on the whole batch); `ghost` normalizes each device's slice with its own statistics (as
multi-GPU PyTorch without SyncBatchNorm), and the running averages are then averaged.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import PartitionSpec as P

from cnnjax.models.layers import BATCH_NORM_AXIS
from cnnjax.parallel.mesh import DATA_AXIS
from cnnjax.train import steps
from cnnjax.train.state import TrainState

BATCH_NORM_MODES = ("sync", "ghost")


def per_device_train_step(
    state: TrainState,
    batch: steps.Batch,
    *,
    batch_norm: str = "sync",
    num_classes: int,
    label_smoothing: float = 0.0,
    compute_dtype=None,
    grad_accum_steps: int = 1,
    ema_decay: float = 0.0,
) -> tuple[TrainState, steps.Metrics]:
    """The body run on each device: local gradients, `pmean`, the same update everywhere."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm={batch_norm!r}: use one of {BATCH_NORM_MODES}")
    # Each device draws different dropout masks for its own examples.
    dropout_key = jax.random.fold_in(steps.step_dropout_key(state), jax.lax.axis_index(DATA_AXIS))
    varying = state.replace(params=jax.lax.pcast(state.params, DATA_AXIS, to="varying"))
    token = BATCH_NORM_AXIS.set(DATA_AXIS if batch_norm == "sync" else None)
    try:
        grads, logits, losses, batch_stats = steps.accumulated_gradients(
            varying,
            batch,
            dropout_key,
            micro_batches=grad_accum_steps,
            num_classes=num_classes,
            label_smoothing=label_smoothing,
            compute_dtype=compute_dtype,
        )
    finally:
        BATCH_NORM_AXIS.reset(token)
    grads = jax.lax.pmean(grads, DATA_AXIS)
    if batch_norm == "ghost":  # per-device running statistics, averaged; synced ones are equal
        batch_stats = jax.lax.pmean(batch_stats, DATA_AXIS)
    metrics = jax.lax.psum(steps.step_metrics(logits, losses, batch["label"]), DATA_AXIS)
    # After the pmean and psum every device sees the same gradients and loss: no reduction.
    metrics.update(steps.finiteness_metrics(metrics["loss_sum"], grads, state.step))
    return steps.apply_update(state, grads, batch_stats, ema_decay), metrics


def make_shard_map_train_step(mesh, **options):
    """`train_step(state, batch)` mapped over `mesh`'s `data` axis: state replicated, batch
    split on its leading axis, metrics summed over devices. Jit it (donating the state)."""
    body = functools.partial(per_device_train_step, **options)
    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()))
