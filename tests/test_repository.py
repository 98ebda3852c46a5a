"""Nothing generated is tracked: no prepared dataset, run output, cache or bytecode in git.

Prepared TFDS data once sat in git by accident; these tests keep it from happening again. The
studies in experiments/*/results/ and the figures in benchmarks/results/ are tracked on purpose
(their READMEs quote them), so results.json is allowed there and nowhere else.
"""

import fnmatch
import os
import shutil
import subprocess
from unittest import mock

import pytest

from cnnjax import fast_paths
from cnnjax.config_base import get_base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Folders whose files are produced by running something, never written by hand.
GENERATED_DIRS = {
    ".cache": "a cache (prepared TFDS data, compilation caches)",
    "runs": "run outputs",
    "workdirs": "run outputs",
    "checkpoints": "checkpoints",
    "tensorboard": "TensorBoard logs",
    "cnnjax_decoded": "decoded-split cache",
    "tensorflow_datasets": "prepared TFDS data",
    "__pycache__": "bytecode",
}
GENERATED_FILES = {
    "*.array_record*": "prepared TFDS data",
    "dataset_info.json": "prepared TFDS data",
    "features.json": "prepared TFDS data",
    "*.npz": "a decoded-split cache",
    "events.out.tfevents*": "TensorBoard logs",
    "metrics.jsonl": "run outputs",
    "_CHECKPOINT_METADATA": "checkpoints",
    "manifest.ocdbt": "checkpoints",
    "*.pyc": "bytecode",
}
RESULTS_ALLOWED_UNDER = ("benchmarks/", "experiments/")
# Test fixtures made once by a script beside them (with torch, which CI lacks) and kept on purpose.
FIXTURES = "tests/fixtures/"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tracked() -> list[str]:
    """Paths git tracks in this checkout (skips where there is no git work tree: an sdist)."""
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").returncode:
        pytest.skip("not a git work tree")
    listed = _git("ls-files", "-z")
    assert listed.returncode == 0, listed.stderr
    return [path for path in listed.stdout.split("\0") if path]


def generated_reason(path: str) -> str | None:
    """Why `path` (relative, with /) looks generated, or None when it may be tracked."""
    *folders, name = path.split("/")
    for folder in folders:
        if folder in GENERATED_DIRS:
            return GENERATED_DIRS[folder]
    for pattern, reason in GENERATED_FILES.items():
        if fnmatch.fnmatch(name, pattern) and not path.startswith(FIXTURES):
            return reason
    if name == "results.json" and not path.startswith(RESULTS_ALLOWED_UNDER):
        return "a run's results.json"
    return None


def test_the_rule_tells_generated_files_from_sources():
    generated = [
        ".cache/tensorflow_datasets/fashion_mnist/3.0.1/fashion_mnist-test.array_record-00000-of-00001",
        "data/fashion_mnist/3.0.1/dataset_info.json",
        "runs/lenet5/results.json",
        "some/run/checkpoints/40/_CHECKPOINT_METADATA",
        "runs_elsewhere/tensorboard/events.out.tfevents.1.host",
        "decoded/cnnjax_decoded/0123.npz",
        "results.json",
        "cnnjax/__pycache__/cli.cpython-311.pyc",
    ]
    sources = [
        "cnnjax/train/checkpoints.py",
        "tests/test_checkpoints.py",
        "benchmarks/results/suite.json",
        "experiments/inspect_default_run/results/metrics.json",
        "experiments/some_study/results/results.json",
        "configs/lenet5_fashion_mnist.py",
    ]
    assert [p for p in generated if generated_reason(p) is None] == []
    assert {p: generated_reason(p) for p in sources if generated_reason(p)} == {}


def test_no_generated_file_is_tracked(tracked):
    offenders = {path: generated_reason(path) for path in tracked if generated_reason(path)}
    assert offenders == {}, "generated files tracked by git (git rm --cached them):\n" + "\n".join(
        f"  {path}: {reason}" for path, reason in sorted(offenders.items())
    )


@pytest.mark.parametrize(
    "path",
    [
        ".cache/tensorflow_datasets/fashion_mnist/3.0.1/dataset_info.json",
        ".cache/tests/cnnjax/xla/jit_train_step-0123",
        "runs/lenet5_fashion_mnist/results.json",
        "workdirs/run/checkpoints/7/_CHECKPOINT_METADATA",
        "cnnjax/__pycache__/cli.cpython-311.pyc",
    ],
)
def test_where_runs_and_tests_write_is_ignored(tracked, path):
    """The default places of run outputs and of the suite's data and caches are in .gitignore,
    so `git add .` after a run or a test session adds none of them."""
    ignored = _git("check-ignore", "--quiet", "--no-index", path)
    assert ignored.returncode == 0, f"{path} is not ignored by .gitignore"


def test_the_suite_keeps_its_caches_in_the_checkout():
    """tests/conftest.py points every cache of the suite's processes into <checkout>/.cache:
    the JAX compilation cache of `cnnjax train` (here and in subprocesses, which inherit the
    environment) and matplotlib's font list; the user's ~/.cache is never written."""
    import jax
    import matplotlib

    cache_home = os.path.join(ROOT, ".cache", "tests")
    assert os.environ["XDG_CACHE_HOME"] == cache_home
    # This process's cache (set by conftest), and where `cnnjax train` puts its default one.
    assert jax.config.jax_compilation_cache_dir.startswith(cache_home + os.sep)
    with mock.patch("jax.config.update") as update:
        assert fast_paths.enable_compilation_cache(get_base_config().train.compilation_cache_dir)
    assert update.call_args_list[0].args == (
        "jax_compilation_cache_dir",
        os.path.join(cache_home, "cnnjax", "xla"),
    )
    assert matplotlib.get_cachedir().startswith(cache_home + os.sep)


def test_the_files_using_the_smoke_run_are_scheduled_together(request):
    """Every test that uses the session's smoke run is in a file of SMOKE_TRAINING_FILES, which
    the suite's `--dist loadfile` hands to one worker together: a test elsewhere would make a
    second worker train the run again."""
    from conftest import SMOKE_TRAINING_FILES

    users = {
        item.path.name for item in request.session.items if "smoke_training" in item.fixturenames
    }
    assert users <= set(SMOKE_TRAINING_FILES), sorted(users - set(SMOKE_TRAINING_FILES))
    assert all(os.path.exists(os.path.join(ROOT, "tests", name)) for name in SMOKE_TRAINING_FILES)


def test_the_suite_scheduler_groups_the_smoke_run_files_and_keeps_other_files_apart(
    request, monkeypatch
):
    from conftest import SMOKE_TRAINING_FILES, pytest_xdist_make_scheduler

    monkeypatch.setattr(request.config.option, "dist", "loadfile")
    monkeypatch.setattr(request.config.option, "tx", ["2*popen"])  # what `-n 2` sets
    scheduler = pytest_xdist_make_scheduler(request.config, None)
    scopes = {scheduler._split_scope(f"tests/{name}::test_a") for name in SMOKE_TRAINING_FILES}
    assert len(scopes) == 1  # one unit of work: one worker, one smoke run
    assert scheduler._split_scope("tests/test_models.py::test_a[x]") == "tests/test_models.py"
    monkeypatch.setattr(request.config.option, "dist", "load")
    assert pytest_xdist_make_scheduler(request.config, None) is None  # xdist's own
