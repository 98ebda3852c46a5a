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
import jax.numpy as jnp
import ml_collections
from tqdm import tqdm

from cnnjax import fast_paths, models, parallel
from cnnjax.config_checks import validate_config
from cnnjax.data.inputs import make_input
from cnnjax.errors import UserError
from cnnjax.metrics import MetricWriter, NullWriter, plot_curves, read_metrics
from cnnjax.train import finetune, steps
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
        self.checkpoints = RunCheckpoints(workdir, keep_best=config.train.keep_best_checkpoints)

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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the results.

    Writes config.json, metrics.jsonl, TensorBoard events, curves.png, checkpoints/ and
    results.json into `workdir`.
    """
    wall_start = time.perf_counter()
    if config.train.compilation_cache_dir:
        fast_paths.enable_compilation_cache(config.train.compilation_cache_dir)
    run = Run(config, workdir)
    record = run.restore()  # before writing anything: a wrong workdir must lose nothing
    if not record and config.init_from:  # a new fine-tuning run (a resumed one has its weights)
        state, report = finetune.initialize_from(jax.device_get(run.state), config)
        run.state = parallel.replicate(state, run.mesh)
        if run.is_main:
            print(report, flush=True)
    start = int(run.state.step)
    if run.is_main:  # on many hosts, the first process writes the files
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    writer = MetricWriter(workdir, resume_step=start) if run.is_main else NullWriter()
    try:
        record = _train(run, record, start, writer)
    finally:
        writer.close()
        run.checkpoints.wait()
        run.checkpoints.close()
    results = _results(run, record, start, time.perf_counter() - wall_start)
    if run.is_main:
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
                if run.is_main:
                    tqdm.write(
                        f"epoch {run.epoch_of(done):.2f}: test accuracy "
                        f"{record['last_test']['accuracy']:.4f}, "
                        f"loss {record['last_test']['loss']:.4f}"
                    )
            # Saved at evaluations (ranked among the best) and on the usual cadence: epochs of a
            # few steps (fine-tuning on small data) would otherwise spend their time saving.
            if metrics_for_best or done % cfg.checkpoint_every_steps == 0:
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
        **({"test_accuracy_ema": test["ema_accuracy"]} if "ema_accuracy" in test else {}),
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
        "num_devices": int(run.mesh.devices.size),
        "num_processes": jax.process_count(),
        "compute_dtype": config.train.compute_dtype,
        **environment(),
    }
