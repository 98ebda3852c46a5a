"""Data parallelism: the device mesh and batch sharding (mesh), multi-host start-up
(distributed), and the explicit per-device `shard_map` training step (shard_map_step)."""

from cnnjax.parallel.mesh import (
    DATA_AXIS,
    batch_sharding,
    check_batch_size,
    data_mesh,
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
    "replicate",
    "replicated",
    "shard_batch",
    "with_sharding",
]
