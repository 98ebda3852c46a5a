"""The SLURM scripts' early SIGTERM: each asks for it, passes it on, waits, and requeues.

The generated scripts run here under bash, with fake `scontrol` / `srun` on PATH and a Python
stand-in for the run (nothing trains): the stand-in catches the signal, "saves" for a moment and
exits 128 + N, as `cnnjax train` does.
"""

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cnnjax.errors import UserError
from cnnjax.sweep.slurm_executor import SlurmOptions, script_text
from launch import multihost_slurm

# The run: catches SIGTERM / SIGINT, records it, takes 0.5 s to "save", then exits `code` (or
# 128 + N when `code` is "signal"); with `code` "now:N" it exits N at once, without a signal.
# The delay proves that the script waits for the run's end.
STAND_IN = """\
import os, signal, sys, time
out, code = sys.argv[1], sys.argv[2]
def stop(number, frame):
    with open(os.path.join(out, "got"), "a") as f:
        f.write(signal.Signals(number).name + "\\n")
    time.sleep(0.5)
    open(os.path.join(out, "saved"), "w").close()
    sys.exit(128 + number if code == "signal" else int(code))
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)  # bash starts background jobs with SIGINT ignored
open(os.path.join(out, "ready"), "w").close()
if code.startswith("now:"):
    sys.exit(int(code[4:]))
time.sleep(30)
sys.exit(99)
"""


