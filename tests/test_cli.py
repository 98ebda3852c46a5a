"""The command line: each bad input is one clear line, exit status 2, nothing lost.

The messages are the library's, checked here in this process (`load_config`,
`train_and_evaluate`: they name config keys `config.x`); a subprocess proves, once per kind of
failure, what only the command line does: one line on stderr with `--config.x`, no traceback,
the exit status."""

import hashlib
import os
import shutil

import pytest
from conftest import RECIPE, run_cnnjax

from cnnjax.config_loader import load_config
from cnnjax.errors import UserError
from cnnjax.train import train_and_evaluate

NOTES = {"notes.txt": hashlib.sha1(b"keep me").hexdigest()}


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


def _workdir_with_notes(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me")
    return workdir


SMOKE = f"{RECIPE}:smoke"
BAD_INPUTS = [
    (SMOKE, ["--config.model.name=lenet7"], "unknown model 'lenet7': choose one of"),
    (SMOKE, ["--config.data.name=imagenet9"], "unknown dataset 'imagenet9': choose one of"),
    (SMOKE, ["--config.optimizer.learning_rate=abc"], "could not convert string to float: 'abc'"),
    ("configs/missing.py", [], "No such file or directory"),
    (f"{RECIPE}:smok", [], "unknown config argument 'smok'"),
    (SMOKE, ["--config.optimizer.lr=0.1"], "unknown flag or config key"),
    (SMOKE, ["--config.data.batch_size=0"], "config.data.batch_size must be > 0"),
    (SMOKE, ["--config.model.activation=relu7"], "unknown activation 'relu7'"),
    (SMOKE, ["--config.model.options.depth=3"], "unknown flag or config key"),
    (SMOKE, ["--config.model.options.pooling=median"], "unknown pooling 'median'"),
]


@pytest.mark.parametrize(
    "recipe, overrides, message",
    BAD_INPUTS,
    ids=[o[0].removeprefix("--config.") if o else os.path.basename(r) for r, o, _ in BAD_INPUTS],
)
def test_bad_input_is_one_user_error_and_loses_nothing(tmp_path, recipe, overrides, message):
    workdir = _workdir_with_notes(tmp_path)
    with pytest.raises(UserError) as error:
        train_and_evaluate(load_config(recipe, overrides), str(workdir))
    text = str(error.value)
    assert message in text and "\n" not in text, text
    assert _snapshot(workdir) == NOTES


def test_a_bad_config_value_on_the_command_line_is_one_line_naming_its_flag(tmp_path):
    workdir = _workdir_with_notes(tmp_path)
    result = run_cnnjax(
        "train", f"--config={SMOKE}", f"--workdir={workdir}", "--config.data.batch_size=0"
    )
    _assert_one_line_error(result, "cnnjax train: error: --config.data.batch_size must be > 0")
    assert _snapshot(workdir) == NOTES


def test_missing_dataset_says_how_to_get_it(tmp_path):
    config = load_config(
        SMOKE,
        {"data.data_dir": str(tmp_path / "empty"), "data.source_dir": str(tmp_path / "nowhere")},
    )
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_missing_flags_and_unknown_command():
    result = run_cnnjax("train", f"--config={RECIPE}")
    _assert_one_line_error(result, "--workdir=DIR")
    result = run_cnnjax("fit")
    assert result.returncode == 2 and "usage: cnnjax" in result.stderr


def _smoke_config(data_dir, **changes):
    """The config of the session's smoke run (tests/conftest.py) with `changes`."""
    return load_config(SMOKE, {"data.eval_batch_size": 300, "data.data_dir": data_dir, **changes})


def test_incompatible_checkpoint_fails_and_deletes_nothing(tmp_path, smoke_run, data_dir):
    workdir = tmp_path / "run"
    shutil.copytree(smoke_run, workdir)
    before = _snapshot(workdir)
    config = _smoke_config(data_dir, **{"model.normalization": "none"})
    with pytest.raises(UserError, match="use a new --workdir"):
        # Even allowed, a config with other parameter shapes cannot restore the checkpoint.
        train_and_evaluate(config, str(workdir), allow_config_change=True)
    assert _snapshot(workdir) == before


def test_corrupt_checkpoint_fails_clearly(tmp_path, smoke_run):
    workdir = tmp_path / "run"
    shutil.copytree(smoke_run, workdir)
    for root, _, files in os.walk(workdir / "checkpoints" / "40" / "state"):  # the latest
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(3)
    (workdir / "results.json").unlink()
    before = _snapshot(workdir)
    # The smoke run's own command (its data folder is the same, given by TFDS_DATA_DIR).
    result = run_cnnjax(
        "train", f"--config={SMOKE}", f"--workdir={workdir}", "--config.data.eval_batch_size=300"
    )
    _assert_one_line_error(result, "cannot be read")
    assert _snapshot(workdir) == before


def test_the_model_inventory_has_every_family_at_its_published_size():
    # `cnnjax models` prints cnnjax.models.inventory.describe_models(), whose lenet5 row
    # tests/test_models.py pins; counting every variant's MACs again here would take seconds.
    from cnnjax.models import list_models
    from cnnjax.models.inventory import default_input_shape, param_count

    names = {"lenet5", "resnet50", "alexnet", "vgg16_bn", "googlenet", "inception_v3"}
    assert names | {"wrn28_10", "unet", "c3d"} <= set(list_models())
    assert param_count("resnet50") == 25_557_032
    assert tuple(default_input_shape("alexnet")) == (224, 224, 3)
