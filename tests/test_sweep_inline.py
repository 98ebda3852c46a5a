"""`cnnjax sweep --launcher=inline`: the runs of a sweep trained one after another in this process
(cnnjax/sweep/inline_executor.py), with the worker's bookkeeping and the subprocess's numbers.

One tiny sweep (a run of 6 steps and one that fails at its data check) is run inline once for
the module; the tests compare it with the `--launcher=local` subprocess's run (bitwise), rerun
it, and stop and resume a copy of its good run."""

import json
import os
import shutil
import signal
import types

import jax
import numpy as np
import pytest

from cnnjax.config_loader import load_config
from cnnjax.errors import UserError
from cnnjax.sweep import command as sweep_command
from cnnjax.sweep import inline_executor
from cnnjax.sweep import status as run_status
from cnnjax.sweep.plan import make_plan
from cnnjax.sweep.worker import ALREADY_RUNNING
from tests.conftest import (
    INVOCATION_KEYS,
    RECIPE,
    TEST_DATA_DIR,
    final_checkpoint_state,
    run_cnnjax,
    signal_at_step,
)

# 384 images in batches of 128 for 2 epochs: 6 steps, with dropout, flips and crops (so that
# the per-step keys and the batch order are compared too) and a checkpoint every 2 steps. The
# first arm's batch cannot be filled from 384 images: it fails at its data check.
TINY_SWEEP = """\
import ml_collections


def get_config():
    s = ml_collections.ConfigDict()
    s.base = {recipe!r}
    s.overrides = {{
        "model": {{"dropout_rate": 0.2}},
        "data": {{
            "train_split": "train[:384]",
            "eval_split": "test[:200]",
            "augment": {{"horizontal_flip": True, "random_crop_padding": 2}},
        }},
        "train": {{"epochs": 2, "log_every_steps": 1, "checkpoint_every_steps": 2}},
    }}
    s.axes = [{{"_name": "batch", "_labels": {labels!r}, "data.batch_size": {sizes!r}}}]
    s.seeds = (0,)
    s.report = {{"metrics": ("test_accuracy", "train_accuracy")}}
    return s
"""
GOOD_ARM, FAILING_ARM = "batch=128", "batch=too_big"


def _write_sweep(folder, *, with_failing_arm: bool = True) -> str:
    labels, sizes = (("too_big", "128"), (100000, 128)) if with_failing_arm else (("128",), (128,))
    path = os.path.join(folder, "failing_and_good.py" if with_failing_arm else "good.py")
    with open(path, "w") as f:
        f.write(TINY_SWEEP.format(recipe=RECIPE + ":smoke", labels=labels, sizes=sizes))
    return path


def _inline(config_file: str, sweep_dir: str) -> int:
    config = load_config(config_file)
    return sweep_command.sweep(
        config, config_file, sweep_dir, workers=1, launcher="inline", dry_run=False
    )


def _runs(sweep_dir) -> dict:
    """{arm: run of sweep.json}."""
    with open(os.path.join(sweep_dir, "sweep.json")) as f:
        return {run["arm"]: run for run in json.load(f)["runs"]}


def _results(workdir) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def _curves(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in row.items() if k != "images_per_sec"} for row in rows]


def _assert_same_run(reference: str, other: str) -> dict:
    """`other`'s results, curves and final state (bitwise) equal `reference`'s; returns its
    results."""
    expected, actual = _results(reference), _results(other)
    assert {k: actual[k] for k in set(expected) - INVOCATION_KEYS} == {
        k: expected[k] for k in set(expected) - INVOCATION_KEYS
    }
    assert _curves(other) == _curves(reference)
    step_a, state_a = final_checkpoint_state(os.path.join(reference, "checkpoints"))
    step_b, state_b = final_checkpoint_state(os.path.join(other, "checkpoints"))
    assert step_a == step_b == expected["steps"] == 6
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)
    return actual


