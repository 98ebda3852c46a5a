"""One training run spread over several processes or hosts (multi-host data parallelism).

    python -m launch.multihost local --num_processes=2 [--gpus_per_process=1] -- TRAIN_ARGS
    python -m launch.multihost slurm --nodes=2 --gpus_per_node=4 [--partition=gpu] -- TRAIN_ARGS
    python -m launch.multihost tpu --tpu_name=NAME --zone=ZONE [--project=P] -- TRAIN_ARGS

TRAIN_ARGS are what follows `cnnjax train` (`--config=FILE --workdir=DIR [overrides]`); every
process runs that same command plus `--distributed`, with which the trainer calls
`jax.distributed.initialize`: from `CNNJAX_COORDINATOR_ADDRESS`, `CNNJAX_NUM_PROCESSES` and
`CNNJAX_PROCESS_ID` when they are set (the local launcher sets them), and otherwise with no
arguments, which reads the layout from SLURM's variables or the Cloud TPU metadata. `--dry_run`
prints the exact commands (or the sbatch script) and starts nothing.

Each launcher is a pure function that returns its commands or script (`local_commands`,
`tpu_vm_commands`, and `slurm_script` in launch/multihost_slurm.py); the dry run prints what the
real launch runs. The trainer
resumes from the run's last checkpoint, so a restart (a rerun, a SLURM requeue) continues the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from cnnjax.errors import UserError

DEFAULT_PORT = 12355
EXAMPLE = "-- --config=configs/lenet5_fashion_mnist.py --workdir=runs/lenet5"
_FALSE = ("false", "f", "0", "no")


# --- the training command ---------------------------------------------------------------------


def _flag(arg: str) -> tuple[str, str | None]:
    """("workdir", "DIR") for `--workdir=DIR`, ("workdir", None) for `--workdir`; ("", None)
    for a non-flag. absl accepts one or two dashes."""
    if not arg.startswith("-"):
        return "", None
    name, eq, value = arg.lstrip("-").partition("=")
    return name, value if eq else None


def flag_value(train_args: Sequence[str], name: str) -> str:
    """The value of `--name=V` or `--name V` in `train_args` ("" when absent)."""
    for index, arg in enumerate(train_args):
        key, value = _flag(arg)
        if key == name:
            if value is not None:
                return value
            return train_args[index + 1] if index + 1 < len(train_args) else ""
    return ""


def distributed_args(train_args: Sequence[str]) -> list[str]:
    """`["--distributed", *train_args]` (given once), after checking the arguments a run needs.

    Raises UserError when --config or --workdir is missing or the arguments turn --distributed
    off; every launcher calls this, so the API and the command line refuse the same things.
    """
    if train_args and train_args[0] == "train":
        raise UserError(f"TRAIN_ARGS follow `cnnjax train`: drop the leading `train` ({EXAMPLE})")
    missing = [f"--{name}" for name in ("config", "workdir") if not flag_value(train_args, name)]
    if missing:
        raise UserError(f"TRAIN_ARGS lack {' and '.join(missing)}: end the command with {EXAMPLE}")
    rest = []
    for arg in train_args:
        name, value = _flag(arg)
        if name == "nodistributed" or (name == "distributed" and str(value).lower() in _FALSE):
            raise UserError(f"{arg} contradicts a multi-host launch: drop it from TRAIN_ARGS")
        if name != "distributed":
            rest.append(arg)
    return ["--distributed", *rest]


def train_prefix(python: str) -> list[str]:
    """`python -m cnnjax.cli train`: what each launched process runs, before its arguments."""
    return [python, "-m", "cnnjax.cli", "train"]


def check_at_least(value: int, minimum: int, flag: str, why: str = "") -> None:
    """Raises UserError unless `value` >= `minimum` (the option `--flag`; `why` ends the line)."""
    if value < minimum:
        raise UserError(f"--{flag} must be at least {minimum} (got {value}){why}")


# --- local: N processes on this machine -------------------------------------------------------


def local_commands(
    train_args: Sequence[str],
    num_processes: int,
    port: int = DEFAULT_PORT,
    python: str = sys.executable,
    gpus_per_process: int = 0,
    *,
    gpu_ids: Sequence[str] | None = None,
    command_prefix: Sequence[str] | None = None,
) -> list[tuple[dict[str, str], list[str]]]:
    """(environment additions, argv) of each of `num_processes` processes on this machine.

    Process i gets CNNJAX_COORDINATOR_ADDRESS=127.0.0.1:`port` (process 0 serves it),
    CNNJAX_NUM_PROCESSES and CNNJAX_PROCESS_ID=i, and with `gpus_per_process` > 0
    CUDA_VISIBLE_DEVICES = its own slice of `gpu_ids` (default "0", "1", ...). The argv is
    `python -m cnnjax.cli train --distributed TRAIN_ARGS`, or `command_prefix` + the same args.
    """
    check_at_least(num_processes, 1, "num_processes")
    check_at_least(gpus_per_process, 0, "gpus_per_process")
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be a TCP port, 1 to 65535 (got {port})")
    argv = [*(command_prefix or train_prefix(python)), *distributed_args(train_args)]
    needed = num_processes * gpus_per_process
    ids = list(gpu_ids) if gpu_ids is not None else [str(i) for i in range(needed)]
    if len(ids) < needed:
        raise UserError(
            f"{num_processes} processes x {gpus_per_process} GPUs need {needed} GPUs but only "
            f"{len(ids)} are visible ({','.join(ids)}): lower --num_processes or --gpus_per_process"
        )
    commands = []
    for rank in range(num_processes):
        env = {
            "CNNJAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "CNNJAX_NUM_PROCESSES": str(num_processes),
            "CNNJAX_PROCESS_ID": str(rank),
        }
        if gpus_per_process:
            own = ids[rank * gpus_per_process : (rank + 1) * gpus_per_process]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(own)
        commands.append((env, list(argv)))
    return commands


def command_line(env: dict[str, str], argv: Sequence[str]) -> str:
    """`K=V ... argv` as one shell line (the dry run's form of a local process)."""
    return shlex.join([*(f"{key}={value}" for key, value in env.items()), *argv])


def _check_port_free(port: int) -> None:
    # gRPC binds with SO_REUSEPORT, so a second coordinator on a busy port would not fail: the
    # processes of two runs could meet at one coordinator. A plain bind fails on a held port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            probe.bind(("", port))
        except OSError:
            raise UserError(f"port {port} is in use (another run?): pass a free --port") from None


def _tie_to_launcher(launcher_pid: int) -> None:
    """Runs in the child before exec: SIGKILL it when the launcher dies (Linux only).

    SIGKILL, not the SIGTERM of cnnjax.sweep.worker.die_with_parent: after
    jax.distributed.initialize, JAX catches SIGTERM as a preemption notice and keeps running.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher_pid:  # the launcher died before prctl took effect
        os._exit(1)


def _stop(processes: Sequence[subprocess.Popen], grace_seconds: float) -> None:
    """SIGTERM to each live process group, then SIGKILL to those left after `grace_seconds`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            if process.poll() is None:
                # Its own session: pid == process group id; it may have exited meanwhile.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
        deadline = time.monotonic() + grace_seconds
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)
    for process in processes:
        process.wait()


