"""kill -9 at a random point, rerun the same command: the numbers of a run that never stopped."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
from conftest import RECIPE, ROOT, TEST_DATA_DIR, run_cnnjax

# Augmentation on, so that the test also covers the order and augmentation of resumed batches;
# dropout on, so that it covers the per-step keys.
OVERRIDES = (
    "--config.data.augment.random_crop_padding=2",
    "--config.data.augment.horizontal_flip=True",
    "--config.model.dropout_rate=0.2",
    "--config.train.epochs=3",
)
# Facts of an invocation, not of the trained model.
VOLATILE = {
    "wall_seconds",
    "train_images_per_sec",
    "compile_seconds",
    "resumed_from_step",
    "git_revision",
    "host",
}


def _command(workdir):
    return ["train", f"--config={RECIPE}:smoke", f"--workdir={workdir}", *OVERRIDES]


def _final_params(workdir):
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]


def _kill_midway(workdir, seed):
    """Starts the run, waits for its first checkpoint, then kill -9s it after a random delay."""
    env = dict(os.environ, TFDS_DATA_DIR=TEST_DATA_DIR)
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnjax.cli", *_command(workdir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints)):
            break
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, data_dir):
    reference = tmp_path / "reference"
    result = run_cnnjax(*_command(reference))
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = tmp_path / "resumed"
    assert _kill_midway(resumed, seed=int(time.time())) == -signal.SIGKILL
    assert not (resumed / "results.json").exists()  # it really died before the end
    result = run_cnnjax(*_command(resumed))
    assert result.returncode == 0, result.stderr[-3000:]

    expected = json.loads((reference / "results.json").read_text())
    actual = json.loads((resumed / "results.json").read_text())
    assert actual["resumed_from_step"] > 0
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
