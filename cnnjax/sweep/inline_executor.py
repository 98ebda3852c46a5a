"""Runs a sweep's runs one after another in this process (`cnnjax sweep --launcher=inline`).

Each run is `cnnjax.train_and_evaluate` on the config that its `cnnjax train` command would
load (the same `--config=FILE:ARG --config.KEY=VALUE` strings, parsed by `load_config`), with
the bookkeeping of cnnjax/sweep/worker.py: a done run is skipped, one held by another process is
left alone, an interrupted one resumes from its checkpoint, `sweep_status.json` records the
state, attempts, wall time and a failure's one line, and the run's output is appended to
`sweep_log.txt`. A failing run is recorded and the next one starts.

What it saves: nothing is imported or started per run, and runs of one shape load their compiled
steps from the compilation cache that `cnnjax train` enables (train.compilation_cache_dir),
instead of a new process importing JAX and compiling (3-10 s of CPU a run).

What it gives up, so it is for tests, debugging and tiny sweeps, not for studies:
- no isolation: a run that crashes the interpreter (out of memory, a fatal XLA error) ends the
  sweep, and the runs share one Python heap and JAX's caches;
- one run at a time, on every core this process may use (the cores of `--workers=1`), on the
  devices this process sees;
- a SIGTERM or SIGINT during training saves the run's current step, records it as interrupted
  and stops the sweep (KeyboardInterrupt); the next `cnnjax sweep` resumes it.

It computes what a `cnnjax train` process computes on the same cores: the same config, the same
XLA flags (`fast_paths.enable()`, which the `cnnjax` command and the test suite call before JAX
starts; a process that started JAX without them computes with XLA's own choices), and the same
compilation cache. tests/test_sweep_inline.py checks a run's parameters bitwise against the
`--launcher=local` subprocess's.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence

from cnnjax import fast_paths
from cnnjax.errors import TrainingInterrupted, UserError, for_command_line
from cnnjax.errors import describe as describe_error
from cnnjax.sweep import status as run_status
from cnnjax.sweep.plan import RunSpec, shell_line
from cnnjax.sweep.worker import ALREADY_RUNNING

# `cnnjax train`'s exit status for an exception it does not turn into one line (absl's app.run).
_UNCAUGHT_STATUS = 1


def train_arguments(run: RunSpec) -> tuple[str, str, list[str]]:
    """(recipe `FILE[:ARG]`, workdir, `--config.KEY=VALUE` overrides) of the run's command."""
    command, *args = run.train_args
    recipe = workdir = None
    overrides = []
    for arg in args:
        if arg.startswith("--config="):
            recipe = arg.removeprefix("--config=")
        elif arg.startswith("--workdir="):
            workdir = arg.removeprefix("--workdir=")
        elif arg.startswith("--config."):
            overrides.append(arg)
        else:
            raise ValueError(f"{run.run_id}: {arg!r} is not a `cnnjax train` config argument")
    if command != "train" or recipe is None or workdir is None:
        raise ValueError(f"{run.run_id}: {shell_line(list(run.train_args))} is not a training run")
    return recipe, workdir, overrides


def describe(runs: Sequence[RunSpec]) -> str:
    """The dry run's plan: each run's equivalent `cnnjax train` command, in order."""
    lines = [f"{len(runs)} runs, one after another in this process"]
    for index, run in enumerate(runs):
        lines.append(f"[{index}] {run.run_id}\n    {shell_line(run.command())}")
    return "\n".join(lines)


