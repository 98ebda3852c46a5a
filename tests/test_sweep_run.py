"""`cnnjax sweep` end to end: kill and resume, failing runs, SLURM arrays, the report's numbers.

Tiny sweeps (2 runs of a few steps): each run is a `cnnjax train` process, whose start is what
costs. The report's statistics on many runs are pinned in tests/test_sweep_report.py."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cnnjax.config_loader import load_config
from cnnjax.errors import UserError
from cnnjax.sweep import command as sweep_command
from cnnjax.sweep import status as run_status
from cnnjax.sweep.slurm_executor import SlurmOptions
from cnnjax.sweep.stats import summarize
from tests.conftest import RECIPE, ROOT, TEST_DATA_DIR, run_cnnjax

# Two arms of one seed on 512 images (4 steps an epoch): relu for 2 epochs, tanh for 6 (long
# enough to be stopped midway), a checkpoint every 3 steps, a training-error threshold in the
# report.
TINY_SWEEP = f"""\
import ml_collections


def get_config():
    s = ml_collections.ConfigDict()
    s.base = {RECIPE + ":smoke"!r}
    s.overrides = {{
        "data": {{"train_split": "train[:512]", "eval_split": "test[:200]"}},
        "train": {{"log_every_steps": 2, "checkpoint_every_steps": 3}},
    }}
    s.axes = [
        {{
            "_name": "activation",
            "_labels": ("relu", "tanh"),
            "model.activation": ("relu", "tanh"),
            "train.epochs": (2, 6),
        }}
    ]
    s.seeds = (0,)
    s.report = {{
        "metrics": ("train_accuracy", "test_accuracy"),
        "thresholds": [
            {{"name": "epochs_to_train_error_60", "split": "train", "key": "accuracy",
              "at_least": 0.4}}
        ],
        "curves": [("train", "accuracy"), ("test", "accuracy")],
    }}
    return s
