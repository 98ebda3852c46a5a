"""A training run's pieces, built from its config: the model, the jitted steps over the device
mesh, the input, the train state and the checkpoints (`Run`), and full-split evaluation.

`cnnjax.train.loop` drives a `Run` through its steps; `cnnjax.train.trained_run` rebuilds one
from a workdir to evaluate or inspect it.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections

from cnnjax import models, parallel
from cnnjax.config_checks import validate_config
from cnnjax.data.inputs import make_input
from cnnjax.errors import UserError
from cnnjax.train import finetune, steps
from cnnjax.train.checkpoints import RunCheckpoints, model_signature
from cnnjax.train.optim import make_optimizer
from cnnjax.train.state import TrainState, create_train_state


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The model of `config.model` for `num_classes` classes."""
    return models.create(
        config.model.name,
        num_classes=num_classes,
        activation=config.model.activation,
        normalization=config.model.normalization,
        dropout_rate=config.model.dropout_rate,
        **config.model.options.to_dict(),
    )


def make_steps(
    num_classes: int,
    label_smoothing: float,
    with_confusion: bool = False,
    *,
    mesh=None,
    parallel_step: str = "jit",
    batch_norm: str = "sync",
    compute_dtype: str = "float32",
    grad_accum_steps: int = 1,
    ema_decay: float = 0.0,
    frozen_batch_norm: bool = False,
):
    """The jitted train and eval steps; the train step donates the state it replaces.

    With a `mesh`, batches are split over its `data` axis and the state is replicated; the train
    step is either `jax.jit` with those shardings (XLA inserts the collectives) or the explicit
    per-device `shard_map` step (cnnjax/parallel/shard_map_step.py). Returns (train, eval,
    eval of the weights' EMA or None).
    """
    dtype = None if compute_dtype == "float32" else jnp.dtype(compute_dtype)
    options = dict(
        num_classes=num_classes,
        label_smoothing=label_smoothing,
        compute_dtype=dtype,
        grad_accum_steps=grad_accum_steps,
        ema_decay=ema_decay,
    )
    shardings = {}
    if mesh is not None:
        state_sharding, data_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        shardings = dict(
            in_shardings=(state_sharding, data_sharding),
            out_shardings=(state_sharding, state_sharding),
        )
    if parallel_step == "shard_map":
        from cnnjax.parallel.shard_map_step import make_shard_map_train_step

        step = make_shard_map_train_step(
            mesh or parallel.data_mesh(1), batch_norm=batch_norm, **options
        )
    else:
        step = functools.partial(steps.train_step, **options)
    if frozen_batch_norm:  # fine-tuning: batch norm in inference mode inside the train step
        step = finetune.with_frozen_batch_norm(step)
    train = jax.jit(step, donate_argnums=0, **shardings)

    def make_eval(use_ema: bool):
        fn = functools.partial(
            steps.eval_step,
            num_classes=num_classes,
            with_confusion=with_confusion,
            compute_dtype=dtype,
            use_ema=use_ema,
        )
        if mesh is None:
            return jax.jit(fn)
        return jax.jit(
            fn, in_shardings=shardings["in_shardings"], out_shardings=parallel.replicated(mesh)
        )

    return train, make_eval(False), make_eval(True) if ema_decay else None


def device_prefetch(batches: Iterator[dict], size: int = 2, mesh=None) -> Iterator[dict]:
    """Keeps `size` batches in flight to the devices (split over `mesh` when given);
    transfers are asynchronous."""
    queue = collections.deque()
    for batch in batches:
        queue.append(
            parallel.shard_batch(batch, mesh) if mesh is not None else jax.device_put(batch)
        )
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def evaluate(eval_fn, state: TrainState, batches: Iterator[dict], mesh=None) -> dict[str, float]:
    """Loss and accuracy over every example of `batches` (padding masked out)."""
    sums = None
    for batch in device_prefetch(batches, mesh=mesh):
        metrics = eval_fn(state, batch)
        sums = metrics if sums is None else steps.add_metrics(sums, metrics)
    return steps.summarize(jax.device_get(sums))


class Run:
    """One training run in one workdir: set up, resume, train, evaluate, write results."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, read_only=False):
        validate_config(config)
        self.config, self.workdir = config, workdir
        cfg = config.data
        self.input = make_input(config)
        self.steps_per_epoch = self.input.num_train // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the training split has {self.input.num_train} examples, fewer than "
                f"one batch of {cfg.batch_size}: lower --config.data.batch_size"
            )
        self.total_steps = config.train.steps or config.train.epochs * self.steps_per_epoch

        num_classes = self.input.num_classes
        self.model = build_model(config, num_classes)
        tx = finetune.wrap_optimizer(
            make_optimizer(
                config.optimizer,
                steps_per_epoch=self.steps_per_epoch,
                total_steps=self.total_steps,
            ),
            config.finetune,
        )
        self.input_shape = self.input.input_shape
        self.mesh = parallel.data_mesh(config.parallel.num_devices)
        parallel.check_batch_size(cfg.batch_size, self.mesh)
        parallel.check_batch_size(cfg.eval_batch_size, self.mesh, "data.eval_batch_size")
        ema_decay = config.train.ema_decay
        self.state = parallel.replicate(
            create_train_state(
                self.model, tx, input_shape=self.input_shape, seed=config.seed, ema=ema_decay > 0
            ),
            self.mesh,
        )
        self.signature = model_signature(config.model.name, self.state.params)
        self.train_fn, self.eval_fn, self.eval_ema_fn = make_steps(
            num_classes,
            config.optimizer.label_smoothing,
            with_confusion=cfg.task == "segmentation",
            mesh=self.mesh,
            parallel_step=config.parallel.step,
            batch_norm=config.parallel.batch_norm,
            compute_dtype=config.train.compute_dtype,
            grad_accum_steps=config.train.grad_accum_steps,
            ema_decay=ema_decay,
            frozen_batch_norm=config.finetune.batch_norm == "frozen",
        )
        # Every process saves its part of each checkpoint; only the first writes files.
        self.is_main = jax.process_index() == 0
        self.checkpoints = RunCheckpoints(
            workdir, keep_best=config.train.keep_best_checkpoints, read_only=read_only
        )

    def restore(self) -> dict:
        """Resumes from the latest checkpoint if any; returns its record ({} for a new run)."""
        step = self.checkpoints.latest_step()
        if step is None:
            return {}
        # The target carries this run's shardings: a checkpoint saved on any number of devices
        # is restored replicated onto this mesh.
        abstract = parallel.with_sharding(
            jax.eval_shape(lambda s: s, self.state), parallel.replicated(self.mesh)
        )
        self.state, record = self.checkpoints.restore(step, abstract, self.signature)
        return record

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def batches(self, start_step: int) -> Iterator[dict]:
        return self.input.train_batches(start_step)

    def evaluate_test(self) -> dict[str, float]:
        results = evaluate(self.eval_fn, self.state, self.input.eval_batches(), self.mesh)
        if self.eval_ema_fn is not None:
            ema = evaluate(self.eval_ema_fn, self.state, self.input.eval_batches(), self.mesh)
            results.update({f"ema_{k}": v for k, v in ema.items()})
        return results
