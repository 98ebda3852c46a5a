"""Training from a config, top to bottom: validate -> input -> model -> optimizer -> mesh ->
abstract state -> restore or init -> steps -> loop -> results.

`train_and_evaluate(config, workdir)` resumes from the latest checkpoint in `workdir` when there
is one, so rerunning after any crash continues the same run; the batches, the per-step random
keys and the metric sums are all functions of the step, so the resumed run ends with the same
numbers as one that never stopped.

What protects a run's work: one training process per workdir (its lock); a resume with a config
that changes the math is refused (cnnjax/train/config_history.py); SIGTERM / SIGINT save the
current step and stop (TrainingInterrupted); a non-finite loss or gradient norm stops training
before anything diverged is saved (TrainingDiverged); every file is written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time

import flax.linen as nn
import jax
import ml_collections
from tqdm import tqdm

from cnnjax import parallel
from cnnjax.data.inputs import TrainingData, make_input
from cnnjax.errors import TrainingDiverged, TrainingInterrupted
from cnnjax.metrics import MetricWriter, NullWriter, plot_curves, read_metrics
from cnnjax.parallel import accelerators
from cnnjax.train import config_history, finetune, steps
from cnnjax.train import workdir as workdirs
from cnnjax.train.checkpoints import RunCheckpoints, model_signature, write_failure
from cnnjax.train.config_checks import validate_config
from cnnjax.train.interrupts import StopRequests
from cnnjax.train.progress import MetricSums, RunRecord, Throughput, on_host
from cnnjax.train.run import (
    TRAIN_STATS_FILE,
    CompiledSteps,
    Schedule,
    build_model,
    evaluate_test,
    examples_decoded_per_process,
    make_run_optimizer,
    make_steps,
    resolve_backend_choices,
    schedule_of,
    state_extras,
    step_options,
    train_device_batches,
)
from cnnjax.train.run_record import environment
from cnnjax.train.state import TrainState, abstract_train_state, count_params, create_train_state


@dataclasses.dataclass(frozen=True)
class TrainingOutcome:
    """What `train_and_evaluate` returns: the trained state (its `params`, `batch_stats`,
    `apply_fn`), the model, and the results also written to results.json."""

    state: TrainState
    model: nn.Module
    results: dict


@dataclasses.dataclass(frozen=True)
class Loop:
    """Everything the step loop uses that does not change while it runs."""

    config: ml_collections.ConfigDict
    data: TrainingData
    schedule: Schedule
    steps: CompiledSteps
    mesh: jax.sharding.Mesh
    checkpoints: RunCheckpoints
    signature: dict
    writer: MetricWriter | NullWriter
    is_main: bool  # on many hosts, the first process writes the files and prints


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    model: nn.Module | None = None,
    data: TrainingData | None = None,
    allow_config_change: bool = False,
) -> TrainingOutcome:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint).

    `model` (any Flax module called as `model(x, train=...)`) and `data` (a
    cnnjax.data.inputs.TrainingData) replace the ones `config.model` and `config.data` name.
    Writes config.json, metrics.jsonl, TensorBoard events, curves.png, checkpoints/ and
    results.json into `workdir`; returns the trained state, the model and the results. Raises
    UserError (bad input, a workdir in use, a resume with a config that changes the math unless
    `allow_config_change`, a failed write), TrainingDiverged or TrainingInterrupted.
    """
    wall_start = time.perf_counter()
    validate_config(config, custom_model=model is not None, custom_data=data is not None)
    config = resolve_backend_choices(config)
    workdirs.make_workdir(workdir)
    is_main = jax.process_index() == 0
    # On many hosts the first process holds the lock for the run; the others follow it.
    with workdirs.hold(workdir) if is_main else contextlib.nullcontext():
        try:
            return _train_and_evaluate(
                config, workdir, model, data, allow_config_change, wall_start, is_main
            )
        except OSError as error:  # a write outside the checkpoints: metrics, plots, results
            raise write_failure(
                "the run's files", workdir, error, "rerun the same command to resume"
            ) from None


