"""Data parallelism: the device mesh and batch sharding (mesh) and multi-host start-up
(distributed). The explicit per-device `shard_map` training step is a training step, so it lives
in cnnjax/train/shard_map_step.py: nothing here imports the models or the training code."""

from cnnjax.parallel.mesh import (
    DATA_AXIS,
    batch_sharding,
    check_batch_size,
    data_mesh,
    gather_from_processes,
    local_batch_rows,
    pad_to_devices,
    process_rows,
    replicate,
    replicated,
    shard_batch,
    with_sharding,
)

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "check_batch_size",
    "data_mesh",
    "gather_from_processes",
    "local_batch_rows",
    "pad_to_devices",
    "process_rows",
    "replicate",
    "replicated",
    "shard_batch",
    "with_sharding",
]
