"""A sweep as one SLURM job array: `cnnjax sweep --launcher=slurm`.

Writes `DIR/slurm/commands.txt` (line i = the worker command of array task i, runs not yet done
only) and `DIR/slurm/sweep.sbatch`, whose task `$SLURM_ARRAY_TASK_ID` runs line
`$SLURM_ARRAY_TASK_ID + 1`, then submits it with `sbatch` (or, with --dry_run, prints both).

Resubmitting is safe: each line goes through `cnnjax.sweep.worker`, which exits at once for a
finished run, refuses a run another live process holds, and otherwise resumes the run from its
last checkpoint; `--requeue` lets SLURM restart preempted tasks the same way. The paths are this
machine's: the sweep directory and the Python environment must be on a filesystem the compute
nodes share.

Ahead of the time limit (`signal_seconds`, default 120) SLURM sends SIGTERM to each task's batch
shell (`--signal=B:TERM@N`), which passes it on to the worker and so to `cnnjax train`; the run
saves its current step and exits 143, and the shell requeues the task, which resumes the run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

from cnnjax.errors import UserError
from cnnjax.sweep.local_executor import worker_command
from cnnjax.sweep.plan import RunSpec, shell_line


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    job_name: str = "cnnjax-sweep"
    partition: str = ""
    time: str = "04:00:00"
    cpus_per_task: int = 4
    gpus_per_task: int = 0
    mem: str = ""  # e.g. "16G"; empty leaves the cluster's default
    max_parallel: int = 0  # 0: as many tasks at once as SLURM allows
    setup: str = ""  # shell line run first in every task, e.g. "module load cuda"
    # SIGTERM this long before the time limit: time to finish the step and save it. SLURM may
    # send it up to 60 s earlier (its event resolution), never later.
    signal_seconds: int = 120


# Why the end of the script looks like this: the signal goes to the batch shell only (`B:`), and
# bash neither passes a signal on to a foreground child nor runs a trap before that child exits.
# So the run goes to the background (`exec`: its pid is the worker's, not a subshell's that would
# die of the signal), the traps pass the signal on, and `wait`, which a trapped signal cuts short
# (returning 128 + N), is asked again until the run has ended; a signal after the run ended makes
# that `wait` repeat the status (older bash: 127, "not a child", ignored). 143 or 130 means the run
# saved its step: the task is requeued to resume it.
_RUN_AND_REQUEUE = """\
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
"""


def script_text(commands_path: str, log_dir: str, count: int, options: SlurmOptions) -> str:
    """The sbatch script for `count` array tasks reading their command from `commands_path`."""
    if not 1 <= options.signal_seconds <= 65535:  # SLURM's range for --signal's time
        raise UserError(f"--slurm_signal_seconds must be 1 to 65535 (got {options.signal_seconds})")
    array = f"0-{count - 1}" + (f"%{options.max_parallel}" if options.max_parallel else "")
    directives = [
        f"--job-name={options.job_name}",
        f"--array={array}",
        "--ntasks=1",
        f"--cpus-per-task={options.cpus_per_task}",
        f"--time={options.time}",
        f"--output={log_dir}/%A_%a.out",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:TERM@{options.signal_seconds}",
    ]
    if options.partition:
        directives.append(f"--partition={options.partition}")
    if options.gpus_per_task:
        directives.append(f"--gpus-per-task={options.gpus_per_task}")
    if options.mem:
        directives.append(f"--mem={options.mem}")
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -euo pipefail"]
    if options.setup:
        lines.append(options.setup)
    lines += [
        "# Task i runs line i + 1; finished runs exit at once, interrupted ones resume.",
        f'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {commands_path})',
        'echo "task $SLURM_ARRAY_TASK_ID on $(hostname): $line"',
    ]
    return "\n".join(lines) + "\n" + _RUN_AND_REQUEUE


def write(
    sweep_dir: str, runs: Sequence[RunSpec], options: SlurmOptions, python: str = sys.executable
) -> tuple[str, str]:
    """Writes commands.txt and sweep.sbatch under `sweep_dir/slurm`; returns their paths."""
    if not runs:
        raise UserError("every run of the sweep is done: nothing to submit")
    folder = os.path.join(sweep_dir, "slurm")
    os.makedirs(folder, exist_ok=True)
    commands_path = os.path.join(folder, "commands.txt")
    script_path = os.path.join(folder, "sweep.sbatch")
    with open(commands_path, "w") as f:
        f.writelines(shell_line(worker_command(run, python)) + "\n" for run in runs)
    with open(script_path, "w") as f:
        f.write(script_text(commands_path, folder, len(runs), options))
    return commands_path, script_path


def submit(script_path: str) -> str:
    """Submits with sbatch; returns its output line (e.g. "Submitted batch job 123")."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(
            f"sbatch is not on PATH: copy the sweep to a SLURM login node and run "
            f"`sbatch {script_path}`, or rerun with --dry_run to see the script"
        )
    result = subprocess.run([sbatch, script_path], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"sbatch failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout.strip()
