"""A sweep as one SLURM job array: `cnnjax sweep --launcher=slurm`.

Writes `DIR/slurm/commands.txt` (line i = the worker command of array task i, runs not yet done
only) and `DIR/slurm/sweep.sbatch`, whose task `$SLURM_ARRAY_TASK_ID` runs line
`$SLURM_ARRAY_TASK_ID + 1`, then submits it with `sbatch` (or, with --dry_run, prints both).

Resubmitting is safe: each line goes through `cnnjax.sweep.worker`, which exits at once for a
finished run, refuses a run another live process holds, and otherwise resumes the run from its
last checkpoint; `--requeue` lets SLURM restart preempted tasks the same way. The paths are this
machine's: the sweep directory and the Python environment must be on a filesystem the compute
nodes share.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

from cnnjax.errors import UserError
from cnnjax.sweep.plan import RunSpec, shell_line
from launch.local import worker_command


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


def script_text(commands_path: str, log_dir: str, count: int, options: SlurmOptions) -> str:
    """The sbatch script for `count` array tasks reading their command from `commands_path`."""
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
        'eval "$line"',
    ]
    return "\n".join(lines) + "\n"


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
