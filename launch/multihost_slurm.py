"""The sbatch script of one training run over SLURM nodes, one process per GPU, and its
submission: `python -m launch.multihost slurm` (the command line is launch/multihost_cli.py).

The script asks SLURM for SIGTERM ahead of the time limit; the processes save the step they agree
on and exit 143, and the script requeues the job, which resumes the run from that step.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

from cnnjax.errors import UserError
from launch.multihost import check_at_least, distributed_args, train_prefix


def slurm_script(
    train_args: Sequence[str],
    *,
    nodes: int,
    gpus_per_node: int,
    log_dir: str,
    cpus_per_task: int = 8,
    time: str = "24:00:00",
    partition: str = "",
    job_name: str = "cnnjax",
    setup: str = "",
    python: str = sys.executable,
    chdir: str = "",
    signal_seconds: int = 120,
) -> str:
    """The sbatch script of one run over `nodes` x `gpus_per_node` processes, one per GPU.

    Every task sees all of its node's GPUs (`--gpus-per-node`, not `--gpus-per-task`, which
    would hide the others): `jax.distributed.initialize()` reads the layout from SLURM and gives
    task $SLURM_LOCALID the GPU of that number. `--kill-on-bad-exit` ends the other tasks when
    one fails (they would wait for it in a collective); a requeued job resumes from the run's last
    checkpoint. The log is `log_dir/JOBNAME_JOBID.out`, appended across requeues; `chdir` (the
    job's working directory, default: where sbatch runs) anchors relative paths in TRAIN_ARGS.

    `signal_seconds` before the time limit every task gets SIGTERM (`--signal=TERM@N`, no `B:`:
    the job step's tasks, not the batch shell); the processes agree on a step at JAX's preemption
    sync point, save it and exit 143, and the script then requeues the job, which resumes the run.
    """
    check_at_least(nodes, 1, "nodes")
    check_at_least(gpus_per_node, 1, "gpus_per_node", ": the job runs one process per GPU")
    check_at_least(cpus_per_task, 1, "cpus_per_task")
    if not 1 <= signal_seconds <= 65535:  # SLURM's range for --signal's time
        raise UserError(f"--signal_seconds must be 1 to 65535 (got {signal_seconds})")
    for flag, path in (("log_dir", log_dir), ("chdir", chdir)):
        if any(c.isspace() for c in path):  # #SBATCH lines are split at whitespace
            raise UserError(f"--{flag} must have no spaces for #SBATCH: pick another ({path!r})")
    directives = [
        f"--job-name={job_name}",
        f"--nodes={nodes}",
        f"--ntasks-per-node={gpus_per_node}",
        f"--gpus-per-node={gpus_per_node}",
        f"--cpus-per-task={cpus_per_task}",
        f"--time={time}",
        f"--output={log_dir}/%x_%j.out",
        "--open-mode=append",
        "--requeue",
        # Up to 60 s earlier than asked (SLURM's event resolution), never later.
        f"--signal=TERM@{signal_seconds}",
    ]
    if partition:
        directives.append(f"--partition={partition}")
    if chdir:
        directives.append(f"--chdir={chdir}")
    train = [*train_prefix(python), *distributed_args(train_args)]
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -euo pipefail"]
    if setup:
        lines.append(setup)
    lines += [
        'echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"',
        "# One process per GPU; JAX finds its coordinator, rank and GPU in SLURM's variables.",
        # srun does not inherit sbatch's --cpus-per-task (SLURM >= 22.05): ask again.
        "status=0",
        shlex.join(["srun", "--kill-on-bad-exit=1", f"--cpus-per-task={cpus_per_task}", *train])
        + " || status=$?",
        # 143: the processes saved a step on --signal's SIGTERM (srun returns the highest status).
        'if [ "$status" = 143 ]; then',
        '  echo "job $SLURM_JOB_ID: the run saved its step and stopped; requeueing"',
        '  scontrol requeue "$SLURM_JOB_ID" ||',
        '    echo "job $SLURM_JOB_ID: requeue refused (cancelled?): submit again to resume"',
        "fi",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def submit_slurm(script_path: str) -> str:
    """Submits with sbatch; returns its output line (e.g. "Submitted batch job 123")."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(
            f"sbatch is not on PATH: on a SLURM login node run `sbatch {script_path}` from this "
            "checkout (--dry_run prints the script)"
        )
    result = subprocess.run([sbatch, script_path], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"sbatch failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout.strip()
