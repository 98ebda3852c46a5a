"""Start-up of a run spread over several processes (hosts): `cnnjax train --distributed`.

Every process runs the same command. The coordinator's address, the number of processes and
this process's index come from the environment when set:

    CNNJAX_COORDINATOR_ADDRESS=host:port  CNNJAX_NUM_PROCESSES=N  CNNJAX_PROCESS_ID=i

and otherwise from JAX's own detection of the cluster (SLURM's `srun` variables, Cloud TPU VM
metadata). Each process then feeds its own devices' rows of every global batch, the first
process alone writes logs and results, and every process takes part in saving checkpoints.
On CPU the processes exchange gradients over gloo (two processes on 127.0.0.1 work).
"""

from __future__ import annotations

import os

import jax

from cnnjax.errors import UserError

ENV_ADDRESS = "CNNJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "CNNJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "CNNJAX_PROCESS_ID"


def _int_env(name: str) -> int:
    try:
        return int(os.environ[name])
    except KeyError:
        raise UserError(
            f"{ENV_ADDRESS} is set but {name} is not: set all three of {ENV_ADDRESS}, "
            f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}"
        ) from None
    except ValueError:
        raise UserError(f"{name}={os.environ[name]!r} is not an integer") from None


def initialize() -> None:
    """Joins the other processes of the run (blocks until all of them have started)."""
    if ENV_ADDRESS in os.environ:
        num_processes, process_id = _int_env(ENV_NUM_PROCESSES), _int_env(ENV_PROCESS_ID)
        if not 0 <= process_id < num_processes:
            raise UserError(f"{ENV_PROCESS_ID}={process_id} is not in [0, {num_processes})")
        jax.distributed.initialize(
            coordinator_address=os.environ[ENV_ADDRESS],
            num_processes=num_processes,
            process_id=process_id,
        )
        return
    try:
        jax.distributed.initialize()  # SLURM, Cloud TPU, ... detected by JAX
    except (ValueError, RuntimeError) as error:
        raise UserError(
            f"--distributed found no cluster to join ({str(error).splitlines()[0]}): run under "
            f"srun or on a Cloud TPU VM, or set {ENV_ADDRESS}, {ENV_NUM_PROCESSES} and "
            f"{ENV_PROCESS_ID}"
        ) from None