def _tail(path: str, lines: int = 20) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N -> 128 + N


def run_local(
    train_args: Sequence[str],
    num_processes: int,
    port: int = DEFAULT_PORT,
    python: str = sys.executable,
    gpus_per_process: int = 0,
    *,
    gpu_ids: Sequence[str] | None = None,
    command_prefix: Sequence[str] | None = None,
    log_dir: str = "",
    grace_seconds: float = 10.0,
    poll_seconds: float = 0.1,
) -> int:
    """Runs `local_commands(...)` to the end; returns 0, or the status of the first that failed.

    Process 0 writes to this terminal; process i > 0 appends to `log_dir/process_i.txt`
    (default WORKDIR/process_logs). When one process fails (or on Ctrl-C) the others are
    stopped at once: they would otherwise wait in a collective for their lost peer. The
    processes die with the launcher (PR_SET_PDEATHSIG), and are started from this thread only,
    as PR_SET_PDEATHSIG ties a child to the thread that started it.
    """
    commands = local_commands(
        train_args,
        num_processes,
        port,
        python,
        gpus_per_process,
        gpu_ids=gpu_ids,
        command_prefix=command_prefix,
    )
    _check_port_free(port)
    log_dir = log_dir or os.path.join(flag_value(train_args, "workdir"), "process_logs")
    os.makedirs(log_dir, exist_ok=True)
    launcher_pid = os.getpid()
    processes, logs = [], []
    try:
        for rank, (env, argv) in enumerate(commands):
            logs.append(os.path.join(log_dir, f"process_{rank}.txt") if rank else "")
            processes.append(_start(env, argv, logs[-1], launcher_pid))
        while True:
            codes = [p.poll() for p in processes]
            failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                return _report_failure(failed[0], codes[failed[0]], processes, logs, grace_seconds)
            if all(code == 0 for code in codes):
                return 0
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        print("launch.multihost local: interrupted; stopping the processes", file=sys.stderr)
        return 130
    finally:
        _stop(processes, grace_seconds)


