"""A finished (or interrupted) run read back from its workdir, for evaluation and inspection.

`load_trained_run(workdir, checkpoint="best")` rebuilds the run from the `config.json` it wrote
(its model, its data with the training split's normalization, its mesh) and restores one of its
checkpoints: the best by test accuracy, the latest, or a step number. Nothing in the workdir is
changed.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections

from cnnjax import parallel
from cnnjax.config_base import get_base_config
from cnnjax.errors import UserError
from cnnjax.train.checkpoints import RunCheckpoints
from cnnjax.train.run import Run
from cnnjax.train.state import TrainState

CONFIG_FILE = "config.json"


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was trained with; keys added to the framework since then
    take their defaults (so old workdirs stay readable)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(
            f"{workdir} holds no {CONFIG_FILE}: give the --workdir of a `cnnjax train` run"
        )
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path} ({type(error).__name__}: {error})") from None
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


def resolve_checkpoint(checkpoints: RunCheckpoints, which: str) -> int:
    """The step of checkpoint `which`: "best" (by test accuracy; the latest when none was
    ranked), "latest", or a step number that exists."""
    latest = checkpoints.latest_step()
    if latest is None:
        raise UserError(
            f"no checkpoint in {checkpoints.directory}: train first (`cnnjax train`), or check "
            "--workdir"
        )
    if which == "latest":
        return latest
    if which == "best":
        best = checkpoints.best_step()
        return latest if best is None else best
    if not which.isdigit():
        raise UserError(f"--checkpoint={which!r}: give best, latest or a step number")
    available = checkpoints.all_steps()
    if int(which) not in available:
        raise UserError(
            f"no checkpoint at step {which} in {checkpoints.directory}: available steps are "
            f"{', '.join(map(str, available))}"
        )
    return int(which)


@dataclasses.dataclass
class TrainedRun:
    """A run restored from a checkpoint: the `Run` (config, input, model, mesh, jitted steps)
    whose `state` holds the checkpoint's parameters, and the step it was saved at."""

    run: Run
    step: int
    # The parameters the run started from (create_train_state with its seed), kept from building
    # the Run so that inspecting them needs no second initialization.
    initial_params: dict = dataclasses.field(repr=False, default_factory=dict)

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.run.config

    @property
    def state(self) -> TrainState:
        return self.run.state

    @property
    def workdir(self) -> str:
        return self.run.workdir


def load_trained_run(
    workdir: str, checkpoint: str = "best", *, config: ml_collections.ConfigDict | None = None
) -> TrainedRun:
    """Restores checkpoint `checkpoint` (best | latest | STEP) of the run in `workdir`.

    `config` replaces the saved config (e.g. to evaluate on another split); by default the run's
    own `config.json` is used.
    """
    workdir = os.path.abspath(workdir)
    config = config or read_run_config(workdir)
    # A bad `checkpoint` fails before the data are loaded (seconds to minutes for big splits).
    checkpoints = RunCheckpoints(
        workdir, keep_best=config.train.keep_best_checkpoints, read_only=True
    )
    try:
        step = resolve_checkpoint(checkpoints, checkpoint)
    finally:
        checkpoints.close()
    run = Run(config, workdir, read_only=True)
    initial_params = run.state.params
    abstract = parallel.with_sharding(
        jax.eval_shape(lambda s: s, run.state), parallel.replicated(run.mesh)
    )
    run.state, _ = run.checkpoints.restore(step, abstract, run.signature)
    return TrainedRun(run=run, step=step, initial_params=initial_params)
