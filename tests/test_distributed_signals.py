"""SIGTERM to the processes of one `--distributed` run (as SLURM or a TPU preemption sends it, to
each host at its own moment): all of them save the same step, and the rerun ends exactly where
an uninterrupted run does."""

import json
import os
import random
import re
import signal
import subprocess
import time

import numpy as np
import orbax.checkpoint as ocp
from conftest import RECIPE, start_distributed

# Momentum SGD, as in tests/test_parallel.py; 60 steps, checkpoints every 7 steps and per epoch
# (each evaluating 200 test examples: the evaluation is not what this test is about).
COMMON = (
    f"--config={RECIPE}:smoke",
    "--config.train.epochs=3",
    "--config.optimizer.name=momentum",
    "--config.optimizer.learning_rate=0.05",
    "--config.data.eval_split=test[:200]",
)
VOLATILE = {"wall_seconds", "train_images_per_sec", "compile_seconds", "resumed_from_step"}


def _start(workdir, port: int) -> list[subprocess.Popen]:
    return start_distributed(
        [*COMMON, f"--workdir={workdir}"],
        port,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(processes) -> list[str]:
    outputs = [p.communicate(timeout=300)[1] for p in processes]
    return outputs


def _final(workdir):
    """The latest step and its state's arrays, read onto this process's one device."""
    import jax

    folder = os.path.join(workdir, "checkpoints")
    step = max(int(name) for name in os.listdir(folder) if name.isdigit())
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        path = os.path.join(folder, str(step), "state")
        metadata = checkpointer.metadata(path).item_metadata
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
        )
        return step, jax.tree.leaves(checkpointer.restore(path, target))


def test_sigterm_to_every_process_saves_one_step_and_the_rerun_is_exact(tmp_path, data_dir):
    port = 13000 + os.getpid() % 20000
    # The uninterrupted reference trains at the same time as the run that is interrupted (two
    # independent runs: their own workdirs and coordinators).
    reference = tmp_path / "reference"
    reference_processes = _start(reference, port)

    seed = time.time_ns()
    rng = random.Random(seed)
    workdir = tmp_path / "interrupted"
    processes = _start(workdir, port + 1)
    checkpoints = workdir / "checkpoints"
    deadline = time.time() + 240
    while not (checkpoints.is_dir() and any(n.isdigit() for n in os.listdir(checkpoints))):
        assert time.time() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 1.0))
    for process in processes:  # each host hears of the preemption at its own moment
        process.send_signal(signal.SIGTERM)
        time.sleep(rng.uniform(0.0, 0.3))
    outputs = _finish(processes)
    context = f"seed {seed}:\n{outputs[0][-2000:]}\n---\n{outputs[1][-2000:]}"
    assert [p.returncode for p in processes] == [143, 143], context
    saved = []
    for output in outputs:
        assert "Traceback" not in output, context
        match = re.search(r"cnnjax train: interrupted by SIGTERM at step (\d+) of 60", output)
        assert match, context
        saved.append(int(match.group(1)))
    assert saved[0] == saved[1], context  # the processes agreed on the step
    assert _final(workdir)[0] == saved[0], context
    assert not (workdir / "results.json").exists()
    outputs = _finish(reference_processes)
    assert [p.returncode for p in reference_processes] == [0, 0], (
        outputs[0][-2000:] + outputs[1][-2000:]
    )

    processes = _start(workdir, port + 2)
    outputs = _finish(processes)
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    expected = json.loads((reference / "results.json").read_text())
    actual = json.loads((workdir / "results.json").read_text())
    assert actual["resumed_from_step"] == saved[0]
    for key in set(expected) - VOLATILE - {"git_revision", "host"}:
        assert actual[key] == expected[key], key
    (step_a, leaves_a), (step_b, leaves_b) = _final(reference), _final(workdir)
    assert step_a == step_b == 60
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise
