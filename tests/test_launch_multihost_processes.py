"""launch.multihost running real processes: a failing process stops the others, processes die
with the launcher, a busy port is refused, and local processes form one JAX cluster.

The command builders and the command line are tested in tests/test_launch_multihost.py.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cnnjax.errors import UserError
from launch import multihost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its new parent to reap it counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- running processes --------------------------------------------------------------------------

# Stands in for `cnnjax train`: records its pid in WORKDIR; process 1 fails once process 0 is up,
# and process 0 ignores SIGTERM, as a JAX process does after jax.distributed.initialize.
FAKE_TRAIN = """
import os, signal, sys, time
rank = os.environ["CNNJAX_PROCESS_ID"]
workdir = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")][0]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.path.join(workdir, "pid" + rank + ".tmp"), "w") as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(workdir, "pid" + rank + ".tmp"), os.path.join(workdir, "pid" + rank))
print("process", rank, "of", os.environ["CNNJAX_NUM_PROCESSES"], sys.argv[1:], flush=True)
if rank == "1" and os.environ.get("FAIL"):
    while not os.path.exists(os.path.join(workdir, "pid0")):
        time.sleep(0.01)
    print("boom", flush=True)
    sys.exit(3)
time.sleep(60)
"""


def test_run_local_stops_the_other_processes_when_one_fails(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("FAIL", "1")
    workdir = tmp_path / "run"
    train = ["--config=c.py", f"--workdir={workdir}"]
    start = time.monotonic()
    code = multihost.run_local(
        train, 2, port=_free_port(), command_prefix=[PY, "-c", FAKE_TRAIN], grace_seconds=1
    )
    assert code == 3
    assert time.monotonic() - start < 10
    assert not _alive(int((workdir / "pid0").read_text()))  # it ignored SIGTERM: killed
    out, err = capfd.readouterr()
    assert out == f"process 0 of 2 ['--distributed', '--config=c.py', '--workdir={workdir}']\n"
    log = workdir / "process_logs" / "process_1.txt"
    assert err.startswith(
        "launch.multihost local: process 1 of 2 exited with status 3; stopped the others; "
        f"the end of its log {log}:\n"
    )
    assert err.endswith(
        f"process 1 of 2 ['--distributed', '--config=c.py', '--workdir={workdir}']\nboom\n"
    )


def test_processes_die_with_the_launcher(tmp_path):
    workdir = tmp_path / "run"
    launcher = subprocess.Popen(
        [
            PY,
            "-c",
            "import sys; from launch import multihost; multihost.run_local("
            f"['--config=c.py', '--workdir={workdir}'], 2, port={_free_port()}, "
            f"command_prefix=[sys.executable, '-c', {FAKE_TRAIN!r}])",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    pids = []
    try:
        _wait_for(lambda: (workdir / "pid0").exists() and (workdir / "pid1").exists(), 20, "start")
        pids = [int((workdir / f"pid{rank}").read_text()) for rank in (0, 1)]
        launcher.kill()  # no chance to clean up: only PR_SET_PDEATHSIG stops the processes
        launcher.wait()
        _wait_for(lambda: not any(_alive(pid) for pid in pids), 5, "the processes to die")
    finally:
        launcher.kill()
        for pid in filter(_alive, pids):  # only if the test failed
            os.kill(pid, signal.SIGKILL)


def test_run_local_refuses_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError) as error:
            multihost.run_local(["--config=c.py", f"--workdir={tmp_path}"], 2, port=port)
    assert str(error.value) == f"port {port} is in use (another run?): pass a free --port"


# The trainer's side of the contract, reduced to jax.distributed.initialize and one collective.
JAX_PROCESS = """
import os
import jax
from jax.experimental import multihost_utils
jax.distributed.initialize(
    os.environ["CNNJAX_COORDINATOR_ADDRESS"],
    int(os.environ["CNNJAX_NUM_PROCESSES"]),
    int(os.environ["CNNJAX_PROCESS_ID"]),
)
ranks = multihost_utils.process_allgather(jax.numpy.array(jax.process_index()))
print(f"process {jax.process_index()} of {jax.process_count()} saw {ranks.tolist()}", flush=True)
"""


def test_local_processes_form_one_jax_cluster(tmp_path, capfd):
    workdir = tmp_path / "run"
    code = multihost.run_local(
        ["--config=c.py", f"--workdir={workdir}"],
        2,
        port=_free_port(),
        command_prefix=[PY, "-c", JAX_PROCESS],
    )
    out = capfd.readouterr().out
    log = (workdir / "process_logs" / "process_1.txt").read_text()
    assert code == 0, log
    assert "process 0 of 2 saw [0, 1]\n" in out
    assert "process 1 of 2 saw [0, 1]\n" in log
