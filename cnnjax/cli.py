"""The `cnnjax` command line: `cnnjax train|sweep|report|eval|visualize|predict|gradcheck|summary|
models|import-weights|export-weights`.

    cnnjax train --config=configs/lenet5_fashion_mnist.py --workdir=runs/lenet5 \\
        [--config.optimizer.learning_rate=0.002] [--config=configs/x.py:smoke]
    cnnjax sweep --config=experiments/relu_vs_tanh/config.py --workdir=runs/relu_vs_tanh \\
        [--workers=2] [--share_devices] [--dry_run] [--launcher=slurm --slurm_partition=gpu ...]
    cnnjax report runs/relu_vs_tanh
    cnnjax eval --workdir=runs/lenet5 [--checkpoint=best|latest|STEP] [--split=test]
    cnnjax visualize --workdir=runs/lenet5 [--checkpoint=...] [--layers=A,B] [--images=0,1,2]
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

from cnnjax import fast_paths, files
from cnnjax.config_loader import check_loaded, is_unreadable, parse_error_message
from cnnjax.errors import EXIT_USER_ERROR, TrainingInterrupted, UserError, for_command_line

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file, e.g. configs/lenet5_fashion_mnist.py or file.py:arg=value."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, logs and results; rerun to resume."
)
_JSON = flags.DEFINE_bool("json", False, "models: print a JSON list instead of a table.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "train: one run over several processes/hosts (CNNJAX_COORDINATOR_ADDRESS, "
    "CNNJAX_NUM_PROCESSES, CNNJAX_PROCESS_ID, or SLURM / Cloud TPU detected by JAX).",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "train: resume a run with a config that changes the math (the old config is kept in "
    "config_history/); without it such a resume is refused.",
)
_WORKERS = flags.DEFINE_integer(
    "workers",
    1,
    "sweep: runs at once on this machine, each pinned to its share of the cores and of the GPUs "
    "or TPU chips.",
)
_SHARE_DEVICES = flags.DEFINE_bool(
    "share_devices",
    False,
    "sweep: allow more --workers than GPUs; they share them round-robin, each with an equal part "
    "of a GPU's memory (without it, each worker gets its own GPUs or TPU chips).",
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "sweep: print what would run and start nothing.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "slurm"], "sweep: where runs go.")
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", "", "sweep on SLURM: partition.")
_SLURM_TIME = flags.DEFINE_string("slurm_time", "04:00:00", "sweep on SLURM: time per run.")
_SLURM_CPUS = flags.DEFINE_integer("slurm_cpus_per_task", 4, "sweep on SLURM: CPUs per run.")
_SLURM_GPUS = flags.DEFINE_integer("slurm_gpus_per_task", 0, "sweep on SLURM: GPUs per run.")
_SLURM_MEM = flags.DEFINE_string("slurm_mem", "", "sweep on SLURM: memory per run, e.g. 16G.")
_SLURM_MAX_PARALLEL = flags.DEFINE_integer(
    "slurm_max_parallel", 0, "sweep on SLURM: array tasks at once (0: no limit)."
)
_SLURM_SIGNAL_SECONDS = flags.DEFINE_integer(
    "slurm_signal_seconds",
    120,
    "sweep on SLURM: SIGTERM this long before the time limit; the run saves and is requeued.",
)
_SLURM_SETUP = flags.DEFINE_string(
    "slurm_setup", "", "sweep on SLURM: shell line each task runs first (module load ...)."
)

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    "best",
    "eval/visualize/predict/export-weights: best (by test accuracy), latest, or a step number.",
)
_SPLIT = flags.DEFINE_string("split", "", "eval: a TFDS split instead of the run's eval split.")
_USE_EMA = flags.DEFINE_bool("use_ema", False, "eval: the EMA of the weights (train.ema_decay).")
_LAYERS = flags.DEFINE_list("layers", [], "visualize: layers for feature maps, e.g. ConvBlock_1.")
_IMAGES = flags.DEFINE_list("images", [], "visualize: indices of eval-split images to show.")
_EXAMPLES = flags.DEFINE_integer("examples", 4, "gradcheck: training examples in the batch.")
_DIRECTIONS = flags.DEFINE_integer("directions", 4, "gradcheck: random directions checked.")
_COORDINATES = flags.DEFINE_integer("coordinates", 8, "gradcheck: single parameters checked.")
_DEPTH = flags.DEFINE_integer("depth", 0, "summary: fold modules deeper than this (0: all).")
_FROM = flags.DEFINE_string(
    "from", None, "import-weights: torchvision:ARCH or timm:ARCH, e.g. torchvision:resnet50."
)
_FILE = flags.DEFINE_string(
    "file", None, "import-weights / export-weights: the .safetensors or .pth state dict."
)
_TO = flags.DEFINE_enum("to", "torchvision", ["torchvision"], "export-weights: the layout.")
_INTERPOLATION = flags.DEFINE_enum(
    "interpolation",
    "bilinear",
    ["bilinear", "bicubic"],
    "import-weights: the resize of the weights' evaluation transform (timm's are often bicubic).",
)
_EVAL_RESIZE = flags.DEFINE_integer(
    "eval_resize",
    0,
    "import-weights: shorter side before the center crop (0: the architecture's, 256 or 342).",
)
_INPUTS = flags.DEFINE_string(
    "inputs", None, "predict: an .npy of preprocessed images [N, H, W, C], or a folder of images."
)
_OUTPUT = flags.DEFINE_string("output", None, "predict: where the logits go (.npy).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "predict: images per batch.")

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
        return check_loaded(_CONFIG.value, "--config")
    except UserError as error:
        _fail(command, str(error))


def _train(argv: list[str]) -> None:
    del argv
    if _CONFIG.value is None or not _WORKDIR.value:
        _fail("train", "--config=FILE and --workdir=DIR are both required")
    config = _config()
    workdir = files.resolve(_WORKDIR.value)  # a local path or a URL (gs://bucket/run)
    from cnnjax.train import workdir as workdirs

    # An object store has no empty folders to leave behind.
    created = not files.is_remote(workdir) and not os.path.exists(workdir)
    if _DISTRIBUTED.value:  # before anything touches a device
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
                config, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value
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
    if _CONFIG.value is None or not _WORKDIR.value:
        _fail("sweep", "--config=SWEEP_FILE and --workdir=DIR are both required")
    if _WORKERS.value < 1:
        _fail("sweep", f"--workers={_WORKERS.value}: give at least 1")
    config = _config("sweep")
    from cnnjax.sweep import command

    command.refuse_object_store(_WORKDIR.value)  # before abspath turns gs:// into a local path
    from cnnjax.sweep.slurm_executor import SlurmOptions

    slurm_options = SlurmOptions(
        partition=_SLURM_PARTITION.value,
        time=_SLURM_TIME.value,
        cpus_per_task=_SLURM_CPUS.value,
        gpus_per_task=_SLURM_GPUS.value,
        mem=_SLURM_MEM.value,
        max_parallel=_SLURM_MAX_PARALLEL.value,
        setup=_SLURM_SETUP.value,
        signal_seconds=_SLURM_SIGNAL_SECONDS.value,
    )
    sys.exit(
        command.sweep(
            config,
            _config_path(),
            os.path.abspath(_WORKDIR.value),
            workers=_WORKERS.value,
            launcher=_LAUNCHER.value,
            dry_run=_DRY_RUN.value,
            slurm_options=slurm_options,
            share_devices=_SHARE_DEVICES.value,
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
    if _JSON.value:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<16} {'params':>14} {'MMACs':>10}  input_shape")
    for row in rows:
        shape = "x".join(str(d) for d in row["input_shape"])
        print(f"{row['name']:<16} {row['params']:>14,} {row['macs'] / 1e6:>10,.1f}  {shape}")


def _require_workdir(command: str) -> str:
    if not _WORKDIR.value:
        _fail(command, "--workdir=DIR (a `cnnjax train` run) is required")
    return files.resolve(_WORKDIR.value)


def _eval(argv: list[str]) -> None:
    del argv
    workdir = _require_workdir("eval")
    from cnnjax.inspect.evaluation_report import evaluate_workdir, format_evaluation

    result = evaluate_workdir(
        workdir, _CHECKPOINT.value, split=_SPLIT.value or None, use_ema=_USE_EMA.value
    )
    print(format_evaluation(result))


def _visualize(argv: list[str]) -> None:
    del argv
    workdir = _require_workdir("visualize")
    try:
        indices = [int(i) for i in _IMAGES.value] or None
    except ValueError:
        _fail("visualize", f"--images={','.join(_IMAGES.value)}: give indices, e.g. 0,1,2")
    from cnnjax.inspect.visualize import format_visualization, visualize_workdir

    paths = visualize_workdir(
        workdir, _CHECKPOINT.value, layers=_LAYERS.value or None, image_indices=indices
    )
    print(format_visualization(paths))


def _gradcheck(argv: list[str]) -> None:
    del argv
    if _CONFIG.value is None:
        _fail("gradcheck", "--config=FILE is required")
    config = _config("gradcheck")
    from cnnjax.inspect.gradcheck import gradcheck_from_config

    report, passed = gradcheck_from_config(
        config,
        batch_size=_EXAMPLES.value,
        num_directions=_DIRECTIONS.value,
        num_coordinates=_COORDINATES.value,
    )
    print(report)
    sys.exit(0 if passed else 1)


def _summary(argv: list[str]) -> None:
    del argv
    if _CONFIG.value is None:
        _fail("summary", "--config=FILE is required")
    config = _config("summary")
    from cnnjax.inspect.summary import summary_from_config

    print(summary_from_config(config, depth=_DEPTH.value or None))


def _import_weights(argv: list[str]) -> None:
    del argv
    if not (_FROM.value and _FILE.value and _WORKDIR.value):
        _fail("import-weights", "--from=torchvision:ARCH --file=WEIGHTS --workdir=DIR are required")
    from cnnjax.weights import import_weights

    imported = import_weights(
        _FROM.value,
        _FILE.value,
        files.resolve(_WORKDIR.value),
        interpolation=_INTERPOLATION.value,
        resize=_EVAL_RESIZE.value or None,
    )
    evaluation = imported["evaluation"]
    print(
        f"imported {imported['source']} ({imported['tensors']} tensors, "
        f"{imported['num_classes']} classes) into {_WORKDIR.value} as model "
        f"{imported['model']!r}; evaluation: shorter side {evaluation['resize']}, center crop "
        f"{evaluation['crop']}, {evaluation['interpolation']}"
    )


def _export_weights(argv: list[str]) -> None:
    del argv
    workdir = _require_workdir("export-weights")
    if not _FILE.value:
        _fail("export-weights", "--file=OUT.safetensors (or OUT.pth) is required")
    from cnnjax.weights import export_weights

    count = export_weights(workdir, _FILE.value, checkpoint=_CHECKPOINT.value, target=_TO.value)
    print(f"wrote {count} tensors in {_TO.value}'s layout to {_FILE.value}")


def _predict(argv: list[str]) -> None:
    del argv
    workdir = _require_workdir("predict")
    if not (_INPUTS.value and _OUTPUT.value):
        _fail("predict", "--inputs=X.npy|FOLDER and --output=LOGITS.npy are required")
    from cnnjax.inspect.predict import predict

    summary = predict(
        workdir,
        _INPUTS.value,
        _OUTPUT.value,
        checkpoint=_CHECKPOINT.value,
        batch_size=_BATCH_SIZE.value,
        use_ema=_USE_EMA.value,
    )
    print(
        f"logits [{summary['rows']}, {summary['classes']}] of step {summary['step']} written "
        f"to {_OUTPUT.value}"
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
