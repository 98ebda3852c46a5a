"""Runs one run of a sweep: `python -m cnnjax.sweep.worker WORKDIR -- COMMAND...`.

Every launcher (local processes, SLURM array tasks) starts runs through this wrapper, which

* exits at once when the run is already done (so resubmitting a whole sweep is safe) or is held by
  another live process (the run's lock, see cnnjax/sweep/status.py);
* records the run's state, attempt count and wall time in `WORKDIR/sweep_status.json`, and its
  output in `WORKDIR/sweep_log.txt` (appended across attempts);
* on failure keeps the error's one line (`cnnjax train: error: ...` or the exception of a
  traceback) for the report, and exits with the command's status.

The command resumes from its last checkpoint by itself (`cnnjax train` does), so an interrupted
run continues where it stopped. The command is killed when the wrapper dies (Linux
PR_SET_PDEATHSIG), and the wrapper when its launcher dies, so killing a sweep stops its runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from cnnjax.sweep import status as run_status

ALREADY_RUNNING = 75  # EX_TEMPFAIL: another process holds the run


def die_with_parent() -> None:
    """Asks the kernel to send SIGTERM to this process when its parent exits (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere, killing the launcher's process group stops the runs


def error_line(output: str) -> str:
    """The line of `output` that says what went wrong."""
    lines = [line.strip() for line in output.replace("\r", "\n").splitlines() if line.strip()]
    for line in reversed(lines):
        if ": error: " in line:
            return line
    for line in reversed(lines):  # the exception line that ends a traceback
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return line
    return lines[-1] if lines else "no output"


def run(workdir: str, command: list[str]) -> int:
    lock = run_status.try_lock(workdir)
    if lock is None:
        print(f"{workdir}: another process is running it; leaving it alone", file=sys.stderr)
        return ALREADY_RUNNING
    state, previous = run_status.run_state(workdir, holding_lock=True)
    if state == run_status.DONE:
        return 0
    attempts = int(previous.get("attempts", 0)) + 1
    run_status.write_status(
        workdir,
        state=run_status.RUNNING,
        attempts=attempts,
        pid=os.getpid(),
        command=command,
        started=time.time(),
        error=None,
        returncode=None,
    )
    start = time.perf_counter()
    log_path = os.path.join(workdir, run_status.LOG_FILE)
    with open(log_path, "a") as log:
        log.write(f"\n=== attempt {attempts}: {' '.join(command)}\n")
        log.flush()
        mark = log.tell()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            pass_fds=(lock.fileno(),),  # the lock lives as long as the run, even if we die
        )
        returncode = process.wait()
    seconds = time.perf_counter() - start
    if returncode == 0:
        run_status.write_status(workdir, state=run_status.DONE, returncode=0, seconds=seconds)
        return 0
    with open(log_path, errors="replace") as log:
        log.seek(mark)
        output = log.read()
    run_status.write_status(
        workdir,
        state=run_status.FAILED,
        returncode=returncode,
        seconds=seconds,
        error=error_line(output) if returncode > 0 else f"killed by signal {-returncode}",
    )
    return returncode


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m cnnjax.sweep.worker WORKDIR -- COMMAND...", file=sys.stderr)
        return 2
    die_with_parent()
    return run(argv[0], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
