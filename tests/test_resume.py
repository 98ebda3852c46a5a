"""kill -9, SIGTERM or SIGINT at a random point, rerun the same command: the numbers of a run
that never stopped.

The reference run and the resumes train in this process (`cnnjax.train_and_evaluate`, the
command's own function); the runs interrupted from outside are `cnnjax train` processes, so that
a resume also proves that another process continues bitwise where one stopped."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import (
    INVOCATION_KEYS,
    ROOT,
    TEST_DATA_DIR,
    final_checkpoint_state,
    resume_command,
    resume_config,
    signal_at_step,
)

from cnnjax.errors import TrainingInterrupted
from cnnjax.train import train_and_evaluate

VOLATILE = INVOCATION_KEYS


def _final_params(workdir):
    return final_checkpoint_state(os.path.join(workdir, "checkpoints"))


def _start(workdir, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    env = dict(os.environ, TFDS_DATA_DIR=TEST_DATA_DIR)
    return subprocess.Popen(
        [sys.executable, "-m", "cnnjax.cli", *resume_command(workdir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def _wait_for_a_checkpoint(process, workdir) -> None:
    checkpoints = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints)):
            return
        time.sleep(0.01)


def _resume(workdir) -> dict:
    """Reruns the same run in `workdir` (in this process); returns its results."""
    return train_and_evaluate(resume_config(), str(workdir)).results


def _assert_same_run(reference, resumed) -> dict:
    """The resumed run's results, final state (bitwise) and curves equal the reference's."""
    expected = json.loads((reference / "results.json").read_text())
    actual = json.loads((resumed / "results.json").read_text())
    for key in set(expected) - VOLATILE:
        assert actual[key] == expected[key], key

    step_a, state_a = _final_params(reference)
    step_b, state_b = _final_params(resumed)
    assert step_a == step_b == expected["steps"]
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise

    def curves(workdir):
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in rows]

    assert curves(resumed) == curves(reference)
    return actual


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, reference_run):
    resumed = tmp_path / "resumed"
    seed = time.time_ns()
    process = _start(resumed)
    _wait_for_a_checkpoint(process, resumed)
    time.sleep(random.Random(seed).uniform(0.0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"seed {seed}"
    assert not (resumed / "results.json").exists()  # it really died before the end
    assert (resumed / ".train.lock").exists()  # left by the killed holder: must not block
    assert _resume(resumed)["resumed_from_step"] > 0
    assert _assert_same_run(reference_run, resumed)["resumed_from_step"] > 0


def _assert_stopped_at(stderr: str, resumed, name: str, context: str) -> int:
    """The one line of a run stopped by signal `name`; returns the step it saved."""
    assert "Traceback" not in stderr and stderr.count("cnnjax train:") == 1, context
    match = re.search(
        rf"cnnjax train: interrupted by {name} at step (\d+) of 60: checkpoint (\d+) is saved in "
        rf"{re.escape(str(resumed))}/checkpoints; rerun the same command to resume",
        stderr,
    )
    assert match and match.group(1) == match.group(2), context
    step = int(match.group(1))
    # Zero steps lost: the step the process had reached when the signal came is on disk.
    assert _final_params(resumed)[0] == step, context
    assert not (resumed / "results.json").exists()
    return step


def test_sigterm_saves_the_step_reached_and_the_resume_is_bitwise(tmp_path, reference_run):
    seed = time.time_ns()
    resumed = tmp_path / "resumed"
    process = _start(resumed, stderr=subprocess.PIPE)
    _wait_for_a_checkpoint(process, resumed)
    # Within the run's last 53 steps (about 1.5 s on 2 cores): the SIGINT test below reaches
    # every step.
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    context = f"seed {seed}: {stderr[-2000:]}"
    assert process.returncode == 128 + signal.SIGTERM, context
    step = _assert_stopped_at(stderr, resumed, "SIGTERM", context)
    assert _resume(resumed)["resumed_from_step"] == step
    _assert_same_run(reference_run, resumed)


def test_sigint_at_any_step_saves_it_and_the_resume_is_bitwise(
    tmp_path, reference_run, monkeypatch
):
    # Ctrl-C, in this process at a random step (the command prints the same line and exits
    # with the error's status: the SIGTERM test above).
    step = random.Random(time.time_ns()).randint(1, 59)
    resumed = tmp_path / "resumed"
    signal_at_step(monkeypatch, step, signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stopped:
        train_and_evaluate(resume_config(), str(resumed))
    monkeypatch.undo()
    context = f"step {step}: {stopped.value}"
    assert stopped.value.exit_status == 130 and stopped.value.step == step, context
    assert _assert_stopped_at(f"cnnjax train: {stopped.value}", resumed, "SIGINT", context) == step
    assert _resume(resumed)["resumed_from_step"] == step
    _assert_same_run(reference_run, resumed)


def test_rerunning_a_finished_run_trains_nothing_and_reports_the_same(tmp_path, reference_run):
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    first = json.loads((workdir / "results.json").read_text())
    metrics = (workdir / "metrics.jsonl").read_text()
    again = _resume(workdir)
    assert again["resumed_from_step"] == 60 and again["steps"] == 60
    assert {k: v for k, v in again.items() if k not in VOLATILE} == {
        k: v for k, v in first.items() if k not in VOLATILE
    }
    assert (workdir / "metrics.jsonl").read_text() == metrics