@pytest.fixture(scope="module")
def inline_sweep(tmp_path_factory, data_dir):
    """The tiny sweep run inline once: its folder, exit status, runs and printed output."""
    folder = tmp_path_factory.mktemp("inline_sweep")
    config_file = _write_sweep(str(folder))
    sweep_dir = str(folder / "sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFDS_DATA_DIR", data_dir)  # the runs read it, as `cnnjax train` does
        status = _inline(config_file, sweep_dir)
    return types.SimpleNamespace(
        config_file=config_file, sweep_dir=sweep_dir, status=status, runs=_runs(sweep_dir)
    )


def test_a_failing_run_is_recorded_and_the_next_one_runs(inline_sweep):
    assert inline_sweep.status == 1
    assert list(inline_sweep.runs) == [FAILING_ARM, GOOD_ARM]  # in this order
    failing = run_status.read_status(inline_sweep.runs[FAILING_ARM]["workdir"])
    good = run_status.read_status(inline_sweep.runs[GOOD_ARM]["workdir"])
    assert (failing["state"], failing["returncode"], failing["attempts"]) == ("failed", 2, 1)
    # The one line `cnnjax train` prints for it, in the status and at the end of the run's log.
    assert failing["error"].startswith(
        "cnnjax train: error: the training split has 384 examples, fewer than one batch"
    )
    with open(os.path.join(inline_sweep.runs[FAILING_ARM]["workdir"], "sweep_log.txt")) as f:
        log = f.read()
    assert "=== attempt 1 (inline): " in log and log.rstrip().endswith(failing["error"])
    assert (good["state"], good["returncode"], good["attempts"], good["launcher"]) == (
        "done",
        0,
        1,
        "inline",
    )
    results = _results(inline_sweep.runs[GOOD_ARM]["workdir"])
    assert results["steps"] == 6 and 0.0 <= results["test_accuracy"] <= 1.0
    with open(os.path.join(inline_sweep.sweep_dir, "report", "summary.json")) as f:
        assert json.load(f)["progress"] == "PARTIAL: 1 of 2 runs done (1 failed)"


