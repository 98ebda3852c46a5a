"""Decoding in worker processes that write straight into shared-memory batches.

Threads decode in parallel only while Pillow has released the GIL; the Python around each image
(opening it, drawing the crop, numpy copies) runs one thread at a time, which is what capped
the thread pool near 5.5k images/s on 16 threads (measured for the issue that added this).
Processes have no such limit. Each worker gets the source and the `DecodeSpec` once, at start;
a batch is a list of jobs (index, epoch, position) cut into a few chunks per worker, and each
job writes its own row of a shared-memory buffer, so nothing but the job lists and the finished
flags crosses between processes.

Every row is `decode_example(source, spec, job)`, a pure function of the job: the same bytes
whether 1 or 16 processes (or threads) decoded it, in whatever order they finished. Like any
multiprocessing code, a script that starts these workers needs `if __name__ == "__main__":`.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import weakref
from collections.abc import Sequence
from multiprocessing import shared_memory

import numpy as np
import PIL.Image

from cnnjax.data.image_decoding import eval_transform, example_rng, train_transform
from cnnjax.data.image_sources import ImageSource
from cnnjax.errors import UserError

Job = tuple[int, int, int]  # (example index, epoch, position in the epoch's order)
# forkserver: workers fork from a small server process, not from the trainer, whose JAX threads
# make fork unsafe; the server imports this module once, so each new worker starts in ~10 ms.
_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
# Chunks per worker and batch: enough to even out slow images, few enough that the messages
# (one per chunk) cost nothing next to the decoding.
_CHUNKS_PER_WORKER = 4


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """What each example's transform computes: `train` (random-resized crop and flip from the
    example's generator of `seed`, and AlexNet's PCA colour offset when `pca_color_std` > 0) or
    evaluation (shorter side to `resize`, center crop), both to `image_size` with Pillow's
    `interpolation`; `jpeg_draft` as in cnnjax/data/image_decoding.py."""

    image_size: int
    train: bool = True
    seed: int = 0
    resize: int = 256
    jpeg_draft: bool = True
    interpolation: str = "bilinear"
    pca_color_std: float = 0.0


def decode_example(source: ImageSource, spec: DecodeSpec, job: Job) -> tuple[np.ndarray, int]:
    """Example `job` = (index, epoch, position) -> (uint8 [S, S, 3] pixels, label)."""
    index, epoch, position = job
    data, label = source.get(index)
    common = dict(size=spec.image_size, draft=spec.jpeg_draft, interpolation=spec.interpolation)
    try:
        if spec.train:
            rng = example_rng(spec.seed, epoch, position)
            pixels = train_transform(data, rng, pca_color_std=spec.pca_color_std, **common)
        else:
            pixels = eval_transform(data, resize=spec.resize, **common)
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise UserError(f"example {index} is not a readable image ({error}): replace it") from None
    return pixels, label


class DecodeProcesses:
    """`processes` worker processes decoding batches of up to `rows` jobs.

    `submit(jobs)` starts a batch and returns at once; `collect(pending)` waits for it and
    returns (uint8 [len(jobs), S, S, 3], int32 [len(jobs)]). Several batches may be in flight
    (each has its own shared buffer, reused once collected). A worker's exception, such as an
    unreadable image, is raised by `collect`.
    """

    def __init__(self, source: ImageSource, spec: DecodeSpec, *, processes: int, rows: int):
        if processes < 1:
            raise UserError(f"processes={processes}: use at least 1 decoding process")
        self.spec, self.processes, self.rows = spec, processes, rows
        self._free: list[shared_memory.SharedMemory] = []
        self._all: list[shared_memory.SharedMemory] = []
        context = multiprocessing.get_context(_START_METHOD)
        if _START_METHOD == "forkserver":
            context.set_forkserver_preload([__name__])
        self._pool = context.Pool(processes, _start_worker, (source, spec))
        weakref.finalize(self, _shut_down, self._pool, self._all)

    def submit(self, jobs: Sequence[Job]) -> _PendingDecode:
        if not 0 < len(jobs) <= self.rows:
            raise ValueError(f"{len(jobs)} jobs for buffers of {self.rows} rows")
        buffer = self._free.pop() if self._free else self._new_buffer()
        chunk = math.ceil(len(jobs) / (self.processes * _CHUNKS_PER_WORKER))
        shape = (self.rows, self.spec.image_size)
        results = [
            self._pool.apply_async(
                _decode_rows, (buffer.name, shape, start, jobs[start : start + chunk])
            )
            for start in range(0, len(jobs), chunk)
        ]
        return _PendingDecode(buffer, results, len(jobs))

    def collect(self, pending: _PendingDecode) -> tuple[np.ndarray, np.ndarray]:
        errors = []
        for result in pending.results:
            try:
                result.get()
            except Exception as error:  # wait for every chunk before the buffer is reused
                errors.append(error)
        images, labels = _views(pending.buffer, self.rows, self.spec.image_size)
        out = images[: pending.count].copy(), labels[: pending.count].copy()
        del images, labels  # release the buffer's memory view before it can be closed
        self._free.append(pending.buffer)
        if errors:
            raise errors[0]
        return out

    def close(self) -> None:
        """Stops the workers and frees the shared buffers (also done when garbage collected)."""
        _shut_down(self._pool, self._all)

    def _new_buffer(self) -> shared_memory.SharedMemory:
        size = self.rows * (self.spec.image_size**2 * 3 + 4)
        buffer = shared_memory.SharedMemory(create=True, size=size)
        self._all.append(buffer)
        return buffer


@dataclasses.dataclass
class _PendingDecode:
    buffer: shared_memory.SharedMemory
    results: list
    count: int


def _views(buffer, rows: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.ndarray((rows, size, size, 3), np.uint8, buffer.buf)  # [B, S, S, 3]
    labels = np.ndarray((rows,), np.int32, buffer.buf, offset=images.nbytes)  # [B]
    return images, labels


def _shut_down(pool, buffers: list[shared_memory.SharedMemory]) -> None:
    pool.terminate()  # workers may still be writing a batch nobody collected
    pool.join()
    for buffer in buffers:
        buffer.close()
        buffer.unlink()
    buffers.clear()


# The worker side: each process keeps the source, the spec and its attached buffers.
_worker: dict = {}


def _start_worker(source: ImageSource, spec: DecodeSpec) -> None:
    _worker.update(source=source, spec=spec, buffers={})


def _decode_rows(name: str, shape: tuple[int, int], start: int, jobs: Sequence[Job]) -> None:
    buffers = _worker["buffers"]
    if name not in buffers:
        buffers[name] = shared_memory.SharedMemory(name=name)
    images, labels = _views(buffers[name], *shape)
    for row, job in enumerate(jobs, start):
        images[row], labels[row] = decode_example(_worker["source"], _worker["spec"], job)
