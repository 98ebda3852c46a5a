"""The `cnnjax` command line: `cnnjax train|sweep|report|eval|visualize|predict|gradcheck|summary|
models|import-weights|export-weights`.

    cnnjax train --config=configs/lenet5_fashion_mnist.py --workdir=runs/lenet5 \\
        [--config.optimizer.learning_rate=0.002] [--config=configs/x.py:smoke]
    cnnjax sweep --config=experiments/relu_vs_tanh/config.py --workdir=runs/relu_vs_tanh \\
        [--workers=2] [--share_devices] [--dry_run] [--launcher=slurm --slurm_partition=gpu ...]
        [--launcher=inline]   (every run inside this process, one at a time: tests, debugging)
    cnnjax report runs/relu_vs_tanh
    cnnjax eval --workdir=runs/lenet5 [--checkpoint=best|latest|STEP] [--split=test] \\
        [--crops=10 [--crop_padding=2]] [--shift=0,1,2] [--rotate=0,15] [--scale=0.9,1.1] \\
        [--permute_pixels=SEED]
    cnnjax visualize --workdir=runs/lenet5 [--checkpoint=...] [--layers=A,B] [--images=0,1,2] \\
        [--units=0,1] [--top_images=9]
    cnnjax gradcheck --config=configs/lenet5_fashion_mnist.py
    cnnjax summary --config=configs/lenet5_fashion_mnist.py [--depth=2]
    cnnjax models [--json]
    cnnjax import-weights --from=torchvision:resnet50 --file=resnet50.pth --workdir=runs/r50
    cnnjax export-weights --workdir=runs/r50 --file=out.safetensors [--checkpoint=...]
    cnnjax predict --workdir=runs/r50 --inputs=images.npy|FOLDER --output=logits.npy

Problems the user can fix (bad flags, unknown names, missing data, an incompatible workdir)
print one line on stderr and exit with status 2; nothing in the workdir is deleted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging as logging_levels
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cnnjax import cli_flags, fast_paths, files
from cnnjax.config_loader import check_loaded, is_unreadable, parse_error_message
from cnnjax.errors import EXIT_USER_ERROR, TrainingInterrupted, UserError, for_command_line

USAGE = (
    "usage: cnnjax {train,sweep,report,eval,visualize,predict,gradcheck,summary,models,"
    "import-weights,export-weights} [flags]  "
    "(cnnjax COMMAND --help for the flags)"
)


def _fail(command: str, message: str, status: int = EXIT_USER_ERROR) -> None:
    print(f"cnnjax {command}: error: {for_command_line(message)}", file=sys.stderr)
    sys.exit(status)


def _parse_flags(argv: list[str], command: str) -> list[str]:
    """absl's parser, but a bad flag or override is one line, not a usage dump."""
    try:
        remaining = flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001 (anything raised while running get_config)
        _fail(command, parse_error_message(error, "--config"))
    config_flag = flags.FLAGS["config"]
    # A file that could not be read is reported by _config when first used.
    if config_flag.present and not is_unreadable(config_flag.value):
        path = config_flags.get_config_filename(config_flag).split(":", 1)[0]
        try:
            check_loaded(config_flag.value, f"--config {path}")
        except UserError as error:
            _fail(command, str(error))
    return remaining


def _config(command: str = "train"):
    """The parsed config; a file that failed to load is reported when first used."""
    try:
        return check_loaded(cli_flags.CONFIG.value, "--config")
    except UserError as error:
        _fail(command, str(error))


