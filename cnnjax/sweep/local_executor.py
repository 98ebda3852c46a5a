"""Runs a sweep's runs on this machine (`cnnjax sweep`, the default `--launcher=local`): up to
N at a time, each pinned to its own cores and, where there are GPUs or TPU chips, its own devices.

The cores this process may use are split into N equal slots (2 cores and `--workers=2`: one core
each); a run started in a slot is pinned to the slot's cores with `sched_setaffinity`, which
XLA's CPU thread pools follow, so concurrent runs do not fight over cores. The slot's devices
(cnnjax/sweep/devices.py) are the only ones its runs see. Runs go through
`cnnjax.sweep.worker`, which skips finished runs, resumes interrupted ones and records failures;
one failing run does not stop the others.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from cnnjax.sweep.devices import DeviceSlot, describe_slots, slot_environment
from cnnjax.sweep.plan import RunSpec, shell_line
from cnnjax.sweep.worker import die_with_parent


def core_slots(workers: int, cores: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """`workers` disjoint core sets covering the usable cores (shared when there are fewer)."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if workers <= len(cores):
        size = len(cores) // workers
        return [tuple(cores[i * size : (i + 1) * size]) for i in range(workers)]
    return [(cores[i % len(cores)],) for i in range(workers)]


def worker_command(run: RunSpec, python: str = sys.executable) -> list[str]:
    return [python, "-m", "cnnjax.sweep.worker", run.workdir, "--", *run.command(python)]


def describe(runs: Sequence[RunSpec], workers: int, devices: Sequence[DeviceSlot] = ()) -> str:
    """The dry run's plan: the cores per run, each worker's devices (`devices`, from
    `devices.device_slots`; none without accelerators), then each run's exact command."""
    slots = core_slots(workers)
    lines = [f"{len(runs)} runs, {workers} at a time; cores per run: {list(slots[0])}"]
    if devices:
        lines.append(
            f"devices per worker (run [i] starts on worker i for i < {workers}, a later run on "
            "the first worker free):"
        )
        lines.extend(describe_slots(devices, os.environ))
    for index, run in enumerate(runs):
        lines.append(f"[{index}] {run.run_id}\n    {shell_line(run.command())}")
    return "\n".join(lines)


def worker_env(
    cores: Sequence[int],
    devices: DeviceSlot | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a run started in a slot with `cores` and `devices` (None: no
    accelerators, the launcher's own environment `environ` plus thread counts)."""
    environ = os.environ if environ is None else environ
    threads = str(len(cores))
    env = dict(environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if devices is not None:
        env.update(slot_environment(devices, environ))
    return env


def _start(run: RunSpec, cores: tuple[int, ...], devices: DeviceSlot | None) -> subprocess.Popen:
    os.makedirs(run.workdir, exist_ok=True)
    env = worker_env(cores, devices)

    def pin_and_tie():
        os.sched_setaffinity(0, cores)
        die_with_parent()

    return subprocess.Popen(
        worker_command(run),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # the worker logs the run into its workdir
        stderr=subprocess.DEVNULL,
        preexec_fn=pin_and_tie,
        # Its own session: Ctrl-C reaches only the launcher, which stops the runs itself.
        start_new_session=True,
    )


def run_all(
    runs: Sequence[RunSpec],
    workers: int,
    on_finish=None,
    poll_seconds: float = 0.5,
    devices: Sequence[DeviceSlot] = (),
) -> dict[str, int]:
    """Runs `runs` with `workers` concurrent processes; returns {run_id: exit status}.

    Worker i's runs get device slot `devices[i]` (from `devices.device_slots`; () without
    accelerators). `on_finish(run, returncode)` is called as each run ends (e.g. to refresh the
    report). Processes are started from this thread only: PR_SET_PDEATHSIG ties a child to the
    thread that started it.
    """
    slots = core_slots(workers)
    free = list(range(len(slots)))
    pending = list(runs)
    active: dict[int, tuple[RunSpec, subprocess.Popen]] = {}
    codes: dict[str, int] = {}
    try:
        while pending or active:
            while pending and free:
                slot = free.pop(0)
                run = pending.pop(0)
                own_devices = devices[slot] if devices else None
                active[slot] = (run, _start(run, slots[slot], own_devices))
            time.sleep(poll_seconds)
            for slot, (run, process) in list(active.items()):
                code = process.poll()
                if code is None:
                    continue
                del active[slot]
                free.append(slot)
                codes[run.run_id] = code
                if on_finish:
                    on_finish(run, code)
    finally:
        for _, process in active.values():  # Ctrl-C: stop the runs; they resume next time
            process.terminate()
        for _, process in active.values():
            process.wait()
    return codes