def test_an_inline_run_equals_the_subprocess_launchers_run_bitwise(inline_sweep, tmp_path):
    # Both on this process's cores (--workers=1), with the XLA flags conftest set like `cnnjax`
    # does: XLA:CPU is deterministic on one machine with one thread count, so the numbers match
    # to the bit.
    config_file = _write_sweep(str(tmp_path), with_failing_arm=False)
    sweep_dir = str(tmp_path / "sweep")
    result = run_cnnjax("sweep", f"--config={config_file}", f"--workdir={sweep_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    subprocess_run = _runs(sweep_dir)[GOOD_ARM]
    inline_run = inline_sweep.runs[GOOD_ARM]
    assert subprocess_run["run_id"] == inline_run["run_id"]  # the same resolved config
    assert "launcher" not in run_status.read_status(subprocess_run["workdir"])
    _assert_same_run(subprocess_run["workdir"], inline_run["workdir"])


def test_rerunning_skips_done_runs_and_retries_failed_ones(inline_sweep, tmp_path, monkeypatch):
    sweep_dir = str(tmp_path / "sweep")
    shutil.copytree(inline_sweep.sweep_dir, sweep_dir)  # copy2: results.json keeps its mtime
    good = os.path.join(sweep_dir, "runs", inline_sweep.runs[GOOD_ARM]["run_id"])
    failing = os.path.join(sweep_dir, "runs", inline_sweep.runs[FAILING_ARM]["run_id"])
    finished_at = os.path.getmtime(os.path.join(good, "results.json"))
    monkeypatch.setenv("TFDS_DATA_DIR", TEST_DATA_DIR)

    assert _inline(inline_sweep.config_file, sweep_dir) == 1

    assert run_status.read_status(good)["attempts"] == 1
    assert os.path.getmtime(os.path.join(good, "results.json")) == finished_at
    retried = run_status.read_status(failing)
    assert (retried["state"], retried["attempts"]) == ("failed", 2)
    with open(os.path.join(failing, "sweep_log.txt")) as f:
        assert f.read().count("=== attempt ") == 2  # appended across attempts


def test_a_sigterm_is_recorded_as_interrupted_and_the_rerun_resumes_bitwise(
    inline_sweep, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TFDS_DATA_DIR", TEST_DATA_DIR)
    config_file = _write_sweep(str(tmp_path), with_failing_arm=False)
    sweep_dir = str(tmp_path / "sweep")
    with pytest.MonkeyPatch.context() as patch:
        signal_at_step(patch, 3, signal.SIGTERM)  # the run's own handler saves step 3
        assert _inline(config_file, sweep_dir) == 130
    workdir = _runs(sweep_dir)[GOOD_ARM]["workdir"]
    stopped = run_status.read_status(workdir)
    assert (stopped["state"], stopped["returncode"]) == ("interrupted", 143)
    assert stopped["message"].startswith("cnnjax train: interrupted by SIGTERM at step 3 of 6")
    assert run_status.run_state(workdir)[0] == run_status.INTERRUPTED
    assert "interrupted: rerun the same command to resume" in capsys.readouterr().out

    assert _inline(config_file, sweep_dir) == 0

    resumed = run_status.read_status(workdir)
    assert (resumed["state"], resumed["attempts"]) == ("done", 2)
    results = _assert_same_run(inline_sweep.runs[GOOD_ARM]["workdir"], workdir)
    assert results["resumed_from_step"] == 3


def _plan_of_one_run(tmp_path):
    config_file = _write_sweep(str(tmp_path), with_failing_arm=False)
    return make_plan(load_config(config_file), str(tmp_path / "sweep"), sweep_file=config_file)


def test_a_run_that_raises_is_recorded_failed_with_its_exception(tmp_path, monkeypatch):
    (run,) = _plan_of_one_run(tmp_path).runs

    def crash(run):
        raise RuntimeError("a bug in the library\nsecond line")

    monkeypatch.setattr(inline_executor, "_train", crash)
    assert inline_executor.run_one(run) == 1  # what a process ending in a traceback exits with
    status = run_status.read_status(run.workdir)
    assert (status["state"], status["returncode"]) == ("failed", 1)
    assert status["error"] == "RuntimeError: a bug in the library"
    with open(os.path.join(run.workdir, "sweep_log.txt")) as f:
        assert "Traceback (most recent call last)" in f.read()


def test_a_run_held_by_another_process_is_left_alone(tmp_path):
    (run,) = _plan_of_one_run(tmp_path).runs
    held = run_status.try_lock(run.workdir)  # a second open file: flock conflicts as across
    try:
        assert inline_executor.run_one(run) == ALREADY_RUNNING
    finally:
        held.close()
    assert run_status.read_status(run.workdir) == {}  # not touched


def test_the_command_it_stands_for_is_parsed_back_exactly(tmp_path):
    (run,) = _plan_of_one_run(tmp_path).runs
    recipe, workdir, overrides = inline_executor.train_arguments(run)
    assert (recipe, workdir) == (RECIPE + ":smoke", run.workdir)
    assert "--config.data.batch_size=128" in overrides and "--config.seed=0" in overrides
    assert len(overrides) == len(run.train_args) - 3
    bad = types.SimpleNamespace(run_id="x", train_args=("train", f"--config={RECIPE}", "--dry"))
    with pytest.raises(ValueError, match="'--dry' is not a `cnnjax train` config argument"):
        inline_executor.train_arguments(bad)


def test_inline_runs_one_at_a_time_and_its_dry_run_starts_nothing(tmp_path, capsys):
    config_file = _write_sweep(str(tmp_path))
    config, sweep_dir = load_config(config_file), str(tmp_path / "sweep")
    with pytest.raises(UserError, match=r"drop --workers=2 or use --launcher=local"):
        sweep_command.sweep(
            config, config_file, sweep_dir, workers=2, launcher="inline", dry_run=False
        )
    with pytest.raises(UserError, match=r"unknown --launcher='ray': use local, slurm, inline"):
        sweep_command.sweep(config, config_file, sweep_dir, workers=1, launcher="ray", dry_run=True)
    capsys.readouterr()
    status = sweep_command.sweep(
        config, config_file, sweep_dir, workers=1, launcher="inline", dry_run=True
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "2 runs, one after another in this process" in out
    assert out.count("-m cnnjax.cli train --config=") == 2
    assert not os.path.exists(os.path.join(sweep_dir, "sweep.json"))