def _fake(bin_dir, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _catches(pid: int, number: int) -> bool:
    """Whether process `pid` has a handler for signal `number` (its trap is set)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) >> (number - 1) & 1)


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    # Only a bound on a hang.
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_sweep_script_asks_for_the_signal_and_ends_by_passing_it_on():
    text = script_text("/s/slurm/commands.txt", "/s/slurm", 4, SlurmOptions())
    lines = text.splitlines()
    assert lines[lines.index("#SBATCH --requeue") + 1] == "#SBATCH --signal=B:TERM@120"
    options = SlurmOptions(signal_seconds=300)
    assert "#SBATCH --signal=B:TERM@300\n" in script_text("/c", "/l", 1, options)
    start = lines.index('echo "task $SLURM_ARRAY_TASK_ID on $(hostname): $line"') + 1
    assert "\n".join(lines[start:]) + "\n" == textwrap.dedent(
        """\
        # SLURM's SIGTERM (--signal=B:...) reaches only this shell: pass it on, let the run save, requeue.
        eval "exec $line" &
        child=$!
        signalled=0
        forward() { signalled=1; kill -s "$1" "$child" 2>/dev/null || true; }
        trap 'forward TERM' TERM
        trap 'forward INT' INT
        status=0
        wait "$child" || status=$?
        while [ "$signalled" = 1 ]; do
          signalled=0
          code=0
          wait "$child" || code=$?
          if [ "$code" != 127 ]; then status=$code; fi
        done
        if [ "$status" = 143 ] || [ "$status" = 130 ]; then
          echo "task $SLURM_ARRAY_TASK_ID: the run saved its step and stopped (status $status); requeueing"
          scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" ||
            echo "task $SLURM_ARRAY_TASK_ID: requeue refused (cancelled?): resubmit the sweep to resume"
        fi
        exit "$status"
        """  # noqa: E501
    )


@pytest.mark.parametrize("seconds", [0, 65536])
def test_sweep_script_refuses_a_signal_time_slurm_does_not_take(seconds):
    with pytest.raises(UserError) as error:
        script_text("/c", "/l", 1, SlurmOptions(signal_seconds=seconds))
    assert str(error.value) == f"--slurm_signal_seconds must be 1 to 65535 (got {seconds})"


@pytest.mark.parametrize(
    "sig, code, status, requeued",
    [
        (signal.SIGTERM, "signal", 143, True),  # saved on SLURM's early SIGTERM: back in the queue
        (signal.SIGINT, "signal", 130, True),  # `scancel --signal=INT --batch`
        (signal.SIGTERM, "3", 3, False),  # diverged while stopping: not requeued
        (None, "now:0", 0, False),  # finished (or already done): the task ends
        (None, "now:5", 5, False),
    ],
)
def test_sweep_task_passes_the_signal_on_waits_and_requeues(tmp_path, sig, code, status, requeued):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    _fake(bin_dir, "scontrol", f'echo "$* saved=$(ls {out} | grep -c saved)" >> {tmp_path}/calls')
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    commands = tmp_path / "commands.txt"
    stand_in = shlex.join([sys.executable, str(tmp_path / "stand_in.py"), str(out), code])
    commands.write_text(f"false\n{stand_in}\n")  # task 1 runs line 2
    script = tmp_path / "sweep.sbatch"
    script.write_text(script_text(str(commands), str(tmp_path), 2, SlurmOptions()))
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_ARRAY_JOB_ID="77",
        SLURM_ARRAY_TASK_ID="1",
    )
    shell = subprocess.Popen(
        ["bash", str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # SLURM starts the batch shell with default signal handling; a test run started in the
        # background (`pytest ... &`) inherits SIGINT ignored, and bash cannot trap a signal
        # ignored at its start.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        if sig is not None:
            _wait_for(lambda: (out / "ready").exists() and _catches(shell.pid, sig), "the task")
            shell.send_signal(sig)  # as SLURM does with --signal=B:...: the batch shell only
        output, _ = shell.communicate(timeout=60)  # only a bound on a hang: 2 busy cores are slow
    finally:
        shell.kill()
    assert shell.returncode == status, output
    assert (out / "ready").exists()
    if sig is not None:
        assert (out / "got").read_text() == f"{sig.name}\n"  # passed on once
    if requeued:
        assert (tmp_path / "calls").read_text() == "requeue 77_1 saved=1\n"  # after the save
        assert output.endswith(
            f"task 1: the run saved its step and stopped (status {status}); requeueing\n"
        )
    else:
        assert not (tmp_path / "calls").exists()


def test_multihost_script_asks_every_task_for_the_signal():
    script = multihost_slurm.slurm_script(
        ["--config=c.py", "--workdir=w"], nodes=1, gpus_per_node=1, log_dir="/l", python="/py"
    )
    lines = script.splitlines()
    assert lines[lines.index("#SBATCH --requeue") + 1] == "#SBATCH --signal=TERM@120"
    assert lines[lines.index("status=0") :] == [
        "status=0",
        "srun --kill-on-bad-exit=1 --cpus-per-task=8 /py -m cnnjax.cli train --distributed "
        "--config=c.py --workdir=w || status=$?",
        'if [ "$status" = 143 ]; then',
        '  echo "job $SLURM_JOB_ID: the run saved its step and stopped; requeueing"',
        '  scontrol requeue "$SLURM_JOB_ID" ||',
        '    echo "job $SLURM_JOB_ID: requeue refused (cancelled?): submit again to resume"',
        "fi",
        'exit "$status"',
    ]
    other = multihost_slurm.slurm_script(
        ["--config=c.py", "--workdir=w"], nodes=1, gpus_per_node=1, log_dir="/l", signal_seconds=9
    )
    assert "#SBATCH --signal=TERM@9\n" in other


@pytest.mark.parametrize("srun_status, requeued", [(143, True), (1, False), (0, False)])
def test_multihost_job_requeues_when_srun_ends_with_143(tmp_path, srun_status, requeued):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "srun", f'echo "$*" > {tmp_path}/srun\nexit {srun_status}')
    _fake(bin_dir, "scontrol", f'echo "$*" >> {tmp_path}/calls')
    script = tmp_path / "train.sbatch"
    script.write_text(
        multihost_slurm.slurm_script(
            ["--config=c.py", "--workdir=w"], nodes=1, gpus_per_node=1, log_dir="/l", python="/py"
        )
    )
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_ID="88",
        SLURM_JOB_NODELIST="n1",
    )
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert result.returncode == srun_status, result.stderr
    assert (tmp_path / "srun").read_text().startswith("--kill-on-bad-exit=1 --cpus-per-task=8 /py")
    if requeued:
        assert (tmp_path / "calls").read_text() == "requeue 88\n"
        assert result.stdout.endswith("job 88: the run saved its step and stopped; requeueing\n")
    else:
        assert not (tmp_path / "calls").exists()
