"""The training loop: data -> model -> jitted steps -> metrics, checkpoints and results.

`train_and_evaluate(config, workdir)` resumes from the latest checkpoint in `workdir` when there
is one, so rerunning a command after any crash continues the same run; the batches, the per-step
random keys and the metric sums are all functions of the step, so the resumed run ends with the
same numbers as one that never stopped.

What protects a run's work: one `cnnjax train` per workdir (its lock); a resume with a config
that changes the math is refused (cnnjax/train/config_history.py); SIGTERM / SIGINT save the
current step and stop (TrainingInterrupted); a non-finite loss or gradient norm stops training
before anything diverged is saved (TrainingDiverged); every file is written atomically.
"""

from __future__ import annotations

import contextlib
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from tqdm import tqdm

from cnnjax import fast_paths, parallel
from cnnjax.errors import TrainingDiverged, TrainingInterrupted
from cnnjax.metrics import MetricWriter, NullWriter, plot_curves, read_metrics
from cnnjax.train import config_history, finetune, steps
from cnnjax.train import workdir as workdirs
from cnnjax.train.checkpoints import write_failure
from cnnjax.train.interrupts import StopRequests
from cnnjax.train.run import Run, build_model, device_prefetch, evaluate, make_steps
from cnnjax.train.run_record import environment
from cnnjax.train.state import count_params

__all__ = ["Run", "build_model", "device_prefetch", "evaluate", "make_steps", "train_and_evaluate"]


def _host(sums: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(sums).items()}


def _device(sums: dict | None) -> dict:
    # Sums saved by an older cnnjax lack the newer keys: those start from zero.
    return {
        k: jnp.asarray((sums or {}).get(k, zero), jnp.float32)
        for k, zero in steps.zero_metrics().items()
    }


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the results.

    Writes config.json, metrics.jsonl, TensorBoard events, curves.png, checkpoints/ and
    results.json into `workdir`. Raises UserError (bad input, a workdir in use, a resume with a
    config that changes the math unless `allow_config_change`, a failed write),
    TrainingDiverged or TrainingInterrupted.
    """
    wall_start = time.perf_counter()
    workdirs.make_workdir(workdir)
    # On many hosts the first process holds the lock for the run; the others follow it.
    is_main = jax.process_index() == 0
    with workdirs.hold(workdir) if is_main else contextlib.nullcontext():
        try:
            return _train_and_evaluate(config, workdir, allow_config_change, wall_start)
        except OSError as error:  # a write outside the checkpoints: metrics, plots, results
            raise write_failure(
                "the run's files", workdir, error, "rerun the same command to resume"
            ) from None


def _train_and_evaluate(config, workdir: str, allow_config_change: bool, wall_start: float):
    if config.train.compilation_cache_dir:
        fast_paths.enable_compilation_cache(config.train.compilation_cache_dir)
    saved = workdirs.finished_checkpoint_steps(workdir)
    changes = {}
    if saved:  # before the data load: a refused resume costs nothing
        changes = config_history.check_resume(
            workdir, config, step=saved[-1], allow_change=allow_config_change
        )
    run = Run(config, workdir)
    record = run.restore()  # before writing anything: a wrong workdir must lose nothing
    if not record and config.init_from:  # a new fine-tuning run (a resumed one has its weights)
        state, report = finetune.initialize_from(jax.device_get(run.state), config)
        run.state = parallel.replicate(state, run.mesh)
        if run.is_main:
            print(report, flush=True)
    start = int(run.state.step)
    if run.is_main:  # on many hosts, the first process writes the files
        config_history.record(workdir, config, step=start, changes=changes)
    writer = MetricWriter(workdir, resume_step=start) if run.is_main else NullWriter()
    try:
        record = _train(run, record, start, writer)
    finally:
        writer.close()
        run.checkpoints.wait()
        run.checkpoints.close()
    results = _results(run, record, start, time.perf_counter() - wall_start)
    if run.is_main:
        workdirs.write_json(os.path.join(workdir, "results.json"), results)
        plot_curves(
            read_metrics(workdir),
            os.path.join(workdir, "curves.png"),
            title=f"{config.model.name} on {config.data.name}",
        )
    return results


def _train(run: Run, record: dict, start: int, writer: MetricWriter) -> dict:
    """The step loop from `start`; returns the record of the final state."""
    cfg, spe, total = run.config.train, run.steps_per_epoch, run.total_steps
    epoch_sums, window_sums = _device(record.get("epoch_sums")), _device(record.get("window_sums"))
    timing = {"train_seconds": 0.0, "timed_steps": 0, "compile_seconds": None}
    batches = device_prefetch(run.batches(start), mesh=run.mesh)
    progress = tqdm(
        total=total,
        initial=start,
        unit="step",
        mininterval=1.0,
        dynamic_ncols=True,
        disable=not run.is_main,
    )
    mark = time.perf_counter()
    with progress, StopRequests() as stop:
        for step in range(start, total):
            run.state, metrics = run.train_fn(run.state, next(batches))
            epoch_sums = steps.add_metrics(epoch_sums, metrics)
            window_sums = steps.add_metrics(window_sums, metrics)
            done = step + 1
            if timing["compile_seconds"] is None:  # the first step compiles: keep it out of speed
                jax.block_until_ready(run.state)
                timing["compile_seconds"] = time.perf_counter() - mark
                mark = time.perf_counter()
            end_of_epoch = done % spe == 0 or done == total
            if done % cfg.log_every_steps == 0 or end_of_epoch:
                mark = _log_window(
                    run, writer, progress, done - start, done, window_sums, timing, mark
                )
                window_sums = steps.zero_metrics()
                if "images_per_sec" in timing:  # in the record: a finished run still reports it
                    record.update(
                        train_images_per_sec=timing["images_per_sec"],
                        compile_seconds=timing["compile_seconds"],
                    )
            if end_of_epoch:
                record["last_train"] = steps.summarize(_host(epoch_sums))
                writer.write(
                    done, "train_epoch", {"epoch": run.epoch_of(done), **record["last_train"]}
                )
                epoch_sums = steps.zero_metrics()
                if _end_of_epoch(run, writer, record, done, epoch_sums, window_sums):
                    mark = time.perf_counter()
            elif done % cfg.checkpoint_every_steps == 0:
                _save(run, done, record, epoch_sums, window_sums, None)
                mark = time.perf_counter()
            progress.update(1)
            if stop.should_stop(done):  # every step: processes must agree on where to stop
                _stop(run, stop, done, record, epoch_sums, window_sums)
    return record


def _end_of_epoch(run: Run, writer, record: dict, done: int, epoch_sums, window_sums) -> bool:
    """Evaluates when due and saves; True when a checkpoint was saved."""
    cfg, spe = run.config.train, run.steps_per_epoch
    metrics_for_best = None
    if -(-done // spe) % cfg.eval_every_epochs == 0 or done == run.total_steps:
        metrics_for_best = _evaluate(run, writer, record, done)
    # Saved at evaluations (ranked among the best) and on the usual cadence: epochs of a few
    # steps (fine-tuning on small data) would otherwise spend their time saving.
    if metrics_for_best or done % cfg.checkpoint_every_steps == 0:
        _save(run, done, record, epoch_sums, window_sums, metrics_for_best)
        return True
    return False


def _evaluate(run: Run, writer, record: dict, done: int) -> dict:
    """Evaluates the test split into `record`; returns the metrics that rank the checkpoint."""
    record["last_test"] = run.evaluate_test()
    writer.write(done, "test", {"epoch": run.epoch_of(done), **record["last_test"]})
    if run.is_main:
        tqdm.write(
            f"epoch {run.epoch_of(done):.2f}: test accuracy "
            f"{record['last_test']['accuracy']:.4f}, loss {record['last_test']['loss']:.4f}"
        )
    return {"test_accuracy": record["last_test"]["accuracy"]}


def _stop(run: Run, stop: StopRequests, done: int, record, epoch_sums, window_sums) -> None:
    """Saves step `done` (unless just saved) and raises TrainingInterrupted."""
    if run.checkpoints.latest_step() != done:
        _save(run, done, record, epoch_sums, window_sums, None)
    run.checkpoints.wait()
    raise TrainingInterrupted(
        f"interrupted by {stop.signal_name} at step {done} of {run.total_steps}: checkpoint "
        f"{done} is saved in {run.checkpoints.directory}; rerun the same command to resume",
        signal_number=stop.signal_number,
        step=done,
    )


def _raise_if_diverged(run: Run, sums: dict[str, float]) -> None:
    """TrainingDiverged, naming the first non-finite step and the last good checkpoint, when
    `sums` (train metric sums on the host) counted a non-finite step."""
    if not sums.get("nonfinite_steps"):
        return
    first = int(sums["first_nonfinite_step"])
    latest, best = run.checkpoints.latest_step(), run.checkpoints.best_step()
    if latest is None:
        saved = "no checkpoint was saved before it"
        resume = "rerun in a new --workdir"
    else:
        best_note = f", the best is step {best}" if best is not None and best != latest else ""
        saved = f"the last good checkpoint is step {latest}{best_note}"
        resume = (
            f"rerun in a new --workdir, or here with --allow_config_change to continue from "
            f"step {latest}"
        )
    raise TrainingDiverged(
        f"training diverged: the loss or gradient norm became non-finite at step {first}, and "
        f"nothing after it was saved ({saved}): lower --config.optimizer.learning_rate or set "
        f"--config.optimizer.grad_clip_norm, then {resume}"
    )


def _log_window(run, writer, progress, steps_run, done, window_sums, timing, mark) -> float:
    """Writes the mean loss/accuracy since the last log step; updates the speed in `timing`."""
    host_sums = _host(window_sums)  # the only host sync between evaluations
    window = steps.summarize(host_sums)
    now = time.perf_counter()
    timed = steps_run - 1 - timing["timed_steps"]  # the first step (compilation) is not timed
    timing["timed_steps"] += timed
    timing["train_seconds"] += now - mark
    speed = timed * run.config.data.batch_size / max(now - mark, 1e-9)
    if timing["timed_steps"]:
        timing["images_per_sec"] = (
            timing["timed_steps"] * run.config.data.batch_size / timing["train_seconds"]
        )
    writer.write(done, "train", {"epoch": run.epoch_of(done), **window, "images_per_sec": speed})
    progress.set_postfix(
        loss=f"{window['loss']:.4f}",
        acc=f"{window['accuracy']:.4f}",
        img_s=f"{speed:,.0f}",
        refresh=False,
    )
    _raise_if_diverged(run, host_sums)  # after the window's record: the curve shows it
    return now


def _save(run: Run, step: int, record: dict, epoch_sums, window_sums, metrics) -> None:
    """Saves the state at `step` with the record and sums that make a resume exact; never a
    state that a non-finite step touched."""
    epoch, window = _host(epoch_sums), _host(window_sums)
    _raise_if_diverged(run, epoch)
    _raise_if_diverged(run, window)
    record.update(signature=run.signature, epoch_sums=epoch, window_sums=window)
    run.checkpoints.save(step, run.state, dict(record), metrics=metrics)


def _results(run: Run, record: dict, start: int, wall_seconds: float) -> dict:
    config, step = run.config, int(run.state.step)
    best = run.checkpoints.best_step()
    test, train = record.get("last_test", {}), record.get("last_train", {})
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
        "epochs": run.epoch_of(step),
        "steps": step,
        "resumed_from_step": start,
        "best_checkpoint_step": best,
        "best_test_accuracy": (run.checkpoints.metrics(best) or {}).get("test_accuracy")
        if best is not None
        else None,
        "config_changes": config_history.accepted_changes(run.workdir),
        "num_params": count_params(run.state.params),
        "wall_seconds": wall_seconds,  # of this invocation, set-up and evaluation included
        "train_images_per_sec": record.get("train_images_per_sec"),
        "compile_seconds": record.get("compile_seconds"),
        "num_devices": int(run.mesh.devices.size),
        "num_processes": jax.process_count(),
        "compute_dtype": config.train.compute_dtype,
        **environment(),
    }
