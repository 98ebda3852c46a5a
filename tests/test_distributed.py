"""Two processes of one `--distributed` run on 127.0.0.1 (gloo): they train as one process does,
and SIGTERM to each of them (as SLURM or a TPU preemption sends it, to each host at its own
moment) makes all of them save the same step, after which the rerun ends exactly where the
uninterrupted run does. The first two tests compare with one uninterrupted two-process run on
Fashion-MNIST (in memory); the last trains on an image folder (decoded per batch)."""

import json
import os
import random
import re
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import INVOCATION_KEYS, RECIPE, start_distributed
from test_parallel import _flat_state

from cnnjax import load_config, load_trained_run, train_and_evaluate

# 30 steps (3 epochs of 10) of momentum SGD, checkpoints every 7 steps and per epoch, each
# evaluating 200 test examples in 2 batches (so that each process has real examples of its own
# in every evaluation batch: each reads only its rows). SGD, not the
# recipe's Adam: the biases of the dense layers that feed batch norm get only float noise as
# gradient (batch norm removes them), which Adam scales up to full steps. Two processes sum each
# gradient in another order than one: after these 30 steps their weights differed from one
# process's by up to 7.4e-6 (2.2e-5 at rate 0.01), where a gradient twice or half as large
# (rate 0.004 or 0.001) moved them by 0.025 or 0.013.
OVERRIDES = {
    "data.train_split": "train[:1280]",
    "train.epochs": 3,
    "optimizer.name": "momentum",
    "optimizer.learning_rate": 0.002,
    "data.eval_split": "test[:200]",
    "data.eval_batch_size": 100,
}
STEPS = 30  # 1,280 examples in batches of 128, 3 epochs
COMMON = (f"--config={RECIPE}:smoke", *(f"--config.{k}={v}" for k, v in OVERRIDES.items()))
VOLATILE = INVOCATION_KEYS


def _start(workdir, port: int) -> list[subprocess.Popen]:
    return start_distributed(
        [*COMMON, f"--workdir={workdir}"],
        port,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(processes) -> list[str]:
    return [p.communicate(timeout=300)[0] for p in processes]


class _Uninterrupted:
    """The uninterrupted two-process run, started when made; `finish()` waits for it once and
    returns its two outputs."""

    def __init__(self, workdir, port: int):
        self.workdir = workdir
        self.processes = _start(workdir, port)
        self._outputs = None

    def finish(self) -> list[str]:
        if self._outputs is None:
            self._outputs = _finish(self.processes)
        codes = [p.returncode for p in self.processes]
        assert codes == [0, 0], self._outputs[0][-2000:] + self._outputs[1][-2000:]
        return self._outputs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("distributed") / "run"
    run = _Uninterrupted(workdir, 13000 + os.getpid() % 20000)
    yield run
    for process in run.processes:  # a test that failed early leaves no process behind
        if process.poll() is None:
            process.kill()
            process.wait()


def test_two_processes_train_like_one(tmp_path, data_dir, uninterrupted):
    """Each process reads and feeds half of every global batch, training and evaluation alike;
    together they end with the parameters of one process training on the same global batches."""
    # The one-process run, here, while the two processes train.
    config = load_config(f"{RECIPE}:smoke", {**OVERRIDES, "data.data_dir": data_dir})
    single = train_and_evaluate(config, str(tmp_path / "single"))
    outputs = uninterrupted.finish()
    assert "test accuracy" in outputs[0] and "test accuracy" not in outputs[1]
    results = json.loads((uninterrupted.workdir / "results.json").read_text())
    assert (results["num_processes"], results["num_devices"]) == (2, 2)
    multi = load_trained_run(str(uninterrupted.workdir), "latest")
    assert multi.step == STEPS
    expected, got = _flat_state(single.state.params), _flat_state(multi.state.params)
    assert len(expected) == 16 and got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, atol=1e-4, err_msg=key)
    assert results["train_loss"] == pytest.approx(single.results["train_loss"], abs=1e-5)
    # Each process read (and augmented) only its own 64 rows of each batch of 128 and its 50 of
    # each evaluation batch of 100: half of what the one process read.
    [alone] = single.results["examples_decoded_per_process"]
    assert alone == {"train": (STEPS + 2) * 128, "eval": 3 * 200}  # 2 batches in flight at the end
    half = {split: count // 2 for split, count in alone.items()}
    assert results["examples_decoded_per_process"] == [half, half]
    # The evaluation sums are global: each process evaluated half, the step summed both halves.
    assert results["test_loss"] == pytest.approx(single.results["test_loss"], abs=1e-4)


def _final(workdir):
    """The latest step and its state's arrays, read onto this process's one device."""
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


def test_sigterm_to_every_process_saves_one_step_and_the_rerun_is_exact(
    tmp_path, data_dir, uninterrupted
):
    port = 13000 + (os.getpid() + 1) % 20000
    seed = time.time_ns()
    rng = random.Random(seed)
    workdir = tmp_path / "interrupted"
    processes = _start(workdir, port)
    checkpoints = workdir / "checkpoints"
    deadline = time.time() + 240
    while not (checkpoints.is_dir() and any(n.isdigit() for n in os.listdir(checkpoints))):
        assert time.time() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.5))
    for process in processes:  # each host hears of the preemption at its own moment
        process.send_signal(signal.SIGTERM)
        time.sleep(rng.uniform(0.0, 0.15))
    outputs = _finish(processes)
    context = f"seed {seed}:\n{outputs[0][-2000:]}\n---\n{outputs[1][-2000:]}"
    assert [p.returncode for p in processes] == [143, 143], context
    saved = []
    for output in outputs:
        assert "Traceback" not in output, context
        match = re.search(rf"cnnjax train: interrupted by SIGTERM at step (\d+) of {STEPS}", output)
        assert match, context
        saved.append(int(match.group(1)))
    assert saved[0] == saved[1], context  # the processes agreed on the step
    assert _final(workdir)[0] == saved[0], context
    assert not (workdir / "results.json").exists()

    processes = _start(workdir, port + 1)
    outputs = _finish(processes)
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    uninterrupted.finish()
    expected = json.loads((uninterrupted.workdir / "results.json").read_text())
    actual = json.loads((workdir / "results.json").read_text())
    assert actual["resumed_from_step"] == saved[0]
    for key in set(expected) - VOLATILE:
        assert actual[key] == expected[key], key
    (step_a, leaves_a), (step_b, leaves_b) = _final(uninterrupted.workdir), _final(workdir)
    assert step_a == step_b == STEPS
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise


def test_two_processes_decode_their_halves_of_an_image_folder(tmp_path):
    """The streaming input (JPEG and PNG files decoded per batch): each process decodes only its
    half of every training and evaluation batch, here in a worker process of its own, and the
    two end with the parameters of one process decoding whole batches in threads."""
    from test_streaming_train import RECIPE as IMAGENET_RECIPE
    from test_streaming_train import _folder

    _folder(tmp_path / "images", {"train": 8, "val": 4}, seed=0)
    overrides = {
        "data.image_folder": str(tmp_path / "images"),
        "model.name": "resnet20",  # as in test_streaming_train: quick to compile
        "data.image_size": 32,
        "train.steps": 6,  # 16 images in batches of 8: 3 epochs, evaluated after each
    }
    distributed_only = {"data.worker_processes": True, "data.workers": 1}
    workdir = tmp_path / "distributed"
    processes = start_distributed(
        [
            f"--config={IMAGENET_RECIPE}:dataset=imagefolder,smoke",
            *(f"--config.{k}={v}" for k, v in {**overrides, **distributed_only}.items()),
            f"--workdir={workdir}",
        ],
        13000 + (os.getpid() + 2) % 20000,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    config = load_config(f"{IMAGENET_RECIPE}:dataset=imagefolder,smoke", overrides)
    single = train_and_evaluate(config, str(tmp_path / "single"))
    outputs = _finish(processes)
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    results = json.loads((workdir / "results.json").read_text())
    assert (results["num_processes"], results["num_devices"]) == (2, 2)
    [alone] = single.results["examples_decoded_per_process"]
    assert alone["train"] >= 6 * 8 and alone["eval"] >= 8  # at least every step and one pass
    half = {split: count // 2 for split, count in alone.items()}
    assert results["examples_decoded_per_process"] == [half, half]
    multi = load_trained_run(str(workdir), "latest")
    expected, got = _flat_state(single.state.params), _flat_state(multi.state.params)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, atol=1e-5, err_msg=key)
    assert results["test_loss"] == pytest.approx(single.results["test_loss"], abs=1e-5)
    assert results["test_accuracy"] == single.results["test_accuracy"]
