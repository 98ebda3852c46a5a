"""The training loop: data -> model -> jitted steps -> metrics, checkpoints and results.

`train_and_evaluate(config, workdir)` resumes from the latest checkpoint in `workdir` when there
is one, so rerunning a command after any crash continues the same run; the batches, the per-step
random keys and the metric sums are all functions of the step, so the resumed run ends with the
same numbers as one that never stopped.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import time
from collections.abc import Iterator

import jax
import ml_collections
from tqdm import tqdm

from cnnjax import data, models
from cnnjax.config_checks import validate_config
from cnnjax.data import tasks
from cnnjax.errors import UserError
from cnnjax.metrics import MetricWriter, plot_curves, read_metrics
from cnnjax.train import steps
from cnnjax.train.checkpoints import RunCheckpoints, model_signature
from cnnjax.train.optim import make_optimizer
from cnnjax.train.run_record import environment
from cnnjax.train.state import TrainState, count_params, create_train_state


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


def make_steps(num_classes: int, label_smoothing: float, with_confusion: bool = False):
    """The jitted train and eval steps; the train step donates the state it replaces."""
    train = jax.jit(
        functools.partial(
            steps.train_step, num_classes=num_classes, label_smoothing=label_smoothing
        ),
        donate_argnums=0,
    )
    evaluate = jax.jit(
        functools.partial(steps.eval_step, num_classes=num_classes, with_confusion=with_confusion)
    )
    return train, evaluate


def device_prefetch(batches: Iterator[dict], size: int = 2) -> Iterator[dict]:
    """Keeps `size` batches in flight to the device; `device_put` is asynchronous."""
    queue = collections.deque()
    for batch in batches:
        queue.append(jax.device_put(batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def evaluate(eval_fn, state: TrainState, batches: Iterator[dict]) -> dict[str, float]:
    """Loss and accuracy over every example of `batches` (padding masked out)."""
    sums = None
    for batch in device_prefetch(batches):
        metrics = eval_fn(state, batch)
        sums = metrics if sums is None else steps.add_metrics(sums, metrics)
    return steps.summarize(jax.device_get(sums))


def _host(sums: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(sums).items()}


def _device(sums: dict | None) -> dict:
    if not sums:
        return steps.zero_metrics()
    return {k: jax.numpy.asarray(v, jax.numpy.float32) for k, v in sums.items()}


class Run:
    """One training run in one workdir: set up, resume, train, evaluate, write results."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        validate_config(config)
        self.config, self.workdir = config, workdir
        os.makedirs(workdir, exist_ok=True)
        cfg = config.data
        load = functools.partial(
            data.load_split,
            config.data.name,
            data_dir=cfg.data_dir,
            source_dir=cfg.source_dir,
            download=cfg.download,
        )
        # Derived tasks use other seeds for the two splits: different canvases and clips.
        self.train_split = tasks.derive(cfg.task, load(cfg.train_split), seed=config.seed)
        self.test_split = tasks.derive(cfg.task, load(cfg.eval_split), seed=config.seed + 1)
        self.augment = data.AugmentConfig(**cfg.augment.to_dict())
        self.mean, self.std = data.channel_stats(self.train_split.images)
        self.steps_per_epoch = len(self.train_split.labels) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the training split has {len(self.train_split.labels)} examples, fewer than "
                f"one batch of {cfg.batch_size}: lower --config.data.batch_size"
            )
        self.total_steps = config.train.steps or config.train.epochs * self.steps_per_epoch

        num_classes = self.train_split.num_classes
        self.model = build_model(config, num_classes)
        tx = make_optimizer(
            config.optimizer, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps
        )
        height, width, *rest = self.train_split.images.shape[1:]
        scale = cfg.augment.upscale  # the pipeline upscales images by this integer factor
        self.input_shape = (height * scale, width * scale, *rest)
        self.state = create_train_state(
            self.model, tx, input_shape=self.input_shape, seed=config.seed
        )
        self.signature = model_signature(config.model.name, self.state.params)
        self.train_fn, self.eval_fn = make_steps(
            num_classes, config.optimizer.label_smoothing, with_confusion=cfg.task == "segmentation"
        )
        self.checkpoints = RunCheckpoints(workdir, keep_best=config.train.keep_best_checkpoints)

    def restore(self) -> dict:
        """Resumes from the latest checkpoint if any; returns its record ({} for a new run)."""
        step = self.checkpoints.latest_step()
        if step is None:
            return {}
        abstract = jax.eval_shape(lambda s: s, self.state)
        self.state, record = self.checkpoints.restore(step, abstract, self.signature)
        return record

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def batches(self, start_step: int) -> Iterator[dict]:
        return iter(
            data.TrainBatches(
                self.train_split,
                batch_size=self.config.data.batch_size,
                seed=self.config.seed,
                augment=self.augment,
                mean=self.mean,
                std=self.std,
                start_step=start_step,
            )
        )

    def evaluate_test(self) -> dict[str, float]:
        batches = data.eval_batches(
            self.test_split,
            batch_size=self.config.data.eval_batch_size,
            augment=self.augment,
            mean=self.mean,
            std=self.std,
        )
        return evaluate(self.eval_fn, self.state, batches)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the results.

    Writes config.json, metrics.jsonl, TensorBoard events, curves.png, checkpoints/ and
    results.json into `workdir`.
    """
    wall_start = time.perf_counter()
    run = Run(config, workdir)
    record = run.restore()  # before writing anything: a wrong workdir must lose nothing
    start = int(run.state.step)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    writer = MetricWriter(workdir, resume_step=start)
    try:
        record = _train(run, record, start, writer)
    finally:
        writer.close()
        run.checkpoints.wait()
        run.checkpoints.close()
    results = _results(run, record, start, time.perf_counter() - wall_start)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
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
    batches = device_prefetch(run.batches(start))
    progress = tqdm(total=total, initial=start, unit="step", mininterval=1.0, dynamic_ncols=True)
    mark = time.perf_counter()
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
            mark = _log_window(run, writer, progress, done - start, done, window_sums, timing, mark)
            window_sums = steps.zero_metrics()
            if "images_per_sec" in timing:  # in the record, so a finished run still reports it
                record.update(
                    train_images_per_sec=timing["images_per_sec"],
                    compile_seconds=timing["compile_seconds"],
                )
        if end_of_epoch:
            record["last_train"] = steps.summarize(_host(epoch_sums))
            writer.write(done, "train_epoch", {"epoch": run.epoch_of(done), **record["last_train"]})
            epoch_sums = steps.zero_metrics()
            metrics_for_best = None
            if -(-done // spe) % cfg.eval_every_epochs == 0 or done == total:
                record["last_test"] = run.evaluate_test()
                writer.write(done, "test", {"epoch": run.epoch_of(done), **record["last_test"]})
                metrics_for_best = {"test_accuracy": record["last_test"]["accuracy"]}
                tqdm.write(
                    f"epoch {run.epoch_of(done):.2f}: test accuracy "
                    f"{record['last_test']['accuracy']:.4f}, loss {record['last_test']['loss']:.4f}"
                )
            _save(run, done, record, epoch_sums, window_sums, metrics_for_best)
            mark = time.perf_counter()
        elif done % cfg.checkpoint_every_steps == 0:
            _save(run, done, record, epoch_sums, window_sums, None)
            mark = time.perf_counter()
        progress.update(1)
    progress.close()
    return record


def _log_window(run, writer, progress, steps_run, done, window_sums, timing, mark) -> float:
    """Writes the mean loss/accuracy since the last log step; updates the speed in `timing`."""
    window = steps.summarize(_host(window_sums))  # the only host sync between evaluations
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
    return now


def _save(run: Run, step: int, record: dict, epoch_sums, window_sums, metrics) -> None:
    record.update(
        signature=run.signature, epoch_sums=_host(epoch_sums), window_sums=_host(window_sums)
    )
    run.checkpoints.save(step, run.state, dict(record), metrics=metrics)


def _results(run: Run, record: dict, start: int, wall_seconds: float) -> dict:
    config, step = run.config, int(run.state.step)
    test, train = record.get("last_test", {}), record.get("last_train", {})
    return {
        "model": config.model.name,
        "dataset": config.data.name,
        "seed": config.seed,
        "test_accuracy": test.get("accuracy"),
        "test_loss": test.get("loss"),
        **({"test_mean_iou": test["mean_iou"]} if "mean_iou" in test else {}),
        "train_accuracy": train.get("accuracy"),
        "train_loss": train.get("loss"),
        "epochs": run.epoch_of(step),
        "steps": step,
        "resumed_from_step": start,
        "best_checkpoint_step": run.checkpoints.best_step(),
        "num_params": count_params(run.state.params),
        "wall_seconds": wall_seconds,  # of this invocation, set-up and evaluation included
        "train_images_per_sec": record.get("train_images_per_sec"),
        "compile_seconds": record.get("compile_seconds"),
        **environment(),
    }
