"""The command line: each bad input is one clear line, exit status 2, nothing lost."""

import hashlib
import json
import os

import pytest
from conftest import RECIPE, run_cnnjax


def _snapshot(directory: str) -> dict[str, str]:
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, directory)] = hashlib.sha1(f.read()).hexdigest()
    return digests


def _assert_one_line_error(result, pattern: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("cnnjax train: error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(errors) == 1, result.stderr[-2000:]
    assert pattern in errors[0], errors[0]


BAD_INPUTS = [
    (["--config.model.name=lenet7"], "unknown model 'lenet7': choose one of"),
    (["--config.data.name=imagenet9"], "unknown dataset 'imagenet9': choose one of"),
    (["--config.optimizer.learning_rate=abc"], "could not convert string to float: 'abc'"),
    (["--config=configs/missing.py"], "No such file or directory"),
    ([f"--config={RECIPE}:smok"], "unknown config argument 'smok'"),
    (["--config.optimizer.lr=0.1"], "unknown flag or config key"),
    (["--config.data.batch_size=0"], "config.data.batch_size must be > 0"),
    (["--config.model.activation=relu7"], "unknown activation 'relu7'"),
    (["--config.model.options.depth=3"], "unknown flag or config key"),
    (["--config.model.options.pooling=median"], "unknown pooling 'median'"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS)
def test_bad_input_is_one_line_and_loses_nothing(tmp_path, data_dir, overrides, message):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me")
    result = run_cnnjax("train", f"--config={RECIPE}:smoke", f"--workdir={workdir}", *overrides)
    _assert_one_line_error(result, message)
    assert _snapshot(workdir) == {"notes.txt": hashlib.sha1(b"keep me").hexdigest()}


def test_missing_dataset_says_how_to_get_it(tmp_path):
    result = run_cnnjax(
        "train",
        f"--config={RECIPE}:smoke",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tmp_path / 'empty'}",
        f"--config.data.source_dir={tmp_path / 'nowhere'}",
    )
    _assert_one_line_error(result, "dataset-fashion-mnist")


def test_missing_flags_and_unknown_command():
    result = run_cnnjax("train", f"--config={RECIPE}")
    _assert_one_line_error(result, "--workdir=DIR")
    result = run_cnnjax("fit")
    assert result.returncode == 2 and "usage: cnnjax" in result.stderr


def test_incompatible_checkpoint_fails_and_deletes_nothing(tmp_path, data_dir):
    workdir = tmp_path / "run"
    result = run_cnnjax(
        "train", f"--config={RECIPE}:smoke", f"--workdir={workdir}", "--config.train.steps=7"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before = _snapshot(workdir)
    result = run_cnnjax(
        "train",
        f"--config={RECIPE}:smoke",
        f"--workdir={workdir}",
        "--config.model.normalization=none",
        "--allow_config_change",  # even then, other parameter shapes cannot be restored
    )
    _assert_one_line_error(result, "use a new --workdir")
    assert _snapshot(workdir) == before


def test_corrupt_checkpoint_fails_clearly(tmp_path, data_dir):
    workdir = tmp_path / "run"
    args = ("train", f"--config={RECIPE}:smoke", f"--workdir={workdir}", "--config.train.steps=7")
    assert run_cnnjax(*args).returncode == 0
    step_dir = workdir / "checkpoints" / "7"
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(3)
    (workdir / "results.json").unlink()
    before = _snapshot(workdir)
    result = run_cnnjax(*args[:-1], "--config.train.steps=14", "--allow_config_change")
    _assert_one_line_error(result, "cannot be read")
    assert _snapshot(workdir) == before


def test_models_command_lists_lenet5_as_json():
    result = run_cnnjax("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows["lenet5"]) == {"name", "params", "macs", "input_shape"}
    assert rows["lenet5"]["params"] == 61_706 and rows["lenet5"]["macs"] == 416_520
    assert rows["resnet50"]["params"] == 25_557_032
    assert rows["alexnet"]["input_shape"] == [224, 224, 3]
    assert {"vgg16_bn", "googlenet", "inception_v3", "wrn28_10", "unet", "c3d"} <= set(rows)
