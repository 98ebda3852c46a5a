"""A finished (or interrupted) run read back from its workdir, for evaluation and inspection.

`load_trained_run(workdir, checkpoint="best")` rebuilds the run's model from the `config.json`
it wrote, its evaluation input (normalized with the training split's statistics, read from the
workdir: the training split is not loaded) and its mesh, and restores one of its checkpoints:
the best by test accuracy, the latest, or a step number. Nothing in the workdir is changed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from cnnjax import parallel
from cnnjax.config_base import get_base_config
from cnnjax.data.inputs import RunInput, TrainingSplitStats, make_input
from cnnjax.errors import UserError
from cnnjax.files import read_text, resolve
from cnnjax.train.checkpoints import RunCheckpoints, model_signature
from cnnjax.train.config_checks import validate_config
from cnnjax.train.evaluation import (
    evaluation_sums,
    map_images,
    multi_view_eval_step,
    summarize_evaluation,
)
from cnnjax.train.run import (
    TRAIN_STATS_FILE,
    CompiledSteps,
    build_model,
    jit_evaluation,
    make_run_optimizer,
    make_steps,
    schedule_of,
    state_extras,
    step_options,
)
from cnnjax.train.state import TrainState, abstract_train_state, init_variables
from cnnjax.train.steps import StepOptions

CONFIG_FILE = "config.json"


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was trained with; keys added to the framework since then
    take their defaults (so old workdirs stay readable)."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        text = read_text(path)
        saved = None if text is None else json.loads(text)
    except Exception as error:  # noqa: BLE001 (an object store's errors are not all OSErrors)
        raise UserError(f"cannot read {path} ({type(error).__name__}: {error})") from None
    if saved is None:
        raise UserError(
            f"{workdir} holds no {CONFIG_FILE}: give the --workdir of a `cnnjax train` run"
        )
    config = ml_collections.ConfigDict(saved)
    _add_missing(config, get_base_config())
    return config


def _add_missing(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
    for key, value in defaults.items():
        if key not in config:
            config[key] = value
        elif isinstance(value, ml_collections.ConfigDict) and isinstance(
            config[key], ml_collections.ConfigDict
        ):
            _add_missing(config[key], value)


@dataclasses.dataclass
class TrainedRun:
    """A run restored from a checkpoint: its config, model, evaluation input and mesh, the
    state holding the checkpoint's parameters, and the step it was saved at."""

    config: ml_collections.ConfigDict
    workdir: str
    step: int
    state: TrainState
    model: nn.Module
    input: RunInput
    mesh: jax.sharding.Mesh

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input.input_shape

    @functools.cached_property
    def options(self) -> StepOptions:
        """The options of the run's evaluation step (its normalization, compute dtype...)."""
        return step_options(self.config, self.input.num_classes, self.input.normalization)

    @functools.cached_property
    def compiled_steps(self) -> CompiledSteps:
        """The run's jitted steps, made once: evaluations of transformed images of one shape
        (`evaluation_sums(transform=...)`) reuse one compiled evaluation."""
        return make_steps(self.options, mesh=self.mesh, parallel_step="jit")

    @functools.cached_property
    def _multi_view_steps(self) -> dict[bool, Callable]:
        fn = functools.partial(multi_view_eval_step, options=self.options)
        return {
            ema: jit_evaluation(functools.partial(fn, use_ema=ema), self.mesh)
            for ema in (False, True)
        }

    def evaluation_sums(
        self,
        *,
        use_ema: bool = False,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> dict:
        """The evaluator's sums (the training loop's) over every example of the evaluation
        split, on the host; `use_ema` evaluates the moving average of the weights.
        `transform` (uint8 images [B, ...] -> uint8 of the same shape) is applied to the images
        of every batch first, e.g. a perturbation of cnnjax/data/perturbations.py."""
        compiled = self.compiled_steps
        if use_ema and compiled.evaluate_ema is None:
            raise UserError("this run kept no moving average of its weights (train.ema_decay=0)")
        step = compiled.evaluate_ema if use_ema else compiled.evaluate
        batches = self.input.eval_batches
        return self._sums(step, batches if transform is None else map_images(batches, transform))

    def multi_view_sums(
        self, view_batches: Callable[..., Iterator[dict]], *, use_ema: bool = False
    ) -> dict:
        """The evaluator's sums for the softmax averaged over views (multi-crop testing):
        `view_batches(rows=None)` yields the evaluation split as {'image' [B, V, H, W, C],
        'label' [B], 'mask' [B]} (cnnjax/inspect/multicrop.py); one compilation per view
        shape."""
        if use_ema and not self.config.train.ema_decay:
            raise UserError("this run kept no moving average of its weights (train.ema_decay=0)")
        return self._sums(self._multi_view_steps[bool(use_ema)], view_batches)

    def _sums(self, step: Callable, batches: Callable[..., Iterator[dict]]) -> dict:
        try:
            return evaluation_sums(
                step, self.state, batches, self.mesh, batch_size=self.input.eval_batch_size
            )
        except ValueError:
            split = self.config.data.eval_split
            raise UserError(f"split {split!r} has no examples: check the split") from None

    def evaluate(self, *, use_ema: bool = False) -> dict:
        """Top-1 and top-k accuracy, loss, per-class accuracy, calibration (ECE) and the
        confusion matrix over the evaluation split (`summarize_evaluation`)."""
        return summarize_evaluation(
            self.evaluation_sums(use_ema=use_ema),
            with_mean_iou=self.config.data.task == "segmentation",
        )

    @functools.cached_property
    def initial_params(self) -> dict:
        """The parameters the run started from (its seed's initialization)."""
        return init_variables(self.model, input_shape=self.input_shape, seed=self.config.seed)[
            "params"
        ]


def _read_train_stats(workdir: str) -> TrainingSplitStats | None:
    text = read_text(os.path.join(workdir, TRAIN_STATS_FILE))
    if text is None:
        return None  # a run of an earlier cnnjax: the training split gives them again
    return TrainingSplitStats.from_json(json.loads(text))


def load_trained_run(
    workdir: str, checkpoint: str = "best", *, config: ml_collections.ConfigDict | None = None
) -> TrainedRun:
    """Restores checkpoint `checkpoint` (best | latest | STEP) of the run in `workdir`.

    `config` replaces the saved config (e.g. to evaluate on another split); by default the run's
    own `config.json` is used.
    """
    workdir = resolve(workdir)  # a local path or a URL (gs://...)
    config = config or read_run_config(workdir)
    validate_config(config)
    checkpoints = RunCheckpoints(
        workdir, keep_best=config.train.keep_best_checkpoints, read_only=True
    )
    try:
        # A bad `checkpoint` fails before the data are loaded.
        step = checkpoints.resolve(str(checkpoint))
        data = make_input(config, _read_train_stats(workdir))
        model = build_model(config, data.num_classes)
        mesh = parallel.data_mesh(config.parallel.num_devices)
        tx = make_run_optimizer(config, schedule_of(config, data.num_train))
        abstract = parallel.with_sharding(
            abstract_train_state(model, tx, input_shape=data.input_shape, **state_extras(config)),
            parallel.replicated(mesh),
        )
        signature = model_signature(config.model.name, abstract.params)
        state, _ = checkpoints.restore(step, abstract, signature)
    finally:
        checkpoints.close()
    return TrainedRun(config, workdir, step, state, model, data, mesh)
