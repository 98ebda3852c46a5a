"""Shared fixtures: a TFDS data directory kept inside the checkout, prepared once per machine."""

import contextlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests prepare Fashion-MNIST here (about 20 s, once) rather than in the user's home.
TEST_DATA_DIR = os.path.join(ROOT, ".cache", "tensorflow_datasets")
RECIPE = os.path.join(ROOT, "configs", "lenet5_fashion_mnist.py")


def run_cnnjax(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `cnnjax ARGS` in a subprocess with the test data directory; returns the result."""
    env = dict(os.environ, TFDS_DATA_DIR=TEST_DATA_DIR)
    return subprocess.run(
        [sys.executable, "-m", "cnnjax.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The prepared test data directory (Fashion-MNIST from Debian's package)."""
    from cnnjax.data import load_split

    load_split("fashion_mnist", "test[:10]", data_dir=TEST_DATA_DIR)
    return TEST_DATA_DIR


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_dir) -> str:
    """A finished run of the default recipe's `:smoke` variant, trained once per session and
    shared by the evaluation and visualization tests (they only add files to it). Its 1,000 test
    examples come in batches of 300, so the last evaluation batch is partial."""
    workdir = str(tmp_path_factory.mktemp("smoke_run") / "run")
    result = run_cnnjax(
        "train",
        f"--config={RECIPE}:smoke",
        f"--workdir={workdir}",
        "--config.data.eval_batch_size=300",
        f"--config.data.data_dir={data_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


# The run that the resume and interruption tests compare with: augmentation on, so that they
# cover the order and augmentation of resumed batches; dropout on, so that they cover the
# per-step keys. 60 steps, checkpoints every 7 steps and at each of the 3 epochs.
RESUME_OVERRIDES = (
    "--config.data.augment.random_crop_padding=2",
    "--config.data.augment.horizontal_flip=True",
    "--config.model.dropout_rate=0.2",
    "--config.train.epochs=3",
)


def resume_command(workdir) -> list[str]:
    """`cnnjax train` arguments of the reference run in `workdir`."""
    return ["train", f"--config={RECIPE}:smoke", f"--workdir={workdir}", *RESUME_OVERRIDES]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, data_dir):
    """A finished uninterrupted run of `resume_command`, shared by the tests that interrupt the
    same run and compare (they must not change it: copy it first)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    result = run_cnnjax(*resume_command(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@contextlib.contextmanager
def tmpfs(path, size: str):
    """A small tmpfs mounted at `path` for the block (root only, else the test is skipped): a
    full disk, or a folder that `mount -o remount,ro` makes read-only."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def start_distributed(train_args, port: int, *, num_processes: int = 2, **popen) -> list:
    """`cnnjax train TRAIN_ARGS --distributed` as `num_processes` processes on 127.0.0.1:`port`
    (gloo on CPU); `popen` sets their output (stdout/stderr/text)."""
    return [
        subprocess.Popen(
            [sys.executable, "-m", "cnnjax.cli", "train", *train_args, "--distributed"],
            env=dict(
                os.environ,
                TFDS_DATA_DIR=TEST_DATA_DIR,
                CNNJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                CNNJAX_NUM_PROCESSES=str(num_processes),
                CNNJAX_PROCESS_ID=str(index),
            ),
            cwd=ROOT,
            **popen,
        )
        for index in range(num_processes)
    ]