def _train_and_evaluate(config, workdir, model, data, allow_config_change, wall_start, is_main):
    saved_steps = workdirs.finished_checkpoint_steps(workdir)
    changes = {}
    if saved_steps:  # before the data load: a refused resume costs nothing
        changes = config_history.check_resume(
            workdir, config, step=saved_steps[-1], allow_change=allow_config_change
        )

    # Input, model and optimizer.
    data = data if data is not None else make_input(config)
    schedule = schedule_of(config, data.num_train)
    model = model if model is not None else build_model(config, data.num_classes)
    tx = make_run_optimizer(config, schedule)

    # The device mesh: batches split over its `data` axis, the state replicated.
    mesh = parallel.data_mesh(config.parallel.num_devices)
    if is_main:
        _announce_devices(mesh)
    parallel.check_batch_size(config.data.batch_size, mesh)

    # Shapes first: the restore target, and the signature a checkpoint must match.
    abstract_state = parallel.with_sharding(
        abstract_train_state(model, tx, input_shape=data.input_shape, **state_extras(config)),
        parallel.replicated(mesh),
    )
    signature = model_signature(config.model.name, abstract_state.params)

    # Restore the latest checkpoint (before writing anything: a wrong workdir loses nothing),
    # or initialize, from another run's weights when fine-tuning.
    checkpoints = RunCheckpoints(workdir, keep_best=config.train.keep_best_checkpoints)
    try:
        latest = checkpoints.latest_step()
        if latest is not None:
            state, saved_record = checkpoints.restore(latest, abstract_state, signature)
            record = RunRecord.from_checkpoint(saved_record)
        else:
            state, record = _initialize(config, model, tx, data, mesh, is_main), RunRecord()

        compiled = make_steps(
            step_options(config, data.num_classes, getattr(data, "normalization", None)),
            mesh=mesh,
            parallel_step=config.parallel.step,
            batch_norm=config.parallel.batch_norm,
        )
        start = int(state.step)
        if is_main:
            config_history.record(workdir, config, step=start, changes=changes)
            if getattr(data, "train_stats", None) is not None:
                workdirs.write_json(
                    os.path.join(workdir, TRAIN_STATS_FILE), data.train_stats.to_json()
                )
        writer = MetricWriter(workdir, resume_step=start) if is_main else NullWriter()
        loop = Loop(config, data, schedule, compiled, mesh, checkpoints, signature, writer, is_main)
        try:
            state, record = train_loop(loop, state, record)
        finally:
            writer.close()
            checkpoints.wait()
        results = _results(loop, state, record, start, time.perf_counter() - wall_start)
    finally:
        checkpoints.close()

    if is_main:
        workdirs.write_json(os.path.join(workdir, "results.json"), results)
        plot_curves(
            read_metrics(workdir),
            os.path.join(workdir, "curves.png"),
            title=f"{config.model.name} on {config.data.name}",
        )
    return TrainingOutcome(state=state, model=model, results=results)


def _announce_devices(mesh: jax.sharding.Mesh) -> None:
    """The run's devices in one line, and a loud warning when a GPU or TPU is left idle."""
    print(accelerators.startup_line(int(mesh.devices.size)), flush=True)
    warning = accelerators.idle_accelerator_warning(jax.default_backend())
    if warning:
        print(warning, file=sys.stderr, flush=True)


def _initialize(config, model, tx, data, mesh, is_main: bool) -> TrainState:
    """The fresh state of `config.seed`, with `config.init_from`'s weights when fine-tuning."""
    state = create_train_state(
        model, tx, input_shape=data.input_shape, seed=config.seed, **state_extras(config)
    )
    if config.init_from:
        state, report = finetune.initialize_from(jax.device_get(state), config)
        if is_main:
            print(report, flush=True)
    return parallel.replicate(state, mesh)


def train_loop(loop: Loop, state: TrainState, record: RunRecord) -> tuple[TrainState, RunRecord]:
    """The steps from `state.step` to the end: logs, evaluates, saves; returns the final state
    and the record it was (or would be) saved with."""
    cfg, schedule = loop.config.train, loop.schedule
    start = int(state.step)
    sums = MetricSums.resumed(record)
    throughput = Throughput(loop.config.data.batch_size)
    batches = train_device_batches(loop.data, start, loop.config.data.batch_size, loop.mesh)
    progress = tqdm(
        total=schedule.total_steps,
        initial=start,
        unit="step",
        mininterval=1.0,
        dynamic_ncols=True,
        disable=not loop.is_main,
    )
    with progress, StopRequests() as stop:
        for step in range(start, schedule.total_steps):
            state, metrics = loop.steps.train(state, next(batches))
            sums.add(metrics)
            done = step + 1
            if throughput.compile_seconds is None:  # the first step compiles: not in the speed
                jax.block_until_ready(state)
                throughput.compiled()
            end_of_epoch = schedule.end_of_epoch(done)
            if done % cfg.log_every_steps == 0 or end_of_epoch:
                _log_window(loop, progress, done, done - start, sums, throughput)
                if throughput.images_per_sec is not None:  # kept: a finished run reports it
                    record.train_images_per_sec = throughput.images_per_sec
                    record.compile_seconds = throughput.compile_seconds
            if end_of_epoch:
                record.last_train = steps.summarize(sums.take_epoch())
                loop.writer.write(
                    done, "train_epoch", {"epoch": schedule.epoch_of(done), **record.last_train}
                )
                if _end_of_epoch(loop, state, record, done, sums):
                    throughput.restart_clock()
            elif done % cfg.checkpoint_every_steps == 0:
                _save(loop, state, done, record, sums, None)
                throughput.restart_clock()
            progress.update(1)
            if stop.should_stop(done):  # every step: processes must agree on where to stop
                _stop(loop, state, stop, done, record, sums)
    return state, record


def _log_window(loop: Loop, progress, done: int, steps_run: int, sums, throughput) -> None:
    """Writes the mean loss/accuracy since the last log step and its speed."""
    window_sums = sums.take_window()  # the only host sync between evaluations
    window = steps.summarize(window_sums)
    speed = throughput.end_window(steps_run)
    epoch = loop.schedule.epoch_of(done)
    loop.writer.write(done, "train", {"epoch": epoch, **window, "images_per_sec": speed})
    progress.set_postfix(
        loss=f"{window['loss']:.4f}",
        acc=f"{window['accuracy']:.4f}",
        img_s=f"{speed:,.0f}",
        refresh=False,
    )
    _raise_if_diverged(loop, window_sums)  # after the window's record: the curve shows it


def _end_of_epoch(loop: Loop, state, record: RunRecord, done: int, sums) -> bool:
    """Evaluates when due and saves; True when a checkpoint was saved."""
    cfg, schedule = loop.config.train, loop.schedule
    metrics_for_best = None
    if -(-done // schedule.steps_per_epoch) % cfg.eval_every_epochs == 0 or (
        done == schedule.total_steps
    ):
        record.last_test = evaluate_test(
            loop.steps,
            state,
            loop.data,
            loop.mesh,
            with_mean_iou=loop.config.data.task == "segmentation",
        )
        epoch = schedule.epoch_of(done)
        loop.writer.write(done, "test", {"epoch": epoch, **record.last_test})
        if loop.is_main:
            tqdm.write(
                f"epoch {epoch:.2f}: test accuracy {record.last_test['accuracy']:.4f}, "
                f"loss {record.last_test['loss']:.4f}"
            )
        metrics_for_best = {"test_accuracy": record.last_test["accuracy"]}
    # Saved at evaluations (ranked among the best) and on the usual cadence: epochs of a few
    # steps (fine-tuning on small data) would otherwise spend their time saving.
    if metrics_for_best or done % cfg.checkpoint_every_steps == 0:
        _save(loop, state, done, record, sums, metrics_for_best)
        return True
    return False


