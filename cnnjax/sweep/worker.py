"""Runs one run of a sweep: `python -m cnnjax.sweep.worker WORKDIR -- COMMAND...`.

Every launcher (local processes, SLURM array tasks) starts runs through this wrapper, which

* exits at once when the run is already done (so resubmitting a whole sweep is safe) or is held by
  another live process (the run's lock, see cnnjax/sweep/status.py);
* records the run's state, attempt count and wall time in `WORKDIR/sweep_status.json`, and its
  output in `WORKDIR/sweep_log.txt` (appended across attempts);
* on failure keeps the error's one line (`cnnjax train: error: ...` or the exception of a
  traceback) for the report, and exits with the command's status;
* passes SIGTERM and SIGINT on to the command instead of dying of them, and keeps waiting:
  `cnnjax train` then saves its current step and exits 143 or 130 (128 + the signal); that, or
  a command that died of the signal, is recorded as `interrupted` (not failed, resumed by the
  next `cnnjax sweep`) with the command's one line, and is this wrapper's exit status.

The command resumes from its last checkpoint by itself (`cnnjax train` does), so an interrupted
run continues where it stopped. The command gets SIGTERM when the wrapper dies (Linux
PR_SET_PDEATHSIG), and the wrapper when its launcher dies, so killing a sweep stops its runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

from cnnjax.sweep import status as run_status

ALREADY_RUNNING = 75  # EX_TEMPFAIL: another process holds the run
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# `cnnjax train` after a stop signal (it saved its step), or the command killed by one.
_INTERRUPTED = {128 + s for s in STOP_SIGNALS} | {-s for s in STOP_SIGNALS}


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


def exit_status(returncode: int) -> int:
    """The shell's form of a returncode: killed by signal N (returncode -N) -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def interrupt_line(output: str, returncode: int) -> str:
    """The command's own line about the stop (`cnnjax train: interrupted by SIGTERM at step
    ...`), or one naming the signal."""
    for line in reversed(output.replace("\r", "\n").splitlines()):
        if "interrupted by " in line:
            return line.strip()
    name = signal.Signals(exit_status(returncode) - 128).name
    return f"interrupted by {name} (status {exit_status(returncode)})"


class _Forwarder:
    """A handler for SIGTERM / SIGINT that passes the signal on to the command.

    Every signal received is passed on exactly once (a second one, someone insisting, makes
    `cnnjax train` stop at once without saving); one that comes before the command exists is
    passed on when it does (`attach`).
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.pending: int | None = None

    def __call__(self, number: int, frame) -> None:
        del frame
        print(
            f"cnnjax.sweep.worker: {signal.Signals(number).name}: passed on to the run, which "
            "saves its current step and stops",
            file=sys.stderr,
            flush=True,
        )
        if self.process is None:
            self.pending = number
        else:
            self._send(number)

    def attach(self, process: subprocess.Popen) -> None:
        self.process = process
        number, self.pending = self.pending, None
        if number is not None:
            self._send(number)

    def _send(self, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # it may have just exited
            self.process.send_signal(number)


def _start(command: list[str], log, lock) -> subprocess.Popen:
    def own_group_and_tie():
        # Its own process group: a terminal's Ctrl-C reaches only this wrapper, which passes it
        # on once; from the group too, it would arrive twice and stop the run without saving.
        os.setpgid(0, 0)
        die_with_parent()

    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,  # outside the terminal's group, reading it would stop it
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=own_group_and_tie,
        pass_fds=(lock.fileno(),),  # the lock lives as long as the run, even if we die
    )


def run(workdir: str, command: list[str]) -> int:
    """Runs `command` for the run in `workdir` unless it is done or held; returns the exit status
    (the command's, 128 + N when a signal N ended it, ALREADY_RUNNING when held)."""
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
        message=None,
        returncode=None,
    )
    start = time.perf_counter()
    log_path = os.path.join(workdir, run_status.LOG_FILE)
    with open(log_path, "a") as log:
        log.write(f"\n=== attempt {attempts}: {' '.join(command)}\n")
        log.flush()
        mark = log.tell()
        forwarder = _Forwarder()
        handlers = {number: signal.signal(number, forwarder) for number in STOP_SIGNALS}
        try:
            forwarder.attach(_start(command, log, lock))
            returncode = forwarder.process.wait()  # resumed after each handler (PEP 475)
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)
    seconds = time.perf_counter() - start
    if returncode == 0:
        run_status.write_status(workdir, state=run_status.DONE, returncode=0, seconds=seconds)
        return 0
    with open(log_path, errors="replace") as log:
        log.seek(mark)
        output = log.read()
    if returncode in _INTERRUPTED:
        run_status.write_status(
            workdir,
            state=run_status.INTERRUPTED,
            returncode=returncode,
            seconds=seconds,
            message=interrupt_line(output, returncode),
        )
        return exit_status(returncode)
    run_status.write_status(
        workdir,
        state=run_status.FAILED,
        returncode=returncode,
        seconds=seconds,
        error=error_line(output) if returncode > 0 else f"killed by signal {-returncode}",
    )
    return exit_status(returncode)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m cnnjax.sweep.worker WORKDIR -- COMMAND...", file=sys.stderr)
        return 2
    die_with_parent()
    return run(argv[0], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
