"""The pieces of a training run that follow from its config: the model, the run's length, the
optimizer, the step options and the jitted steps over the device mesh, and the evaluation of
the test split. `cnnjax.train.loop` puts them together; `cnnjax.train.trained_run` rebuilds
them to evaluate or inspect a finished run.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable

import jax
import ml_collections
import optax

from cnnjax import models, parallel
from cnnjax.data.inputs import TrainingData
from cnnjax.data.normalization import Normalization
from cnnjax.errors import UserError
from cnnjax.models.layers import LayerOptions
from cnnjax.train import evaluation, finetune, steps
from cnnjax.train.optim import make_optimizer
from cnnjax.train.steps import StepOptions

# The training split's statistics (size, classes, normalization), written by training so that
# evaluating the run later does not load the training split again.
TRAIN_STATS_FILE = "train_split_stats.json"


def fast_paths_for_backend(fast_paths: bool | None, backend: str | None = None) -> bool:
    """`model.fast_paths` resolved: None (the default) means on the CPU backend only, where the
    block convolutions and reshape pooling were measured faster; True or False as given."""
    if fast_paths is None:
        return (backend or jax.default_backend()) == "cpu"
    return bool(fast_paths)


def resolve_backend_choices(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with the choices left to the backend made (`model.fast_paths`): what
    a run computes with and records in config.json, so that a resume elsewhere is checked."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.model.fast_paths = fast_paths_for_backend(config.model.get("fast_paths"))
    return config


def layer_options(config: ml_collections.ConfigDict) -> LayerOptions:
    """How the layers of `config`'s model compute: the fast forms (`model.fast_paths`), batch
    statistics over the devices of a shard_map step with synced batch norm, and batch norm in
    inference mode while fine-tuning with `finetune.batch_norm="frozen"`."""
    synced = config.parallel.step == "shard_map" and config.parallel.batch_norm == "sync"
    fast = fast_paths_for_backend(config.model.get("fast_paths"))
    return LayerOptions(
        block_convolutions=fast,
        reshape_pooling=fast,
        batch_norm_axis=parallel.DATA_AXIS if synced else None,
        frozen_batch_norm=config.finetune.batch_norm == "frozen",
    )


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The model of `config.model` for `num_classes` classes, with `layer_options(config)`."""
    return models.create(
        config.model.name,
        num_classes=num_classes,
        activation=config.model.activation,
        normalization=config.model.normalization,
        dropout_rate=config.model.dropout_rate,
        layer_options=layer_options(config),
        **config.model.options.to_dict(),
    )


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The run's length in steps."""

    steps_per_epoch: int
    total_steps: int

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def end_of_epoch(self, done: int) -> bool:
        return done % self.steps_per_epoch == 0 or done == self.total_steps


def schedule_of(config: ml_collections.ConfigDict, num_train: int) -> Schedule:
    """Steps per epoch (whole batches of the training split) and in all."""
    steps_per_epoch = num_train // config.data.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"the training split has {num_train} examples, fewer than one batch of "
            f"{config.data.batch_size}: lower config.data.batch_size"
        )
    total = config.train.steps or config.train.epochs * steps_per_epoch
    return Schedule(steps_per_epoch, total)


def make_run_optimizer(
    config: ml_collections.ConfigDict, schedule: Schedule
) -> optax.GradientTransformation:
    """`config.optimizer` over the run's schedule, with fine-tuning's frozen and scaled groups."""
    tx = make_optimizer(
        config.optimizer,
        steps_per_epoch=schedule.steps_per_epoch,
        total_steps=schedule.total_steps,
    )
    return finetune.wrap_optimizer(tx, config.finetune)


def step_options(
    config: ml_collections.ConfigDict, num_classes: int, normalization: Normalization | None = None
) -> StepOptions:
    """The train and evaluation steps' options of `config`, with the input's `normalization`
    of its uint8 images (None: the input's images are floats already)."""
    return StepOptions(
        num_classes=num_classes,
        label_smoothing=config.optimizer.label_smoothing,
        compute_dtype=config.train.compute_dtype,
        grad_accum_steps=config.train.grad_accum_steps,
        ema_decay=config.train.ema_decay,
        loss_scale_period=config.train.get("loss_scale_period", 2000),
        normalization=normalization,
        eval_mirrored=config.train.get("eval_mirrored", False),
    )