def _save(loop: Loop, state, step: int, record: RunRecord, sums, metrics) -> None:
    """Saves the state at `step` with the record and sums that make a resume exact; never a
    state that a non-finite step touched."""
    epoch_sums, window_sums = on_host(sums.epoch), on_host(sums.window)  # one transfer each
    _raise_if_diverged(loop, epoch_sums)
    _raise_if_diverged(loop, window_sums)
    saved = record.to_checkpoint(loop.signature, epoch_sums, window_sums)
    loop.checkpoints.save(step, state, saved, metrics)


def _stop(loop: Loop, state, stop: StopRequests, done: int, record, sums) -> None:
    """Saves step `done` (unless just saved) and raises TrainingInterrupted."""
    if loop.checkpoints.latest_step() != done:
        _save(loop, state, done, record, sums, None)
    loop.checkpoints.wait()
    raise TrainingInterrupted(
        f"interrupted by {stop.signal_name} at step {done} of {loop.schedule.total_steps}: "
        f"checkpoint {done} is saved in {loop.checkpoints.directory}; rerun the same command "
        "to resume",
        signal_number=stop.signal_number,
        step=done,
    )


def _raise_if_diverged(loop: Loop, sums: dict[str, float]) -> None:
    """TrainingDiverged, naming the first non-finite step and the last good checkpoint, when
    `sums` (train metric sums on the host) counted a non-finite step."""
    if not sums.get("nonfinite_steps"):
        return
    first = int(sums["first_nonfinite_step"])
    latest, best = loop.checkpoints.latest_step(), loop.checkpoints.best_step()
    if latest is None:
        saved = "no checkpoint was saved before it"
        resume = "rerun in a new workdir"
    else:
        best_note = f", the best is step {best}" if best is not None and best != latest else ""
        saved = f"the last good checkpoint is step {latest}{best_note}"
        resume = (
            f"rerun in a new workdir, or here allowing the config change to continue from "
            f"step {latest}"
        )
    raise TrainingDiverged(
        f"training diverged: the loss or gradient norm became non-finite at step {first}, and "
        f"nothing after it was saved ({saved}): lower config.optimizer.learning_rate or set "
        f"config.optimizer.grad_clip_norm, then {resume}"
    )


def _results(loop: Loop, state, record: RunRecord, start: int, wall_seconds: float) -> dict:
    config, step, checkpoints = loop.config, int(state.step), loop.checkpoints
    best = checkpoints.best_step()
    test, train = record.last_test, record.last_train
    return {
        "model": config.model.name,
        "dataset": config.data.name,
        "seed": config.seed,
        "test_accuracy": test.get("accuracy"),
        "test_loss": test.get("loss"),
        **({"test_mean_iou": test["mean_iou"]} if "mean_iou" in test else {}),
        **({"test_accuracy_ema": test["ema_accuracy"]} if "ema_accuracy" in test else {}),
        "train_accuracy": train.get("accuracy"),
        "train_loss": train.get("loss"),
        "epochs": loop.schedule.epoch_of(step),
        "steps": step,
        "resumed_from_step": start,
        "best_checkpoint_step": best,
        "best_test_accuracy": (checkpoints.metrics(best) or {}).get("test_accuracy")
        if best is not None
        else None,
        "config_changes": config_history.accepted_changes(checkpoints.workdir),
        "num_params": count_params(state.params),
        "wall_seconds": wall_seconds,  # of this invocation, set-up and evaluation included
        "train_images_per_sec": record.train_images_per_sec,
        "compile_seconds": record.compile_seconds,
        "num_devices": int(loop.mesh.devices.size),
        "num_processes": jax.process_count(),
        "examples_decoded_per_process": examples_decoded_per_process(loop.data),
        "compute_dtype": config.train.compute_dtype,
        **environment(),
    }
