"""A run under hostile conditions loses nothing and reports the truth: "best" is the best test
accuracy over the run's whole life, a diverged run stops before saving anything non-finite, one
`cnnjax train` per workdir, and a resume with other math is refused."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import (
    RECIPE,
    RESUME_OVERRIDES,
    ROOT,
    TEST_DATA_DIR,
    resume_command,
    run_cnnjax,
    tmpfs,
)
from test_cli import _snapshot

from cnnjax.errors import UserError

# A run that is good for 2 epochs (test accuracy 0.79 at step 40 on this data), then diverges
# without a NaN: the learning rate x 1e4 at epoch 2 leaves the test accuracy near 0.1 at step 80.
DIVERGING = (
    "--config.train.epochs=4",
    "--config.optimizer.schedule=step",
    "--config.optimizer.decay_epochs=(2,)",
    "--config.optimizer.decay_factor=10000",
    "--config.optimizer.allow_lr_increase=True",
)


def _popen(*args: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    env = dict(os.environ, TFDS_DATA_DIR=TEST_DATA_DIR)
    return subprocess.Popen(
        [sys.executable, "-m", "cnnjax.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def _wait_for(predicate, process, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


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


def test_best_is_the_best_test_accuracy_across_a_kill_9_and_resume(tmp_path, data_dir):
    from cnnjax.inspect.evaluation_report import evaluate_workdir
    from cnnjax.train.finetune import read_pretrained

    workdir = tmp_path / "run"
    command = ("train", f"--config={RECIPE}:smoke", f"--workdir={workdir}", *DIVERGING)
    process = _popen(*command)
    # Killed once it has saved a step after the good epoch: Orbax then holds 40 (ranked) and a
    # later unranked one; the resumed process must still know that 40 is the best.
    _wait_for(lambda: any(s > 42 for s in _steps_on_disk(workdir)), process, "a step past 42")
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run_cnnjax(*command)
    assert result.returncode == 0, result.stderr[-3000:]

    accuracy = _test_records(workdir)
    best_step = max(accuracy, key=accuracy.get)
    assert best_step == 40 and accuracy[40] > 0.7 and accuracy[80] < 0.3, accuracy
    results = json.loads((workdir / "results.json").read_text())
    assert results["best_checkpoint_step"] == 40
    assert results["best_test_accuracy"] == accuracy[40]
    assert results["test_accuracy"] == accuracy[80]
    # keep_best_checkpoints=2: exactly the two best (40, then 20) and the latest.
    assert _steps_on_disk(workdir) == [20, 40, 80]

    evaluation = evaluate_workdir(str(workdir), "best")
    assert evaluation["step"] == 40
    assert evaluation["top_1_accuracy"] == pytest.approx(accuracy[40])
    assert read_pretrained(str(workdir), "best")[1] == 40  # finetune.checkpoint=best


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
    tmp_path, data_dir
):
    workdir = tmp_path / "run"
    command = ("train", f"--config={RECIPE}:smoke", f"--workdir={workdir}")
    first = _popen(*command, stderr=subprocess.PIPE)
    lock = workdir / ".train.lock"
    _wait_for(lambda: lock.exists() and '"pid"' in lock.read_text(), first, "the lock")
    start = time.monotonic()
    second = run_cnnjax(*command)
    seconds = time.monotonic() - start
    assert second.returncode == 2
    assert re.fullmatch(
        rf"cnnjax train: error: {re.escape(str(workdir))} is in use by another `cnnjax train` "
        rf"\(pid {first.pid} on [^,]+, since [0-9T:-]+\): wait for it to finish or stop it, or "
        r"give another --workdir",
        _error_line(second.stderr),
    ), second.stderr
    assert seconds < 5, seconds
    _, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr[-3000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    # 40 steps logged every 5, and each of the 2 epochs' train and test records: all of them.
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(5, 41, 5))
    assert [r["step"] for r in rows if r["split"] != "train"] == [20, 20, 40, 40]
    assert not lock.exists()  # a finished run leaves no lock file (a killed one's never blocks)


def _reference_config(**changes):
    """The config of `resume_command` (the reference run) with `changes` {dotted key: value}."""
    from cnnjax.sweep.plan import load_config_file

    config = load_config_file(f"{RECIPE}:smoke")
    overrides = dict(o.removeprefix("--config.").split("=") for o in RESUME_OVERRIDES)
    overrides = {k: json.loads(v.lower()) for k, v in overrides.items()}
    for key, value in {**overrides, "data.data_dir": TEST_DATA_DIR, **changes}.items():
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return config


def test_a_resume_with_other_math_is_refused_unless_allowed_and_keeps_the_history(
    tmp_path, reference_run
):
    from cnnjax.train import train_and_evaluate

    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    before = _snapshot(workdir)
    changed = _reference_config(**{"optimizer.learning_rate": 0.01})
    with pytest.raises(UserError) as error:
        train_and_evaluate(changed, str(workdir))
    assert str(error.value) == (
        f"{workdir} holds a run trained to step 60 with other settings "
        "(optimizer.learning_rate 0.002 -> 0.01): rerun with its recorded settings "
        "(config.json), give a new --workdir, or pass --allow_config_change to continue with "
        "the new ones (the old config is kept in config_history/)"
    )
    assert _snapshot(workdir) == before

    # Operational keys may change freely: more frequent logs are not another experiment.
    same = _reference_config(**{"train.log_every_steps": 3, "data.eval_batch_size": 500})
    assert train_and_evaluate(same, str(workdir))["config_changes"] == []

    old_config = (workdir / "config.json").read_text()
    results = train_and_evaluate(changed, str(workdir), allow_config_change=True)
    assert results["config_changes"] == [
        {"step": 60, "changes": {"optimizer.learning_rate": [0.002, 0.01]}}
    ]
    assert (workdir / "config_history" / "step_60.json").read_text() == old_config
    assert json.loads((workdir / "config.json").read_text())["optimizer"]["learning_rate"] == 0.01
    assert (
        json.loads((workdir / "results.json").read_text())["config_changes"]
        == (results["config_changes"])
    )


def test_a_resume_command_with_another_learning_rate_is_one_line(tmp_path, reference_run):
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    before = _snapshot(workdir)
    result = run_cnnjax(*resume_command(workdir), "--config.optimizer.learning_rate=0.01")
    assert result.returncode == 2
    assert "(optimizer.learning_rate 0.002 -> 0.01)" in _error_line(result.stderr)
    assert _snapshot(workdir) == before


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    result = run_cnnjax("train", f"--config={RECIPE}:smoke", f"--workdir={path}")
    assert result.returncode == 2
    assert _error_line(result.stderr) == (
        f"cnnjax train: error: --workdir={path} is a file, not a folder: give a folder path"
    )
    assert path.read_text() == "keep me"


def test_a_full_disk_is_one_line_and_the_files_written_before_stay_whole(tmp_path, data_dir):
    with tmpfs(tmp_path / "disk", "400k") as disk:  # room for the logs, not for a checkpoint
        workdir = disk / "run"
        result = run_cnnjax("train", f"--config={RECIPE}:smoke", f"--workdir={workdir}")
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


def test_a_read_only_workdir_is_one_line_before_any_work(tmp_path, reference_run):
    with tmpfs(tmp_path / "disk", "8m") as disk:
        workdir = disk / "run"
        shutil.copytree(reference_run, workdir)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        before = _snapshot(workdir)
        train = run_cnnjax(*resume_command(workdir))
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
