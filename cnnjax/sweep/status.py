"""Where a sweep's run stands, read from its workdir: done, failed, running, interrupted, pending.

The worker (cnnjax/sweep/worker.py) writes `sweep_status.json` and holds an exclusive `flock` on
`.sweep.lock` for as long as the run's process lives; the kernel releases the lock when the
process dies, however it dies, so a held lock means "running" and a "running" status with a free
lock means the run was interrupted (it resumes from its last checkpoint when started again).
A run stopped by SIGTERM or SIGINT after saving its step says so itself: state "interrupted",
with the command's returncode (143, 130) and its one line in `message`; it resumes the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

STATUS_FILE = "sweep_status.json"
LOCK_FILE = ".sweep.lock"
LOG_FILE = "sweep_log.txt"

DONE, FAILED, RUNNING, INTERRUPTED, PENDING = "done", "failed", "running", "interrupted", "pending"


def read_status(workdir: str) -> dict:
    path = os.path.join(workdir, STATUS_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_status(workdir: str, **fields) -> dict:
    """Updates the status file atomically (a reader never sees half a file)."""
    status = {**read_status(workdir), **fields, "updated": time.time()}
    path = os.path.join(workdir, STATUS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(status, f, indent=2)
    os.replace(path + ".tmp", path)
    return status


def try_lock(workdir: str):
    """An open file holding the run's exclusive lock, or None when another process holds it."""
    os.makedirs(workdir, exist_ok=True)
    handle = open(os.path.join(workdir, LOCK_FILE), "a")  # noqa: SIM115 (held by the caller)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def is_locked(workdir: str) -> bool:
    if not os.path.exists(os.path.join(workdir, LOCK_FILE)):
        return False
    handle = try_lock(workdir)
    if handle is None:
        return True
    with contextlib.closing(handle):
        return False


def run_state(workdir: str, *, holding_lock: bool = False) -> tuple[str, dict]:
    """(state, status fields) of the run in `workdir`; `holding_lock` when the caller holds it
    (a second flock from the same process would conflict with its own)."""
    status = read_status(workdir)
    if not holding_lock and is_locked(workdir):
        return RUNNING, status
    state = status.get("state")
    if state == DONE and os.path.exists(os.path.join(workdir, "results.json")):
        return DONE, status
    if state == FAILED:
        return FAILED, status
    if state in (RUNNING, INTERRUPTED):
        return INTERRUPTED, status
    return PENDING, status