"""


def _tiny_sweep(tmp_path) -> str:
    path = tmp_path / "sweep_config.py"
    path.write_text(TINY_SWEEP)
    return str(path)


def _slurm_sweep(config_file: str, sweep_dir: str) -> int:
    """`cnnjax sweep --config=CONFIG_FILE --workdir=SWEEP_DIR --launcher=slurm` in this process
    (it only writes files and calls sbatch); returns its exit status. A local sweep starts its
    runs with a preexec_fn, which must not run in a forked copy of this multithreaded (JAX)
    process: those sweeps are `cnnjax sweep` processes."""
    config = load_config(config_file)
    return sweep_command.sweep(
        config,
        config_file,
        sweep_dir,
        workers=1,
        launcher="slurm",
        dry_run=False,
        slurm_options=SlurmOptions(),
    )


def _env(**extra):
    return dict(os.environ, TFDS_DATA_DIR=TEST_DATA_DIR, **extra)


def _plan(sweep_dir) -> dict:
    with open(os.path.join(sweep_dir, "sweep.json")) as f:
        return json.load(f)


def _states(sweep_dir) -> dict:
    return {r["run_id"]: run_status.run_state(r["workdir"]) for r in _plan(sweep_dir)["runs"]}


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _latest_checkpoint(workdir) -> int:
    folder = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
    return max(steps, default=0)


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_killed_sweep_resumes_without_rerunning_finished_runs(tmp_path, data_dir, capsys):
    config_file, sweep_dir = _tiny_sweep(tmp_path), str(tmp_path / "sweep")
    command = [sys.executable, "-m", "cnnjax.cli", "sweep", f"--config={config_file}"]
    process = subprocess.Popen(
        [*command, f"--workdir={sweep_dir}", "--workers=1"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: os.path.exists(os.path.join(sweep_dir, "sweep.json")), 60, "the plan")
        first, second = (r["workdir"] for r in _plan(sweep_dir)["runs"])
        # Killed once the first run is done and the second has saved a step (read without
        # run_state, whose momentary lock could make a starting run think it is held).
        _wait_for(
            lambda: (
                run_status.read_status(first).get("state") == "done"
                and _latest_checkpoint(second) >= 3
            ),
            240,
            "the first run to finish and the second to save a step",
        )
        process.send_signal(signal.SIGKILL)  # no chance to clean up: the worst case
    finally:
        process.wait(timeout=30)
    # The runs die with the sweep (their locks are released), nothing keeps running.
    _wait_for(
        lambda: all(s != "running" for s, _ in _states(sweep_dir).values()),
        30,
        "the runs of the killed sweep to stop",
    )
    plan = _plan(sweep_dir)
    workdir = {r["run_id"]: r["workdir"] for r in plan["runs"]}
    before = _states(sweep_dir)
    states = [before[r["run_id"]][0] for r in plan["runs"]]
    assert states == ["done", "interrupted"], before
    finished, stopped = (r["run_id"] for r in plan["runs"])
    mtime = os.path.getmtime(os.path.join(workdir[finished], "results.json"))
    checkpointed = _latest_checkpoint(workdir[stopped])

    # A partial report works while runs are missing, and says so.
    capsys.readouterr()
    assert sweep_command.report(sweep_dir) == 0
    assert "PARTIAL" in capsys.readouterr().out

    again = run_cnnjax("sweep", f"--config={config_file}", f"--workdir={sweep_dir}")
    assert again.returncode == 0, again.stdout + again.stderr
    after = _states(sweep_dir)
    assert all(state == "done" for state, _ in after.values()), after
    # The finished run is not rerun: one attempt, results untouched.
    assert after[finished][1]["attempts"] == 1
    assert os.path.getmtime(os.path.join(workdir[finished], "results.json")) == mtime
    # The stopped one gets a second attempt, which resumes from its last checkpoint.
    assert after[stopped][1]["attempts"] == 2
    resumed = json.load(open(os.path.join(workdir[stopped], "results.json")))
    assert resumed["resumed_from_step"] == checkpointed and resumed["steps"] == 24

    rows = _read_csv(os.path.join(sweep_dir, "report", "results.csv"))
    assert sorted(r["run_id"] for r in rows) == sorted(workdir)
    summary = json.load(open(os.path.join(sweep_dir, "report", "summary.json")))
    assert summary["progress"] == "complete: all 2 runs done"
    assert list(summary["arms"]) == plan["arms"] == ["activation=relu", "activation=tanh"]
    for arm in plan["arms"]:
        accuracies = [
            json.load(open(os.path.join(r["workdir"], "results.json")))["test_accuracy"]
            for r in plan["runs"]
            if r["arm"] == arm
        ]
        assert len(accuracies) == 1
        reported = summary["arms"][arm]["test_accuracy"]
        assert reported["n"] == 1 and reported["mean"] == accuracies[0]
        assert reported == pytest.approx(vars(summarize(accuracies)), nan_ok=True)
    markdown = open(os.path.join(sweep_dir, "report", "summary.md")).read()
    assert "complete: all 2 runs done" in markdown and "epochs_to_train_error_60" in markdown
    for name in ("curves.png", "train_accuracy.png", "epochs_to_train_error_60.png"):
        assert os.path.getsize(os.path.join(sweep_dir, "report", name)) > 10_000


# Three processes (11 s): the worker's failure record is checked alone in
# test_sweep_worker_signals.py, an inline sweep going on past a failure in test_sweep_inline.py.
@pytest.mark.slow
def test_failing_run_does_not_stop_the_sweep_and_is_reported(tmp_path, data_dir):
    config = tmp_path / "sweep.py"
    config.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    s = ml_collections.ConfigDict()\n"
        f"    s.base = {RECIPE + ':smoke'!r}\n"
        "    s.overrides = {'train': {'epochs': 1}, 'data': {'train_split': 'train[:512]'}}\n"
        "    s.axes = [{'data.batch_size': (64, 100000)}]\n"
        "    s.seeds = (0,)\n"
        "    return s\n"
    )
    sweep_dir = str(tmp_path / "sweep")
    result = run_cnnjax("sweep", f"--config={config}", f"--workdir={sweep_dir}", "--workers=2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed: batch_size=100000_seed0_" in result.stdout
    rows = {r["arm"]: r for r in _read_csv(os.path.join(sweep_dir, "report", "results.csv"))}
    assert rows["batch_size=64"]["state"] == "done"
    assert float(rows["batch_size=64"]["test_accuracy"]) > 0.1
    failed = rows["batch_size=100000"]
    assert failed["state"] == "failed"
    # The run's own one line, as `cnnjax train` printed it.
    assert failed["error"].startswith("cnnjax train: error: the training split has 512 examples")
    markdown = open(os.path.join(sweep_dir, "report", "summary.md")).read()
    assert "## Failed runs" in markdown and "fewer than one batch of 100000" in markdown
    assert "PARTIAL: 1 of 2 runs done (1 failed)" in markdown


def test_slurm_dry_run_prints_the_array_and_writes_nothing(tmp_path):
    # The command line's --slurm_* flags, through `cnnjax sweep` itself.
    sweep_dir = str(tmp_path / "sweep")
    result = run_cnnjax(
        "sweep",
        f"--config={_tiny_sweep(tmp_path)}",
        f"--workdir={sweep_dir}",
        "--launcher=slurm",
        "--dry_run",
        "--slurm_partition=gpu",
        "--slurm_gpus_per_task=1",
        "--slurm_max_parallel=2",
        "--slurm_signal_seconds=300",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "#SBATCH --array=0-1%2" in out and "#SBATCH --partition=gpu" in out
    assert "#SBATCH --gpus-per-task=1" in out and "#SBATCH --requeue" in out
    assert "#SBATCH --signal=B:TERM@300\n" in out and 'eval "exec $line" &\n' in out
    lines = [line for line in out.splitlines() if "-m cnnjax.sweep.worker" in line]
    assert len(lines) == 2
    assert len({line.split()[3] for line in lines}) == 2  # one workdir per run
    assert all(line.split()[3].startswith(f"{sweep_dir}/runs/") for line in lines)
    assert not os.path.exists(sweep_dir)


def test_slurm_script_covers_runs_not_done_and_resubmits_safely(
    tmp_path, data_dir, monkeypatch, capsys
):
    sweep_dir = str(tmp_path / "sweep")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"  # records its argument instead of queueing a job
    fake.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/submitted\necho Submitted batch job 42\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    config_file = _tiny_sweep(tmp_path)
    assert _slurm_sweep(config_file, sweep_dir) == 0
    assert "Submitted batch job 42" in capsys.readouterr().out
    script = os.path.join(sweep_dir, "slurm", "sweep.sbatch")
    assert open(tmp_path / "submitted").read().strip() == script
    text = open(script).read()
    assert "#SBATCH --array=0-1\n" in text and "--open-mode=append" in text
    commands = open(os.path.join(sweep_dir, "slurm", "commands.txt")).read().splitlines()
    plan = _plan(sweep_dir)
    assert [c.split()[3] for c in commands] == [r["workdir"] for r in plan["runs"]]

    # Array task 0 runs line 1 as the script does; the run trains to the end.
    task = subprocess.run(
        ["bash", "-c", commands[0]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert task.returncode == 0, task.stderr
    done = plan["runs"][0]["workdir"]
    assert run_status.run_state(done)[0] == "done"
    # A requeued or resubmitted task of a finished run exits at once and changes nothing.
    stamp = os.path.getmtime(os.path.join(done, "results.json"))
    again = subprocess.run(["bash", "-c", commands[0]], cwd=ROOT, timeout=60)
    assert again.returncode == 0
    assert os.path.getmtime(os.path.join(done, "results.json")) == stamp
    assert run_status.read_status(done)["attempts"] == 1
    # Resubmitting the sweep covers only the run left.
    assert _slurm_sweep(config_file, sweep_dir) == 0
    assert "#SBATCH --array=0-0\n" in open(script).read()
    remaining = open(os.path.join(sweep_dir, "slurm", "commands.txt")).read().splitlines()
    assert [c.split()[3] for c in remaining] == [plan["runs"][1]["workdir"]]


def test_a_run_held_by_a_live_process_is_left_alone(tmp_path):
    workdir = str(tmp_path / "run")
    lock = run_status.try_lock(workdir)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cnnjax.sweep.worker", workdir, "--", "true"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 75
        assert "another process is running it" in result.stderr
        assert run_status.run_state(workdir)[0] == "running"
        assert not os.path.exists(os.path.join(workdir, run_status.STATUS_FILE))
    finally:
        lock.close()
    assert run_status.run_state(workdir)[0] == "pending"


def test_report_of_a_directory_without_a_sweep_is_one_error(tmp_path):
    with pytest.raises(UserError, match="has no sweep.json") as error:
        sweep_command.report(str(tmp_path))
    assert "\n" not in str(error.value)
