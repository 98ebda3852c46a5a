"""Shared fixtures: a TFDS data directory kept inside the checkout, prepared once per machine."""

import contextlib
import fcntl
import os
import subprocess
import sys
import types

import pytest

from cnnjax import fast_paths

# The test process is an entry point like `cnnjax`: the same XLA flags as the `cnnjax train`
# subprocesses it compares with bitwise, set before anything starts JAX's backend.
fast_paths.enable()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests prepare Fashion-MNIST here (about 20 s, once) rather than in the user's home.
TEST_DATA_DIR = os.path.join(ROOT, ".cache", "tensorflow_datasets")
# Caches of the suite's processes (cnnjax's JAX compilation cache, matplotlib's font list) stay
# here too, never in the user's ~/.cache: subprocesses inherit the variable, which `cnnjax
# train` reads for the default train.compilation_cache_dir (cnnjax/fast_paths.py).
TEST_CACHE_HOME = os.path.join(ROOT, ".cache", "tests")
os.environ["XDG_CACHE_HOME"] = TEST_CACHE_HOME
# And this process's compilations too, shared with the `cnnjax` subprocesses of the suite.
fast_paths.enable_compilation_cache(os.path.join(TEST_CACHE_HOME, "cnnjax", "xla"))
RECIPE = os.path.join(ROOT, "configs", "lenet5_fashion_mnist.py")


# The files that take longest (deep nets, `cnnjax` subprocesses), longest first: started first, so
# that the workers of `pytest -n 2 --dist loadfile` (quickstart.sh) end together rather than one
# idling while the other runs a long file it took last. Order only: a file missing here runs
# after these, a stale entry costs only speed.
LONGEST_FILES_FIRST = (
    "test_experiment_smokes.py",
    "test_families.py",
    "test_parallel.py",
    "test_tasks.py",
    "test_sweep_run.py",
    "test_sweep_inline.py",
    "test_distributed.py",
    "test_fast_paths.py",
    "test_gradcheck.py",
    "test_inception.py",
    "test_resume.py",
    "test_remote_workdir.py",
    "test_models.py",
    "test_run_faults.py",
    "test_train_steps.py",
    "test_finetune.py",
    "test_visualize.py",
    "test_streaming_train.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order kept


# The files whose tests use the session's `smoke_training` (tests/test_repository.py checks the
# list). A session fixture is one per process: `--dist loadfile` (quickstart.sh) hands these
# files to one worker together, so that the smoke run trains once per suite, not once per worker.
SMOKE_TRAINING_FILES = (
    "test_cli.py",
    "test_evaluation.py",
    "test_invariance.py",
    "test_multicrop.py",
    "test_python_api.py",
    "test_run_faults.py",
    "test_visualize.py",
)


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own scheduler of that mode
    from xdist.scheduler import LoadFileScheduling

    class SmokeTrainingFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return "smoke_training" if os.path.basename(path) in SMOKE_TRAINING_FILES else path

    return SmokeTrainingFilesTogether(config, log)


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

    # Under `pytest -n 2` each worker process asks: the first prepares, the other waits.
    os.makedirs(TEST_DATA_DIR, exist_ok=True)
    with open(os.path.join(ROOT, ".cache", "prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        load_split("fashion_mnist", "test[:10]", data_dir=TEST_DATA_DIR)
    return TEST_DATA_DIR


@pytest.fixture(scope="session")
def smoke_training(tmp_path_factory, data_dir) -> types.SimpleNamespace:
    """A finished run of the default recipe's `:smoke` variant, trained once per session in this
    process through the Python API (`workdir`, `outcome`), shared by the evaluation and
    visualization tests (they only add files to it). Its 1,000 test examples come in batches of
    300, so the last evaluation batch is partial."""
    from cnnjax import load_config, train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("smoke_run") / "run")
    config = load_config(
        f"{RECIPE}:smoke", {"data.eval_batch_size": 300, "data.data_dir": data_dir}
    )
    return types.SimpleNamespace(workdir=workdir, outcome=train_and_evaluate(config, workdir))


@pytest.fixture(scope="session")
def smoke_run(smoke_training) -> str:
    """The workdir of `smoke_training`."""
    return smoke_training.workdir


# The run that the resume and interruption tests compare with: augmentation on, so that they
# cover the order and augmentation of resumed batches; dropout on, so that they cover the
# per-step keys. 60 steps, checkpoints every 7 steps and at each of the 3 epochs. (The steps cost
# little, about 20 ms each: what costs is starting a `cnnjax train` process, 3-10 s, so the tests
# interrupt a process and resume in this one. They also need the run to last long enough after
# its first checkpoint for a signal at a random moment to come before its end.)
RESUME_OVERRIDES = (
    "--config.data.augment.random_crop_padding=2",
    "--config.data.augment.horizontal_flip=True",
    "--config.model.dropout_rate=0.2",
    "--config.train.epochs=3",
)


def resume_command(workdir) -> list[str]:
    """`cnnjax train` arguments of the reference run in `workdir`."""
    return ["train", f"--config={RECIPE}:smoke", f"--workdir={workdir}", *RESUME_OVERRIDES]


def resume_config():
    """The config of `resume_command` for `cnnjax.train_and_evaluate` in this process: the same
    but for its data folder, which the subprocesses take from TFDS_DATA_DIR (an operational key:
    a resume may change it)."""
    from cnnjax import load_config

    overrides = [*RESUME_OVERRIDES, f"--config.data.data_dir={TEST_DATA_DIR}"]
    return load_config(f"{RECIPE}:smoke", overrides)


# results.json keys that describe an invocation (its speed, host, where it resumed, what it read),
# not the trained model: left out when a resumed run is compared with one that never stopped.
INVOCATION_KEYS = frozenset(
    {
        "wall_seconds",
        "train_images_per_sec",
        "compile_seconds",
        "resumed_from_step",
        "git_revision",
        "host",
        "examples_decoded_per_process",
    }
)


def final_checkpoint_state(checkpoints: str):
    """(step, state) of the latest checkpoint in the folder `checkpoints` (local or gs://),
    restored as saved, without a target."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(checkpoints) as manager:
        step = manager.latest_step()
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, state["state"]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, data_dir):
    """A finished uninterrupted run of `resume_command`, trained in this process (the same
    numbers, bitwise, as the command's), shared by the tests that interrupt the same run and
    compare (they must not change it: copy it first)."""
    from cnnjax import train_and_evaluate

    workdir = tmp_path_factory.mktemp("reference") / "run"
    train_and_evaluate(resume_config(), str(workdir))
    return workdir


def signal_at_step(monkeypatch, step: int, number: int) -> None:
    """Makes the next `train_and_evaluate` in this process send itself signal `number` right
    after its train step `step` (counted from its first): the run's own handler stops it there,
    as after a signal from outside, but at an exact step."""
    import dataclasses
    import itertools

    from cnnjax.train import loop

    make_steps = loop.make_steps

    def make_steps_that_signal(*args, **kwargs):
        compiled = make_steps(*args, **kwargs)
        calls = itertools.count(1)

        def train(state, batch):
            outputs = compiled.train(state, batch)
            if next(calls) == step:
                os.kill(os.getpid(), number)
            return outputs

        return dataclasses.replace(compiled, train=train)

    monkeypatch.setattr(loop, "make_steps", make_steps_that_signal)


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
