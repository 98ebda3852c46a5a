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
multi-GPU PyTorch without SyncBatchNorm), and the running averages are then averaged. Which one
a model computes is its own field, `layer_options.batch_norm_axis` (DATA_AXIS for sync, None for
ghost: `cnnjax.train.run.layer_options` sets it from the config); the step checks that the model
it is given agrees with `batch_norm`.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import PartitionSpec as P

from cnnjax.parallel.mesh import DATA_AXIS
from cnnjax.train import steps
from cnnjax.train.state import TrainState

BATCH_NORM_MODES = ("sync", "ghost")


def check_batch_norm_axis(state: TrainState, batch_norm: str) -> None:
    """Raises ValueError when the model of `state` (a model with batch statistics) does not
    average them as `batch_norm` says: over DATA_AXIS for sync, per device for ghost."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm={batch_norm!r}: use one of {BATCH_NORM_MODES}")
    options = getattr(getattr(state.apply_fn, "__self__", None), "layer_options", None)
    if not state.batch_stats or options is None:
        return
    expected = DATA_AXIS if batch_norm == "sync" else None
    if options.batch_norm_axis != expected:
        raise ValueError(
            f"the shard_map step with batch_norm={batch_norm!r} needs a model built with "
            f"LayerOptions(batch_norm_axis={expected!r}), not {options.batch_norm_axis!r} "
            "(cnnjax.train.run.layer_options gives the config's)"
        )


def per_device_train_step(
    state: TrainState,
    batch: steps.Batch,
    *,
    options: steps.StepOptions,
    batch_norm: str = "sync",
) -> tuple[TrainState, steps.Metrics]:
    """The body run on each device: local gradients, `pmean`, the same update everywhere."""
    check_batch_norm_axis(state, batch_norm)
    # Each device draws different dropout masks for its own examples.
    dropout_key = jax.random.fold_in(steps.step_dropout_key(state), jax.lax.axis_index(DATA_AXIS))
    varying = state.replace(params=jax.lax.pcast(state.params, DATA_AXIS, to="varying"))
    grads, logits, losses, batch_stats = steps.accumulated_gradients(
        varying, batch, dropout_key, options
    )
    grads = jax.lax.pmean(grads, DATA_AXIS)
    if batch_norm == "ghost":  # per-device running statistics, averaged; synced ones are equal
        batch_stats = jax.lax.pmean(batch_stats, DATA_AXIS)
    metrics = jax.lax.psum(steps.step_metrics(logits, losses, batch["label"]), DATA_AXIS)
    # After the pmean and psum every device sees the same gradients and loss: no reduction.
    metrics.update(
        steps.finiteness_metrics(metrics["loss_sum"], grads, state.step, options.loss_scaling)
    )
    return steps.apply_update(state, grads, batch_stats, options), metrics


def make_shard_map_train_step(mesh, *, options: steps.StepOptions, batch_norm: str = "sync"):
    """`train_step(state, batch)` mapped over `mesh`'s `data` axis: state replicated, batch
    split on its leading axis, metrics summed over devices. Jit it (donating the state)."""
    body = functools.partial(per_device_train_step, options=options, batch_norm=batch_norm)
    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()))