def _train(argv: list[str]) -> None:
    del argv
    if cli_flags.CONFIG.value is None or not cli_flags.WORKDIR.value:
        _fail("train", "--config=FILE and --workdir=DIR are both required")
    config = _config()
    workdir = files.resolve(cli_flags.WORKDIR.value)  # a local path or a URL (gs://bucket/run)
    from cnnjax.train import workdir as workdirs

    # An object store has no empty folders to leave behind.
    created = not files.is_remote(workdir) and not os.path.exists(workdir)
    if cli_flags.DISTRIBUTED.value:  # before anything touches a device
        from cnnjax.parallel import distributed

        distributed.initialize()
        lock = contextlib.nullcontext()  # the first process takes it in train_and_evaluate
    else:
        workdirs.make_workdir(workdir)
        lock = workdirs.hold(workdir)  # before the heavy imports: a second run stops at once
    try:
        with lock:
            from cnnjax.train import train_and_evaluate  # heavy imports only for this command

            if config.train.compilation_cache_dir:  # the command line's choice, not the library's
                fast_paths.enable_compilation_cache(config.train.compilation_cache_dir)

            results = train_and_evaluate(
                config, workdir, allow_config_change=cli_flags.ALLOW_CONFIG_CHANGE.value
            ).results
    finally:
        if created and os.path.isdir(workdir) and not os.listdir(workdir):
            with contextlib.suppress(OSError):  # refused before writing: leave no empty folder
                os.rmdir(workdir)
    import jax

    if jax.process_index() != 0:  # the first process reports for all of them
        return
    print(
        f"\ntest accuracy {results['test_accuracy']:.4f} after {results['epochs']:.1f} epochs "
        f"({results['steps']} steps, {results['wall_seconds']:.0f} s)\n"
        f"  results:     {workdir}/results.json\n"
        f"  metrics:     {workdir}/metrics.jsonl\n"
        f"  checkpoints: {workdir}/checkpoints\n"
        f"  tensorboard: {workdir}/tensorboard   (tensorboard --logdir {workdir}/tensorboard)\n"
        f"  plots:       {workdir}/curves.png"
    )


def _sweep(argv: list[str]) -> None:
    del argv
    if cli_flags.CONFIG.value is None or not cli_flags.WORKDIR.value:
        _fail("sweep", "--config=SWEEP_FILE and --workdir=DIR are both required")
    if cli_flags.WORKERS.value < 1:
        _fail("sweep", f"--workers={cli_flags.WORKERS.value}: give at least 1")
    config = _config("sweep")
    from cnnjax.sweep import command

    # Before abspath turns gs:// into a local path.
    command.refuse_object_store(cli_flags.WORKDIR.value)
    from cnnjax.sweep.slurm_executor import SlurmOptions

    slurm_options = SlurmOptions(
        partition=cli_flags.SLURM_PARTITION.value,
        time=cli_flags.SLURM_TIME.value,
        cpus_per_task=cli_flags.SLURM_CPUS.value,
        gpus_per_task=cli_flags.SLURM_GPUS.value,
        mem=cli_flags.SLURM_MEM.value,
        max_parallel=cli_flags.SLURM_MAX_PARALLEL.value,
        setup=cli_flags.SLURM_SETUP.value,
        signal_seconds=cli_flags.SLURM_SIGNAL_SECONDS.value,
    )
    sys.exit(
        command.sweep(
            config,
            _config_path(),
            os.path.abspath(cli_flags.WORKDIR.value),
            workers=cli_flags.WORKERS.value,
            launcher=cli_flags.LAUNCHER.value,
            dry_run=cli_flags.DRY_RUN.value,
            slurm_options=slurm_options,
            share_devices=cli_flags.SHARE_DEVICES.value,
        )
    )


def _config_path() -> str:
    """The --config file without its `:arg` (ml_collections keeps the arg when it has a '/')."""
    path = config_flags.get_config_filename(flags.FLAGS["config"])
    return path.split(".py:", 1)[0] + ".py" if ".py:" in path else path


def _report(argv: list[str]) -> None:
    directories = argv[1:]
    if len(directories) != 1:
        _fail("report", "give one sweep directory: cnnjax report DIR")
    from cnnjax.sweep import command

    sys.exit(command.report(directories[0]))


def _models(argv: list[str]) -> None:
    del argv
    from cnnjax.models.inventory import describe_models

    rows = describe_models()
    if cli_flags.JSON.value:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<16} {'params':>14} {'MMACs':>10}  input_shape")
    for row in rows:
        shape = "x".join(str(d) for d in row["input_shape"])
        print(f"{row['name']:<16} {row['params']:>14,} {row['macs'] / 1e6:>10,.1f}  {shape}")


def _require_workdir(command: str) -> str:
    if not cli_flags.WORKDIR.value:
        _fail(command, "--workdir=DIR (a `cnnjax train` run) is required")
    return files.resolve(cli_flags.WORKDIR.value)


