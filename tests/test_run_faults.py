"""A run under hostile conditions loses nothing and reports the truth: "best" is the best test
accuracy over the run's whole life, a diverged run stops before saving anything non-finite, one
`cnnjax train` per workdir, and a resume with other math is refused."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from conftest import RECIPE, run_cnnjax, signal_at_step, tmpfs
from test_cli import _smoke_config, _snapshot

from cnnjax.config_base import flatten
from cnnjax.config_loader import load_config
from cnnjax.errors import TrainingInterrupted, UserError
from cnnjax.train import config_history, train_and_evaluate
from cnnjax.train import workdir as workdirs

# A run that is good for 2 epochs (test accuracy 0.79 at step 40 on this data), then diverges
# without a NaN: the learning rate x 1e4 at epoch 2 leaves the test accuracy near 0.1 at step 80.
DIVERGING = (
    "--config.train.epochs=4",
    "--config.optimizer.schedule=step",
    "--config.optimizer.decay_epochs=(2,)",
    "--config.optimizer.decay_factor=10000",
    "--config.optimizer.allow_lr_increase=True",
)


def _steps_on_disk(workdir) -> list[int]:
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def _test_records(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["accuracy"] for r in rows if r["split"] == "test"}


def _error_line(stderr: str, command: str = "train") -> str:
    lines = [line for line in stderr.splitlines() if f"cnnjax {command}:" in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_best_is_the_best_test_accuracy_across_a_stop_and_resume(tmp_path, data_dir, monkeypatch):
    from cnnjax.inspect.evaluation_report import evaluate_workdir
    from cnnjax.train.finetune import read_pretrained

    workdir = str(tmp_path / "run")
    config = load_config(f"{RECIPE}:smoke", [*DIVERGING, f"data.data_dir={data_dir}"])
    # Stopped at a step saved after the good epoch: Orbax then holds 40 (ranked) and a later
    # unranked one; the resumed run (which reads the folder again, as a new process does) must
    # still know that 40 is the best. (tests/test_resume.py kills a process with -9 midway.)
    signal_at_step(monkeypatch, 49, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="at step 49 of 80"):
        train_and_evaluate(config, workdir)
    monkeypatch.undo()
    assert _steps_on_disk(workdir) == [20, 40, 49]
    results = train_and_evaluate(config, workdir).results
    assert results["resumed_from_step"] == 49

    accuracy = _test_records(tmp_path / "run")
    best_step = max(accuracy, key=accuracy.get)
    assert best_step == 40 and accuracy[40] > 0.7 and accuracy[80] < 0.3, accuracy
    assert results["best_checkpoint_step"] == 40
    assert results["best_test_accuracy"] == accuracy[40]
    assert results["test_accuracy"] == accuracy[80]
    # keep_best_checkpoints=2: exactly the two best (40, then 20) and the latest.
    assert _steps_on_disk(workdir) == [20, 40, 80]

    evaluation = evaluate_workdir(workdir, "best")
    assert evaluation["step"] == 40
    assert evaluation["top_1_accuracy"] == pytest.approx(accuracy[40])
    assert read_pretrained(workdir, "best")[1] == 40  # finetune.checkpoint=best


def test_a_nan_stops_training_with_one_line_and_keeps_the_good_checkpoint(tmp_path, data_dir):
    workdir = tmp_path / "run"
    # The learning rate x 1e36 from step 21 on: step 21's update is finite but huge, so step
    # 22's loss is not (batch norm's variance overflows).
    result = run_cnnjax(
        "train",
        f"--config={RECIPE}:smoke",
        f"--workdir={workdir}",
        "--config.optimizer.schedule=step",
        "--config.optimizer.decay_epochs=(1,)",
        "--config.optimizer.decay_factor=1e36",
        "--config.optimizer.allow_lr_increase=True",
        "--config.train.checkpoint_every_steps=1000",
    )
    assert result.returncode == 3, result.stderr[-3000:]
    line = _error_line(result.stderr)
    assert line.startswith(
        "cnnjax train: error: training diverged: the loss or gradient norm became non-finite at "
        "step 22, and nothing after it was saved (the last good checkpoint is step 20)"
    ), line
    assert _steps_on_disk(workdir) == [20]
    assert not (workdir / "results.json").exists()

    def no_constants(name):
        raise AssertionError(f"metrics.jsonl holds {name}: not strict JSON")

    rows = [
        json.loads(line, parse_constant=no_constants)
        for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[-1]["step"] == 25 and rows[-1]["loss"] is None  # the diverged window, as null

    from cnnjax.train.trained_run import load_trained_run

    assert load_trained_run(str(workdir), "best").step == 20  # finite and readable


def test_a_second_train_on_a_workdir_refuses_at_once_and_the_first_loses_nothing(
    tmp_path, smoke_run
):
    # A finished run leaves no lock file (a killed one's never blocks: tests/test_resume.py).
    assert not os.path.exists(os.path.join(smoke_run, workdirs.LOCK_FILE))
    workdir = tmp_path / "run"
    shutil.copytree(smoke_run, workdir)
    with workdirs.hold(str(workdir)):  # this process is the first `cnnjax train`
        lock = workdir / workdirs.LOCK_FILE
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        before = _snapshot(workdir)
        start = time.monotonic()
        second = run_cnnjax("train", f"--config={RECIPE}:smoke", f"--workdir={workdir}")
        seconds = time.monotonic() - start
        assert second.returncode == 2
        assert re.fullmatch(
            rf"cnnjax train: error: {re.escape(str(workdir))} is in use by another `cnnjax "
            rf"train` \(pid {os.getpid()} on [^,]+, since [0-9T:-]+\): wait for it to finish or "
            r"stop it, or give another --workdir",
            _error_line(second.stderr),
        ), second.stderr
        assert seconds < 5, seconds  # refused before the heavy imports
        assert _snapshot(workdir) == before  # the holder's lock and files untouched
    assert not lock.exists()


def test_a_resume_with_other_math_is_refused_unless_allowed_and_keeps_the_history(
    tmp_path, smoke_run, data_dir
):
    workdir = tmp_path / "run"
    shutil.copytree(smoke_run, workdir)
    before = _snapshot(workdir)
    changed = _smoke_config(data_dir, **{"optimizer.learning_rate": 0.01})
    with pytest.raises(UserError) as error:
        train_and_evaluate(changed, str(workdir))
    assert str(error.value) == (
        f"{workdir} holds a run trained to step 40 with other settings "
        "(optimizer.learning_rate 0.002 -> 0.01): rerun with its recorded settings "
        "(config.json), give a new --workdir, or pass --allow_config_change to continue with "
        "the new ones (the old config is kept in config_history/)"
    )
    assert _snapshot(workdir) == before

    # Operational keys may change freely: more frequent logs are not another experiment.
    same = _smoke_config(data_dir, **{"train.log_every_steps": 3, "data.eval_batch_size": 500})
    assert train_and_evaluate(same, str(workdir)).results["config_changes"] == []

    old_config = (workdir / "config.json").read_text()
    results = train_and_evaluate(changed, str(workdir), allow_config_change=True).results
    assert results["config_changes"] == [
        {"step": 40, "changes": {"optimizer.learning_rate": [0.002, 0.01]}}
    ]
    assert (workdir / "config_history" / "step_40.json").read_text() == old_config
    assert json.loads((workdir / "config.json").read_text())["optimizer"]["learning_rate"] == 0.01
    assert (
        json.loads((workdir / "results.json").read_text())["config_changes"]
        == (results["config_changes"])
    )


def test_a_run_recorded_before_an_option_existed_resumes_with_its_old_meaning():
    """config.json of a LeNet-5 run from before `locally_connected` lacks the key: the recipe's
    False computes what that run computed, True does not."""
    config = load_config(RECIPE)
    saved = flatten(json.loads(config_history.config_json(config)))
    del saved["model.options.locally_connected"]
    assert config_history.math_changes(saved, config) == {}
    config.model.options.locally_connected = True
    assert config_history.math_changes(saved, config) == {
        "model.options.locally_connected": (None, True)
    }


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(UserError) as error:
        train_and_evaluate(load_config(f"{RECIPE}:smoke"), str(path))
    assert str(error.value) == f"--workdir={path} is a file, not a folder: give a folder path"
    assert path.read_text() == "keep me"


def test_a_full_disk_is_one_line_and_the_files_written_before_stay_whole(tmp_path, data_dir):
    with tmpfs(tmp_path / "disk", "400k") as disk:  # room for the logs, not for a checkpoint
        workdir = disk / "run"
        result = run_cnnjax("train", f"--config={RECIPE}:smoke", f"--workdir={workdir}")
        # Every run names its devices first (this test's run is one of the few in a process).
        assert result.stdout.splitlines()[0] == "devices: cpu, 1 x cpu, 1 process"
        assert result.returncode == 2
        assert _error_line(result.stderr) == (
            f"cnnjax train: error: cannot write checkpoint 7 to {workdir}/checkpoints (no space "
            "left on the device): free space (or move the workdir to a larger disk), then rerun "
            "the same command"
        )
        assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "lenet5"
        for line in (workdir / "metrics.jsonl").read_text().splitlines():
            json.loads(line)
        assert _steps_on_disk(workdir) == []  # no half-written checkpoint looks finished


def test_a_read_only_workdir_is_one_line_before_any_work(tmp_path, smoke_run):
    with tmpfs(tmp_path / "disk", "32m") as disk:
        workdir = disk / "run"
        shutil.copytree(smoke_run, workdir)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        before = _snapshot(workdir)
        train = run_cnnjax("train", f"--config={RECIPE}:smoke", f"--workdir={workdir}")
        assert train.returncode == 2
        assert _error_line(train.stderr) == (
            f"cnnjax train: error: cannot write the lock file to {workdir} (the folder is "
            "read-only): make it writable, then rerun the command"
        )
        evaluation = run_cnnjax("eval", f"--workdir={workdir}")
        assert evaluation.returncode == 2
        assert _error_line(evaluation.stderr, "eval") == (
            f"cnnjax eval: error: cannot write evaluation results to {workdir} (the folder is "
            "read-only): make it writable, then rerun the command"
        )
        assert _snapshot(workdir) == before