def _start(env: dict[str, str], argv: list[str], log: str, launcher_pid: int) -> subprocess.Popen:
    """Starts one process; its output goes to `log` (appended) or, for "", to this terminal."""
    with open(log, "a") if log else contextlib.nullcontext() as output:
        if output:
            output.write(f"\n=== {time.strftime('%F %T')}: {command_line(env, argv)}\n")
            output.flush()
        return subprocess.Popen(
            argv,
            env=dict(os.environ, **env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            preexec_fn=lambda: _tie_to_launcher(launcher_pid),
            # Its own session: Ctrl-C reaches only the launcher, which stops the group.
            start_new_session=True,
        )


def _report_failure(rank, code, processes, logs, grace_seconds) -> int:
    _stop(processes, grace_seconds)
    where = f"; the end of its log {logs[rank]}:" if logs[rank] else ""
    print(
        f"launch.multihost local: process {rank} of {len(processes)} exited with status "
        f"{_exit_status(code)}; stopped the others{where}",
        file=sys.stderr,
    )
    if logs[rank]:
        print(_tail(logs[rank]), end="", file=sys.stderr)
    return _exit_status(code)


# --- Cloud TPU VM: one process per TPU host ---------------------------------------------------


def _remote_path(path: str) -> str:
    """`path` quoted for the remote shell, keeping a leading `~/` expandable."""
    if path == "~" or path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~"
    return shlex.quote(path)


def tpu_vm_commands(
    train_args: Sequence[str],
    *,
    tpu_name: str,
    zone: str,
    project: str = "",
    checkout: str = "~/cnnjax",
    setup: str = "",
) -> list[list[str]]:
    """The gcloud command that runs the training command on every worker of a TPU VM at once.

    Each worker runs `cd CHECKOUT && [SETUP &&] .venv/bin/cnnjax train --distributed TRAIN_ARGS`
    (`--worker=all`); `jax.distributed.initialize()` finds the other workers through the TPU
    metadata. The checkout and its .venv must exist on every worker, and --workdir must be one
    directory that all workers share (NFS, Filestore, a bucket mounted with gcsfuse).
    """
    if not tpu_name or not zone:
        raise UserError("--tpu_name and --zone are both required (see `gcloud compute tpus list`)")
    remote = [f"cd {_remote_path(checkout)}"]
    if setup:
        remote.append(setup)
    remote.append(shlex.join([".venv/bin/cnnjax", "train", *distributed_args(train_args)]))
    command = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu_name, f"--zone={zone}"]
    if project:
        command.append(f"--project={project}")
    command += ["--worker=all", f"--command={' && '.join(remote)}"]
    return [command]


# --- command line -----------------------------------------------------------------------------


if __name__ == "__main__":  # the command line lives in launch/multihost_cli.py
    from launch.multihost_cli import main

    sys.exit(main())