def _eval(argv: list[str]) -> None:
    del argv
    workdir = _require_workdir("eval")
    from cnnjax.inspect import evaluation_report, invariance, multicrop

    # Checked before the (slower) restore: bad numbers, --crops=3.
    asked = invariance.parse_values(
        shift=cli_flags.SHIFT.value,
        rotate=cli_flags.ROTATE.value,
        scale=cli_flags.SCALE.value,
        permute_pixels=cli_flags.PERMUTE_PIXELS.value,
    )
    crops, crop_padding = cli_flags.CROPS.value, cli_flags.CROP_PADDING.value
    multicrop.check_crops(crops)
    if crop_padding is not None and crops == 1:
        _fail("eval", f"--crop_padding={crop_padding} goes with --crops=2, 5 or 10")
    checkpoint, use_ema = cli_flags.CHECKPOINT.value, cli_flags.USE_EMA.value
    split = cli_flags.SPLIT.value or None
    if crops == 1 and not any(asked.values()):  # the full report of one evaluation
        result = evaluation_report.evaluate_workdir(
            workdir, checkpoint, split=split, use_ema=use_ema
        )
        print(evaluation_report.format_evaluation(result))
        return
    trained = evaluation_report.load_for_evaluation(
        workdir, checkpoint, split=split, use_ema=use_ema
    )
    if crops != 1:
        result = multicrop.evaluate_multicrop(
            trained, crops, crop_padding=crop_padding, use_ema=use_ema, checkpoint=checkpoint
        )
        print(multicrop.format_multicrop(result))
    if any(asked.values()):
        result = invariance.evaluate_invariance(
            trained, **asked, use_ema=use_ema, checkpoint=checkpoint
        )
        print(invariance.format_invariance(result))


def _visualize(argv: list[str]) -> None:
    del argv
    workdir = _require_workdir("visualize")
    try:
        indices = [int(i) for i in cli_flags.IMAGES.value] or None
    except ValueError:
        _fail("visualize", f"--images={','.join(cli_flags.IMAGES.value)}: give indices, e.g. 0,1,2")
    from cnnjax.inspect.visualize import format_visualization, visualize_workdir

    paths = visualize_workdir(
        workdir,
        cli_flags.CHECKPOINT.value,
        layers=cli_flags.LAYERS.value or None,
        image_indices=indices,
        units=cli_flags.UNITS.value or None,
        top_images=cli_flags.TOP_IMAGES.value,
    )
    print(format_visualization(paths))


def _gradcheck(argv: list[str]) -> None:
    del argv
    if cli_flags.CONFIG.value is None:
        _fail("gradcheck", "--config=FILE is required")
    config = _config("gradcheck")
    from cnnjax.inspect.gradcheck import gradcheck_from_config

    report, passed = gradcheck_from_config(
        config,
        batch_size=cli_flags.EXAMPLES.value,
        num_directions=cli_flags.DIRECTIONS.value,
        num_coordinates=cli_flags.COORDINATES.value,
    )
    print(report)
    sys.exit(0 if passed else 1)


def _summary(argv: list[str]) -> None:
    del argv
    if cli_flags.CONFIG.value is None:
        _fail("summary", "--config=FILE is required")
    config = _config("summary")
    from cnnjax.inspect.summary import summary_from_config

    print(summary_from_config(config, depth=cli_flags.DEPTH.value or None))


def _import_weights(argv: list[str]) -> None:
    del argv
    if not (cli_flags.FROM.value and cli_flags.FILE.value and cli_flags.WORKDIR.value):
        _fail("import-weights", "--from=torchvision:ARCH --file=WEIGHTS --workdir=DIR are required")
    from cnnjax.weights import import_weights

    imported = import_weights(
        cli_flags.FROM.value,
        cli_flags.FILE.value,
        files.resolve(cli_flags.WORKDIR.value),
        interpolation=cli_flags.INTERPOLATION.value,
        resize=cli_flags.EVAL_RESIZE.value or None,
    )
    evaluation = imported["evaluation"]
    print(
        f"imported {imported['source']} ({imported['tensors']} tensors, "
        f"{imported['num_classes']} classes) into {cli_flags.WORKDIR.value} as model "
        f"{imported['model']!r}; evaluation: shorter side {evaluation['resize']}, center crop "
        f"{evaluation['crop']}, {evaluation['interpolation']}"
    )


