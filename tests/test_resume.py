"""kill -9, SIGTERM or SIGINT at a random point, rerun the same command: the numbers of a run
that never stopped."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import RECIPE, ROOT, TEST_DATA_DIR, resume_command, run_cnnjax

# Facts of an invocation, not of the trained model.
VOLATILE = {
    "wall_seconds",
    "train_images_per_sec",
    "compile_seconds",
    "resumed_from_step",
    "git_revision",
    "host",
}


def _final_params(workdir):
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]


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


def _kill_midway(workdir, seed):
    """Starts the run, waits for its first checkpoint, then kill -9s it after a random delay."""
    process = _start(workdir)
    _wait_for_a_checkpoint(process, workdir)
    time.sleep(random.Random(seed).uniform(0.0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


def _assert_same_run(reference, resumed) -> dict:
    """The resumed run's results, final state (bitwise) and curves equal the reference's."""
    expected = json.loads((reference / "results.json").read_text())
    actual = json.loads((resumed / "results.json").read_text())
    for key in set(expected) - VOLATILE:
        assert actual[key] == expected[key], key

    step_a, state_a = _final_params(reference)
    step_b, state_b = _final_params(resumed)
    assert step_a == step_b == expected["steps"]
    for a, b in zip(_leaves(state_a), _leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise

    def curves(workdir):
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in rows]

    assert curves(resumed) == curves(reference)
    return actual


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, reference_run):
    resumed = tmp_path / "resumed"
    assert _kill_midway(resumed, seed=int(time.time())) == -signal.SIGKILL
    assert not (resumed / "results.json").exists()  # it really died before the end
    assert (resumed / ".train.lock").exists()  # left by the killed holder: must not block
    result = run_cnnjax(*resume_command(resumed))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _assert_same_run(reference_run, resumed)["resumed_from_step"] > 0


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_reached_and_the_resume_is_bitwise(
    tmp_path, reference_run, signal_number
):
    seed = time.time_ns()
    resumed = tmp_path / "resumed"
    process = _start(resumed, stderr=subprocess.PIPE)
    _wait_for_a_checkpoint(process, resumed)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=240)
    context = f"seed {seed}: {stderr[-2000:]}"
    assert process.returncode == 128 + signal_number, context
    assert "Traceback" not in stderr and stderr.count("cnnjax train:") == 1, context
    name = signal.Signals(signal_number).name
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

    result = run_cnnjax(*resume_command(resumed))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _assert_same_run(reference_run, resumed)["resumed_from_step"] == step


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_rerunning_a_finished_run_trains_nothing_and_reports_the_same(tmp_path, data_dir):
    command = [
        "train",
        f"--config={RECIPE}:smoke",
        f"--workdir={tmp_path}",
        "--config.train.steps=10",
    ]
    assert run_cnnjax(*command).returncode == 0
    first = json.loads((tmp_path / "results.json").read_text())
    metrics = (tmp_path / "metrics.jsonl").read_text()
    assert run_cnnjax(*command).returncode == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["resumed_from_step"] == 10 and again["steps"] == 10
    assert {k: v for k, v in again.items() if k not in VOLATILE} == {
        k: v for k, v in first.items() if k not in VOLATILE
    }
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