@contextlib.contextmanager
def _output_to(log) -> Iterator[None]:
    """Sends this process's stdout and stderr into `log` for the block: Python's streams and
    the file descriptors 1 and 2, which native code (XLA, TensorFlow) writes to."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        log.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for handle in saved:
            os.close(handle)


def _train(run: RunSpec) -> dict:
    """What `cnnjax train` does for the run, in this process; returns its results."""
    from cnnjax.config_loader import load_config
    from cnnjax.train.loop import train_and_evaluate

    recipe, workdir, overrides = train_arguments(run)
    config = load_config(recipe, overrides)
    if config.train.compilation_cache_dir:  # as `cnnjax train` does at its start
        fast_paths.enable_compilation_cache(config.train.compilation_cache_dir)
    results = train_and_evaluate(config, workdir).results
    print(
        f"\ntest accuracy {results['test_accuracy']:.4f} after {results['epochs']:.1f} epochs "
        f"({results['steps']} steps, {results['wall_seconds']:.0f} s)"
    )
    return results


def run_one(run: RunSpec) -> int:
    """Trains `run` in this process unless it is done or held; returns the exit status its
    `cnnjax train` command would have had (ALREADY_RUNNING when another process holds it).
    Raises KeyboardInterrupt after recording a run stopped by SIGTERM or SIGINT."""
    lock = run_status.try_lock(run.workdir)
    if lock is None:
        print(f"{run.workdir}: another process is running it; leaving it alone", file=sys.stderr)
        return ALREADY_RUNNING
    with contextlib.closing(lock):
        state, previous = run_status.run_state(run.workdir, holding_lock=True)
        if state == run_status.DONE:
            return 0
        attempts = int(previous.get("attempts", 0)) + 1
        run_status.write_status(
            run.workdir,
            state=run_status.RUNNING,
            attempts=attempts,
            pid=os.getpid(),
            command=run.command(),
            launcher="inline",
            started=time.time(),
            error=None,
            message=None,
            returncode=None,
        )
        start = time.perf_counter()
        with open(os.path.join(run.workdir, run_status.LOG_FILE), "a") as log:
            log.write(f"\n=== attempt {attempts} (inline): {shell_line(run.command())}\n")
            outcome = _attempt(run, log)
        returncode, fields = outcome
        run_status.write_status(
            run.workdir, returncode=returncode, seconds=time.perf_counter() - start, **fields
        )
    if fields["state"] == run_status.INTERRUPTED:
        raise KeyboardInterrupt(fields["message"])
    return returncode


def _attempt(run: RunSpec, log) -> tuple[int, dict]:
    """(exit status, status fields) of one attempt at `run`, its output in `log`."""
    try:
        with _output_to(log):
            _train(run)
    except TrainingInterrupted as error:  # its step is saved: the next sweep resumes it
        message = f"cnnjax train: {for_command_line(str(error))}"
        log.write(message + "\n")
        return error.exit_status, {"state": run_status.INTERRUPTED, "message": message}
    except UserError as error:  # and TrainingDiverged: one line, as the command prints it
        line = f"cnnjax train: error: {for_command_line(str(error))}"
        log.write(line + "\n")
        return error.exit_status, {"state": run_status.FAILED, "error": line}
    except KeyboardInterrupt:  # Ctrl-C before or after the training loop: nothing new saved
        message = "interrupted by SIGINT outside training; rerun the sweep to resume"
        log.write(message + "\n")
        return 130, {"state": run_status.INTERRUPTED, "message": message}
    except Exception as error:  # noqa: BLE001 (recorded like a crashed process; the sweep goes on)
        log.write(traceback.format_exc())
        return _UNCAUGHT_STATUS, {"state": run_status.FAILED, "error": describe_error(error)}
    return 0, {"state": run_status.DONE}


def run_all(
    runs: Sequence[RunSpec], on_finish: Callable[[RunSpec, int], None] | None = None
) -> dict[str, int]:
    """Runs `runs` one after another in this process; returns {run_id: exit status}.

    `on_finish(run, returncode)` is called as each run ends (e.g. to refresh the report). A run
    stopped by SIGTERM or SIGINT is recorded as interrupted, `on_finish` is called, and
    KeyboardInterrupt stops the rest.
    """
    fast_paths.enable()  # a no-op once JAX has started: entry points call it first
    codes: dict[str, int] = {}
    for run in runs:
        os.makedirs(run.workdir, exist_ok=True)
        try:
            codes[run.run_id] = run_one(run)
        except KeyboardInterrupt:
            codes[run.run_id] = run_status.read_status(run.workdir).get("returncode") or 130
            if on_finish:
                on_finish(run, codes[run.run_id])
            raise
        if on_finish:
            on_finish(run, codes[run.run_id])
    return codes