def _export_weights(argv: list[str]) -> None:
    del argv
    workdir = _require_workdir("export-weights")
    if not cli_flags.FILE.value:
        _fail("export-weights", "--file=OUT.safetensors (or OUT.pth) is required")
    from cnnjax.weights import export_weights

    count = export_weights(
        workdir,
        cli_flags.FILE.value,
        checkpoint=cli_flags.CHECKPOINT.value,
        target=cli_flags.TO.value,
    )
    print(f"wrote {count} tensors in {cli_flags.TO.value}'s layout to {cli_flags.FILE.value}")


def _predict(argv: list[str]) -> None:
    del argv
    workdir = _require_workdir("predict")
    if not (cli_flags.INPUTS.value and cli_flags.OUTPUT.value):
        _fail("predict", "--inputs=X.npy|FOLDER and --output=LOGITS.npy are required")
    from cnnjax.inspect.predict import predict

    summary = predict(
        workdir,
        cli_flags.INPUTS.value,
        cli_flags.OUTPUT.value,
        checkpoint=cli_flags.CHECKPOINT.value,
        batch_size=cli_flags.BATCH_SIZE.value,
        use_ema=cli_flags.USE_EMA.value,
    )
    print(
        f"logits [{summary['rows']}, {summary['classes']}] of step {summary['step']} written "
        f"to {cli_flags.OUTPUT.value}"
    )


COMMANDS = {
    "train": _train,
    "sweep": _sweep,
    "report": _report,
    "eval": _eval,
    "visualize": _visualize,
    "gradcheck": _gradcheck,
    "summary": _summary,
    "models": _models,
    "import-weights": _import_weights,
    "export-weights": _export_weights,
    "predict": _predict,
}


def _is_closed_loop(value) -> bool:
    """After a failed asynchronous save, tensorstore's pending writes call back into Orbax's
    closed event loop, and each prints this error from a native thread (as an unraisable
    exception); the failure itself is already reported in one line."""
    return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"


def _quiet_closed_loop(default_hook, kind, value, traceback) -> None:
    if not _is_closed_loop(value):
        default_hook(kind, value, traceback)


def _quiet_closed_loop_unraisable(default_hook, unraisable) -> None:
    if not _is_closed_loop(unraisable.exc_value):
        default_hook(unraisable)


def _quiet_library_output() -> None:
    """Keeps a command's stderr to its own lines; `--verbosity=0` shows everything."""
    if flags.FLAGS["verbosity"].present:
        return
    # Orbax and TFDS log every step of their work at INFO.
    logging.set_verbosity(logging.WARNING)
    absl_logger = logging.get_absl_logger()
    # TFDS suggests OpenCV at every read; Pillow decodes these small images fast enough.
    absl_logger.addFilter(lambda r: "OpenCV is not installed" not in r.getMessage())
    # Orbax warns at each checkpoint saved between evaluations, which carry no metric by design.
    absl_logger.addFilter(lambda r: "did not provide metrics" not in r.getMessage())
    # A failed save (a full disk) makes Orbax's threads log the error with its traceback, once
    # per thread, and its asyncio tasks end with "exception was never retrieved"; the exception
    # reaches cnnjax, which reports it in one line.
    absl_logger.addFilter(lambda r: r.levelno < logging_levels.ERROR or "/orbax/" not in r.pathname)
    logging_levels.getLogger("asyncio").setLevel(logging_levels.CRITICAL)
    sys.excepthook = functools.partial(_quiet_closed_loop, sys.excepthook)
    sys.unraisablehook = functools.partial(_quiet_closed_loop_unraisable, sys.unraisablehook)


def _main(argv: list[str], command: str) -> None:
    _quiet_library_output()
    try:
        COMMANDS[command](argv)
    except TrainingInterrupted as error:  # not a failure: the step is saved, rerun resumes
        print(f"cnnjax {command}: {for_command_line(str(error))}", file=sys.stderr)
        sys.exit(error.exit_status)
    except UserError as error:  # and TrainingDiverged (exit status 3)
        _fail(command, str(error), error.exit_status)


def run() -> None:
    """Entry point of the `cnnjax` console script."""
    # First, before anything starts JAX's backend, which reads XLA_FLAGS once.
    fast_paths.enable()
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    app.run(
        functools.partial(_main, command=command),
        flags_parser=functools.partial(_parse_flags, command=command),
    )


if __name__ == "__main__":
    run()
