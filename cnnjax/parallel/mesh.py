"""Data parallelism over a one-axis device mesh: the batch is split on `data`, the state is
replicated, and one code path serves 1 CPU, 8 local accelerators or many hosts.

`jax.make_mesh` defaults to Explicit axes in JAX 0.10; the mesh here is `AxisType.Auto`, so
`jax.jit` propagates the shardings of its inputs and inserts the collectives itself (BatchNorm's
batch statistics come out global, over the whole sharded batch, with no `axis_name`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cnnjax.errors import UserError

DATA_AXIS = "data"


def data_mesh(num_devices: int = 0, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `num_devices` devices (0: all of them, on every process) on axis `data`."""
    devices = list(devices if devices is not None else jax.devices())
    if num_devices:
        if num_devices > len(devices):
            raise UserError(
                f"config.parallel.num_devices={num_devices} but only {len(devices)} devices "
                "are visible: lower it or set 0 to use all of them"
            )
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "data.batch_size") -> None:
    devices = mesh.devices.size
    if batch_size % devices:
        raise UserError(
            f"{what}={batch_size} does not split evenly over {devices} devices: use a multiple "
            f"of {devices}"
        )


def process_rows(global_shape: tuple[int, ...], mesh: Mesh) -> slice:
    """The rows of a global batch held by this process's devices (contiguous on a 1-D mesh)."""
    indices = batch_sharding(mesh).addressable_devices_indices_map(global_shape).values()
    starts = [index[0].start or 0 for index in indices]
    stops = [index[0].stop if index[0].stop is not None else global_shape[0] for index in indices]
    rows = slice(min(starts), max(stops))
    if rows.stop - rows.start != sum(b - a for a, b in zip(starts, stops, strict=True)):
        raise ValueError("this process's batch shards are not contiguous on the data axis")
    return rows


def local_batch_rows(batch_size: int, mesh: Mesh) -> tuple[slice, int]:
    """(this process's rows, the global batch's rows) of a batch of `batch_size` padded with
    masked-out rows to a multiple of the mesh's devices, as `pad_to_devices` pads it (training
    batches split evenly: no padding). The rows may reach past `batch_size`: padding."""
    padded = batch_size + (-batch_size % mesh.devices.size)
    return process_rows((padded,), mesh), padded


def gather_from_processes(values: Sequence[int]) -> list[list[int]]:
    """Every process's `values` (integers, the same number on each), in process order; on
    many processes all of them must call it at the same point."""
    if jax.process_count() == 1:
        return [[int(v) for v in values]]
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray(values, np.int32))
    return [[int(v) for v in row] for row in np.asarray(gathered).reshape(jax.process_count(), -1)]


def shard_batch(batch: dict, mesh: Mesh, global_rows: int | None = None) -> dict:
    """A batch as arrays sharded on `data`.

    Without `global_rows`, `batch` is the global batch (the same numpy batch on every process)
    and each process hands over only the rows of its own devices. With `global_rows`, `batch`
    holds only this process's rows (`process_rows((global_rows,), mesh)`) of a global batch of
    `global_rows`: what a per-process input pipeline reads, so that no host reads or decodes
    the examples of another host's devices.
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1 and global_rows in (None, _leading_size(batch)):
        return jax.device_put(batch, sharding)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if global_rows is None:
            rows, shape = process_rows(value.shape, mesh), value.shape
            value = value[rows]
        else:
            shape = (global_rows, *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out


def _leading_size(batch: dict) -> int:
    return len(next(iter(batch.values())))


def pad_to_devices(batch: dict, mesh: Mesh) -> dict:
    """An evaluation batch (with its 'mask') padded with masked-out rows to a multiple of the
    mesh's devices, so that any evaluation batch size runs on any device count: the padding
    counts for nothing (cnnjax/train/evaluation.py). Unchanged when it already splits."""
    size, devices = len(batch["mask"]), mesh.devices.size
    missing = -size % devices
    if not missing:
        return batch
    return {
        key: np.concatenate([value, np.zeros((missing, *np.shape(value)[1:]), value.dtype)])
        for key, value in ((key, np.asarray(value)) for key, value in batch.items())
    }


def replicate(tree, mesh: Mesh):
    """`tree` copied onto every device of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def with_sharding(abstract_tree, sharding: NamedSharding):
    """Shape/dtype structs of `abstract_tree` carrying `sharding`: a restore target that places
    a checkpoint written on any topology onto this one."""
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), abstract_tree
    )
