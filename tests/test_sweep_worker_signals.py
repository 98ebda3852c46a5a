"""cnnjax.sweep.worker under SIGTERM / SIGINT: passes the signal on once, waits, and records the
run as interrupted (resumable), not failed. The run is a Python stand-in, nothing trains."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cnnjax.sweep import status as run_status
from tests.conftest import ROOT

LINE = (
    "cnnjax train: interrupted by {name} at step 3 of 10: checkpoint 3 is saved in "
    "/w/checkpoints; rerun the same command to resume"
)
# As `cnnjax train` does: on a signal, "save" (0.3 s, in which a second signal would be caught
# and counted), print one line and exit 128 + N. It counts every signal it gets in `got`.
STAND_IN = f"""\
import os, signal, sys, time
out = sys.argv[1]
def stop(number, frame):
    with open(os.path.join(out, "got"), "a") as f:
        f.write(signal.Signals(number).name + "\\n")
    time.sleep(0.3)
    print({LINE!r}.format(name=signal.Signals(number).name), file=sys.stderr)
    sys.exit(128 + number)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
open(os.path.join(out, "ready"), "w").close()
time.sleep(30)
sys.exit(99)
"""


def _start_worker(workdir, out, command=None) -> subprocess.Popen:
    command = command or [sys.executable, "-c", STAND_IN, str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "cnnjax.sweep.worker", str(workdir), "--", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a job started from a terminal
    )


def _wait_for_file(path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.01)


@pytest.mark.parametrize(
    "sig, to_group",
    [
        (signal.SIGTERM, False),  # SLURM's batch shell, `kill`, the local launcher
        (signal.SIGINT, True),  # a terminal's Ctrl-C: the whole foreground process group
    ],
)
def test_a_stop_signal_reaches_the_run_once_and_leaves_it_interrupted(tmp_path, sig, to_group):
    workdir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    worker = _start_worker(workdir, out)
    try:
        _wait_for_file(out / "ready")
        if to_group:
            os.killpg(worker.pid, sig)
        else:
            worker.send_signal(sig)
        stdout, stderr = worker.communicate(timeout=10)
    finally:
        worker.kill()
    assert worker.returncode == 128 + sig
    assert (out / "got").read_text() == f"{sig.name}\n"  # once: a second would skip the save
    assert stderr == (
        f"cnnjax.sweep.worker: {sig.name}: passed on to the run, which saves its current step "
        "and stops\n"
    )
    status = run_status.read_status(str(workdir))
    assert (status["state"], status["returncode"], status["error"], status["attempts"]) == (
        "interrupted",
        128 + sig,
        None,
        1,
    )
    assert status["message"] == LINE.format(name=sig.name)
    assert run_status.run_state(str(workdir))[0] == "interrupted"


def test_an_interrupted_run_is_resumed_by_the_next_attempt(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    run_status.write_status(
        str(workdir), state="interrupted", attempts=1, returncode=143, message="interrupted by X"
    )
    assert run_status.run_state(str(workdir))[0] == "interrupted"
    finish = "import json; json.dump({'test_accuracy': 0.5}, open('results.json', 'w'))"
    worker = subprocess.run(
        [sys.executable, "-m", "cnnjax.sweep.worker", str(workdir), "--", "sh", "-c"]
        + [f'cd {workdir} && {sys.executable} -c "{finish}"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert worker.returncode == 0, worker.stderr
    state, status = run_status.run_state(str(workdir))
    assert (state, status["attempts"], status["returncode"], status["message"]) == (
        "done",
        2,
        0,
        None,
    )
    assert json.load(open(workdir / "results.json")) == {"test_accuracy": 0.5}


def test_a_run_killed_by_the_signal_before_it_saves_is_interrupted_too(tmp_path):
    # A command without a handler (cnnjax train before its training loop) dies of SIGTERM.
    workdir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    command = ["sh", "-c", f"touch {out}/ready; exec sleep 30"]
    worker = _start_worker(workdir, out, command)
    try:
        _wait_for_file(out / "ready")
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=10)
    finally:
        worker.kill()
    assert worker.returncode == 143
    status = run_status.read_status(str(workdir))
    assert (status["state"], status["returncode"], status["message"]) == (
        "interrupted",
        -15,
        "interrupted by SIGTERM (status 143)",
    )


def test_a_failing_run_is_recorded_failed_with_its_last_error_line(tmp_path):
    """What `cnnjax sweep` reports for a run whose `cnnjax train` exits with a one-line error
    (the whole sweep around it: test_sweep_run.py's slow failing-run test)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    error = "cnnjax train: error: the training split has 512 examples, fewer than one batch"
    fail = f"import sys; print('noise'); print({error!r}, file=sys.stderr); sys.exit(2)"
    worker = subprocess.run(
        [sys.executable, "-m", "cnnjax.sweep.worker", str(workdir), "--", sys.executable]
        + ["-c", fail],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert worker.returncode == 2
    state, status = run_status.run_state(str(workdir))
    assert (state, status["attempts"], status["returncode"]) == ("failed", 1, 2)
    assert status["error"] == error
