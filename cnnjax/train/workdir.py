"""A run's workdir as a place on disk: created or refused with one line, held by one `cnnjax
train` at a time, and written atomically so that a crash or a full disk never leaves half a file.

The lock is an exclusive `flock` on `<workdir>/.train.lock`, which the kernel drops when the
holding process ends however it ends (kill -9 included): a stale lock file never blocks. The file
names the holder (pid, host, start time) for the message the next process prints. A workdir on
an object store (gs://bucket/run) has no flock: there the lock is a lease that its holder renews
(cnnjax/train/remote_lock.py).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator

from etils import epath

from cnnjax.errors import UserError
from cnnjax.files import (
    forget_listings,
    is_remote,
    resolve,
    strict_json,
    write_atomically,
    write_failure,
    write_json,
)
from cnnjax.train import remote_lock

__all__ = ["strict_json", "write_atomically", "write_failure", "write_json"]

LOCK_FILE = ".train.lock"
CHECKPOINT_DIR = "checkpoints"
COMMIT_FILE = "commit_success.txt"  # Orbax's mark of a finished save on an object store
# Workdirs whose lock this process holds, with a count: `cnnjax train` takes the lock before
# its heavy imports and train_and_evaluate takes it again (a second flock would block).
_HELD: dict[str, int] = {}


def make_workdir(workdir: str) -> None:
    """Creates `workdir` (and its parents); a path that is a file or cannot be created is one
    line."""
    if is_remote(workdir):  # an object store has no folders to make: only its bucket must exist
        try:
            epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        except Exception as error:  # noqa: BLE001 (network and HTTP errors are not OSErrors)
            raise write_failure("the workdir", workdir, error, "rerun the command") from None
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir} is a file, not a folder: give a folder path")
    try:
        os.makedirs(workdir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(
            f"--workdir={workdir} cannot be created: a part of its path is a file"
        ) from None
    except OSError as error:
        raise write_failure("the workdir", workdir, error, "rerun the command") from None


def ensure_writable(folder: str, what: str) -> None:
    """Fails with one line, before any work, when `folder` cannot take new files."""
    probe = epath.Path(folder) / f".cnnjax-write-check-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except Exception as error:  # noqa: BLE001 (an object store's errors are not all OSErrors)
        raise write_failure(what, folder, error, "rerun the command") from None


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds the workdir's lock for the block; another holder is one line naming it."""
    key = resolve(workdir) if is_remote(workdir) else os.path.realpath(workdir)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    if is_remote(workdir):
        with remote_lock.hold(workdir, LOCK_FILE):
            _HELD[key] = 1
            try:
                yield
            finally:
                del _HELD[key]
        return
    path = os.path.join(workdir, LOCK_FILE)
    handle = _lock(path, workdir)
    with handle:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            # Removed while still locked, so that a run that ends (or is refused) leaves the
            # workdir as it found it; a killed one leaves a file whose lock is already gone.
            with contextlib.suppress(OSError):
                os.remove(path)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock(path: str, workdir: str):
    """The open lock file, locked by this process; UserError naming another holder."""
    while True:
        try:
            # "a+", not "w": opening must not erase the holder's name before the lock is ours.
            handle = open(path, "a+")  # noqa: SIM115 (the caller closes it)
        except OSError as error:
            raise write_failure("the lock file", workdir, error, "rerun the command") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise UserError(
                f"{workdir} is in use by another `cnnjax train` ({holder}): "
                "wait for it to finish or stop it, or give another --workdir"
            ) from None
        # A holder may have removed the file between our open and our lock: then try again.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        handle.close()


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def finished_checkpoint_steps(workdir: str) -> list[int]:
    """Steps whose checkpoint folder is complete (Orbax renames a step's temporary folder to
    its number when the save commits), read from the folder names without opening Orbax. On an
    object store Orbax writes into the numbered folder and marks the end with a commit file."""
    folder = epath.Path(workdir) / CHECKPOINT_DIR
    forget_listings(str(folder))
    if not folder.is_dir():
        return []
    steps = sorted(int(path.name) for path in folder.iterdir() if path.name.isdigit())
    if is_remote(workdir):
        steps = [s for s in steps if (folder / str(s) / COMMIT_FILE).exists()]
    return steps
