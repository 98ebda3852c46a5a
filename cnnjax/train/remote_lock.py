"""The workdir lock on an object store (gs://...), where there is no `flock`: a lease.

`<workdir>/.train.lock` is an object naming its holder (pid, host, start time, a random token),
which the holder rewrites every HEARTBEAT_SECONDS. Another `cnnjax train` refuses the workdir
while the lease is live: renewed within LEASE_SECONDS and, when the holder ran on this host, its
pid still running. So a killed run's lock never blocks a rerun on the same host, and blocks one
on another host for at most LEASE_SECONDS (or until someone deletes the object). The object store
offers no create-if-absent that every backend (and the test emulator) honours, so two runs
started within a second of each other on different hosts are told apart by reading the lock
back after writing it: the later writer wins and the earlier one, seeing another token, stops.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator

from etils import epath

from cnnjax.errors import UserError
from cnnjax.files import write_failure

HEARTBEAT_SECONDS = 30.0
# Four missed heartbeats: a busy network or a long evaluation does not lose a live run its lock.
LEASE_SECONDS = 120.0


@contextlib.contextmanager
def hold(workdir: str, lock_name: str) -> Iterator[None]:
    """Holds the lease on `<workdir>/<lock_name>` for the block; a live holder is one line."""
    lock = epath.Path(workdir) / lock_name
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
        "token": secrets.token_hex(8),
    }
    _refuse_if_held(workdir, _read(lock))
    _write(lock, holder, workdir)
    if (_read(lock) or {}).get("token") != holder["token"]:
        _refuse_if_held(workdir, _read(lock), now=0.0)  # another run wrote after us
    stop = threading.Event()
    beats = threading.Thread(target=_renew, args=(lock, holder, stop), daemon=True)
    beats.start()
    try:
        yield
    finally:
        stop.set()
        beats.join()
        with contextlib.suppress(Exception):  # a lock left behind lapses by itself
            if (_read(lock) or {}).get("token") == holder["token"]:
                lock.unlink()


def _read(lock: epath.Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # written by something else, or cut short: not a live lease
        return {}


def _write(lock: epath.Path, holder: dict, workdir: str) -> None:
    try:
        lock.write_text(json.dumps({**holder, "renewed": time.time()}) + "\n")
    except Exception as error:  # noqa: BLE001 (network and HTTP errors are not OSErrors)
        raise write_failure("the lock file", workdir, error, "rerun the command") from None


def _renew(lock: epath.Path, holder: dict, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        with contextlib.suppress(Exception):  # a missed beat is retried at the next one
            lock.write_text(json.dumps({**holder, "renewed": time.time()}) + "\n")


def _refuse_if_held(workdir: str, holder: dict | None, now: float | None = None) -> None:
    """UserError naming `holder` when its lease is live (`now=0.0`: whatever its age)."""
    if not holder or "pid" not in holder:
        return
    age = (time.time() if now is None else now) - float(holder.get("renewed", 0.0))
    same_host = holder.get("host") == socket.gethostname()
    if age > LEASE_SECONDS or (same_host and not _running(int(holder["pid"]))):
        return
    where = "" if same_host else f"; a lock not renewed for {LEASE_SECONDS:.0f} s lapses"
    raise UserError(
        f"{workdir} is in use by another `cnnjax train` (pid {holder['pid']} on "
        f"{holder.get('host')}, since {holder.get('since')}): wait for it to finish or stop it, "
        f"or give another --workdir{where}"
    )


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