def state_extras(config: ml_collections.ConfigDict) -> dict:
    """What the TrainState of `config` keeps besides the weights and the optimizer's state:
    keyword arguments of `create_train_state` and `abstract_train_state`."""
    float16 = config.train.compute_dtype == "float16"
    return {
        "ema": config.train.ema_decay > 0,
        "loss_scale": config.train.get("loss_scale_initial", 2.0**15) if float16 else None,
    }


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
    """The jitted steps: `train(state, batch) -> (state, metrics)` (donating the state),
    `evaluate(state, batch) -> sums`, and `evaluate_ema` of the weights' EMA (or None)."""

    train: Callable
    evaluate: Callable
    evaluate_ema: Callable | None


def make_steps(
    options: StepOptions,
    *,
    mesh=None,
    parallel_step: str = "jit",
    batch_norm: str = "sync",
) -> CompiledSteps:
    """The jitted steps of `options`.

    With a `mesh`, batches are split over its `data` axis and the state is replicated; the train
    step is either `jax.jit` with those shardings (XLA inserts the collectives) or the explicit
    per-device `shard_map` step (cnnjax/train/shard_map_step.py).
    """
    shardings = {}
    if mesh is not None:
        state_sharding, data_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        shardings = dict(
            in_shardings=(state_sharding, data_sharding),
            out_shardings=(state_sharding, state_sharding),
        )
    if parallel_step == "shard_map":
        from cnnjax.train.shard_map_step import make_shard_map_train_step

        step = make_shard_map_train_step(
            mesh or parallel.data_mesh(1), options=options, batch_norm=batch_norm
        )
    else:
        step = functools.partial(steps.train_step, options=options)
    train = jax.jit(step, donate_argnums=0, **shardings)

    def make_eval(use_ema: bool):
        return jit_evaluation(
            functools.partial(evaluation.eval_step, options=options, use_ema=use_ema), mesh
        )

    return CompiledSteps(train, make_eval(False), make_eval(True) if options.ema_decay else None)


def jit_evaluation(step: Callable, mesh=None) -> Callable:
    """`step(state, batch) -> sums` jitted: with a `mesh`, the state replicated, the batch split
    over its `data` axis and the sums replicated (`make_steps`'s evaluation, and multi-crop's)."""
    if mesh is None:
        return jax.jit(step)
    return jax.jit(
        step,
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
        out_shardings=parallel.replicated(mesh),
    )


def evaluate_test(
    compiled: CompiledSteps, state, data: TrainingData, mesh, *, with_mean_iou: bool
) -> dict[str, float]:
    """Loss and accuracy (mean IoU for dense tasks; `ema_` ones for the EMA weights) over every
    example of the evaluation split."""
    # On many hosts each process decodes only its own rows of each evaluation batch.
    sums_of = functools.partial(
        evaluation.evaluation_sums,
        batches=data.eval_batches,
        mesh=mesh,
        batch_size=getattr(data, "eval_batch_size", None),
    )
    sums = sums_of(compiled.evaluate, state)
    results = evaluation.loss_and_accuracy(sums, with_mean_iou=with_mean_iou)
    if compiled.evaluate_ema is not None:
        ema = sums_of(compiled.evaluate_ema, state)
        ema_results = evaluation.loss_and_accuracy(ema, with_mean_iou=with_mean_iou)
        results.update({f"ema_{k}": v for k, v in ema_results.items()})
    return results


def train_device_batches(data: TrainingData, start_step: int, batch_size: int, mesh):
    """The training batches from `start_step` on, on the devices of `mesh`; on many hosts each
    process reads only its own rows of each global batch of `batch_size`."""
    return evaluation.device_batches(
        functools.partial(data.train_batches, start_step), batch_size, mesh
    )


def examples_decoded_per_process(data: TrainingData) -> list[dict[str, int]] | None:
    """The examples each process read (decoded) for the devices, per split, in process order:
    [{"train": n, "eval": m}, ...] (None for an input that does not count them). On many
    processes every one of them must call it at the same point."""
    counts = getattr(data, "examples_decoded", None)
    if counts is None:
        return None
    gathered = parallel.gather_from_processes([counts["train"], counts["eval"]])
    return [{"train": train, "eval": evaluated} for train, evaluated in gathered]
