"""Streaming input for ImageNet-style datasets: encoded images decoded per batch, in threads.

ImageNet (1.28M JPEGs, ~140 GB) does not fit in memory the way `sources.load_split` reads small
datasets, so a source here returns one *encoded* image at a time and `ImageBatches` decodes and
augments the examples of each batch with Pillow in a thread pool. Pillow releases the GIL while it
decodes and resizes, so threads scale with cores without the pickling of worker processes.

Determinism follows `pipeline.TrainBatches`: the batch of global step `s` is a pure function of
(seed, epoch, position in the epoch). The epoch's order comes from (seed, epoch) and each
example's augmentation from its own generator seeded with (seed, epoch, position), so the number
of threads, the order in which they finish and the step a run resumed at change nothing.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import weakref
from collections.abc import Callable, Iterator

import numpy as np

from cnnjax.data.decode_workers import DecodeProcesses, DecodeSpec, decode_example
from cnnjax.data.image_decoding import (  # noqa: F401 (re-exported: one import for users)
    EVAL_CROP_FRACTION,
    INTERPOLATIONS,
    eval_resize_for,
    eval_transform,
    example_rng,
    random_resized_crop_box,
    torchvision_eval_settings,
    train_transform,
)
from cnnjax.data.image_sources import (  # noqa: F401 (re-exported: one import for users)
    IMAGE_EXTENSIONS,
    ImageFolderSource,
    ImageSource,
    TfdsImageSource,
)
from cnnjax.data.normalization import Normalization
from cnnjax.errors import UserError

Batch = dict[str, np.ndarray]

# The ImageNet training set's channel statistics of x / 255, as every torchvision and timm
# checkpoint expects them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageBatches:
    """Infinite training batches {'image': uint8 [B, S, S, 3], 'label': int32 [B]}.

    Each epoch drops its last N mod B examples (different ones each epoch) so every step has the
    same shape. Iterating starts at `start_step` and keeps the decoding of the next `prefetch`
    batches queued on `workers` threads, so they are ready while the accelerator runs a step.
    `train=False` takes the evaluation transform instead of the augmentation. With `rows` (on
    many hosts, this process's rows of each global batch) only those examples are decoded.
    `worker_processes`: `workers` processes decode instead of threads (no GIL ceiling on large
    hosts; cnnjax/data/decode_workers.py), with the same bytes. `eval_resize` (0:
    image_size / EVAL_CROP_FRACTION) and `interpolation` as config data.eval_resize and
    data.interpolation. `pca_color_std` > 0: AlexNet's PCA colour offset on training crops, with
    ImageNet's published decomposition (config data.augment.pca_color_std).
    Images stay uint8: the steps normalize them on the device (`imagenet_normalization()`).
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        batch_size: int,
        seed: int,
        image_size: int = 224,
        train: bool = True,
        workers: int = 8,
        prefetch: int = 4,
        start_step: int = 0,
        rows: slice | None = None,
        jpeg_draft: bool = True,
        worker_processes: bool = False,
        eval_resize: int = 0,
        interpolation: str = "bilinear",
        pca_color_std: float = 0.0,
    ):
        if not 0 < batch_size <= len(source):
            raise UserError(
                f"batch size {batch_size} does not fit {len(source)} examples: use 1 to "
                f"{len(source)}"
            )
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.image_size, self.train = image_size, train
        self.workers, self.prefetch, self.start_step = workers, prefetch, start_step
        self.rows = rows or slice(0, batch_size)
        self.worker_processes = worker_processes
        resize = eval_resize_for(image_size, eval_resize)
        # What every example's transform computes, in threads or worker processes alike.
        self.spec = DecodeSpec(
            image_size, train, seed, resize, jpeg_draft, interpolation, pca_color_std
        )
        self._order_epoch, self._order = -1, None
        self._pool = self._processes = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.source) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of example indices for `epoch`."""
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order, self._order_epoch = rng.permutation(len(self.source)), epoch
        return self._order

    def batch_at(self, step: int) -> Batch:
        """The batch of global step `step`."""
        return _collect(self._submit(step))

    def __iter__(self) -> Iterator[Batch]:
        return _pipelined(self._submit, itertools.count(self.start_step), self.prefetch)

    def _submit(self, step: int) -> _Pending:
        """Queues the decoding of step `step`'s examples; each writes its own row."""
        epoch, batch_index = divmod(step, self.steps_per_epoch)
        first = batch_index * self.batch_size
        indices = self.order(epoch)[first : first + self.batch_size]
        if self.worker_processes:
            rows = range(self.rows.start, self.rows.stop)
            jobs = [(int(indices[row]), epoch, first + row) for row in rows]
            return _ProcessPending(self._decoder(), jobs)
        pending = _Pending.empty(self.rows.stop - self.rows.start, self.image_size)
        for row in range(self.rows.start, self.rows.stop):
            local = row - self.rows.start  # its row in this process's part of the batch
            job = (self._fill, pending, local, int(indices[row]), epoch, first + row)
            pending.futures.append(self._executor().submit(*job))
        return pending

    def _fill(self, pending: _Pending, row: int, index: int, epoch: int, position: int) -> None:
        job = (index, epoch, position)
        pending.batch["image"][row], pending.batch["label"][row] = decode_example(
            self.source, self.spec, job
        )

    def _decoder(self) -> DecodeProcesses:
        """The worker processes (started at the first batch), each decoding whole rows."""
        if self._processes is None:
            rows = self.rows.stop - self.rows.start
            self._processes = DecodeProcesses(
                self.source, self.spec, processes=self.workers, rows=rows
            )
        return self._processes

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = _thread_pool(self.workers)
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool


def eval_image_batches(
    source: ImageSource,
    *,
    batch_size: int,
    image_size: int = 224,
    resize: int = 256,
    workers: int = 8,
    rows: slice | None = None,
    jpeg_draft: bool = True,
    worker_processes: bool = False,
    interpolation: str = "bilinear",
) -> Iterator[Batch]:
    """Every example of `source` once, in order, with the evaluation transform.

    Like `pipeline.eval_batches`, the last batch is padded to `batch_size` and each batch has
    'mask' float32 [B] (1 for real examples, 0 for padding), so jitted evaluation keeps one
    shape and counts every example once; with `rows` each batch holds (and decodes) only those
    rows of the global batch (rows past `batch_size` are padding too). Images stay uint8.
    `worker_processes`: `workers` processes decode instead of threads, as in `ImageBatches`.
    `interpolation`: Pillow's filter for the resize, a key of INTERPOLATIONS.
    """
    rows = rows or slice(0, batch_size)
    spec = DecodeSpec(image_size, False, 0, resize, jpeg_draft, interpolation)
    if worker_processes:
        yield from _eval_batches_in_processes(source, batch_size, rows, spec, workers)
        return
    pool = _thread_pool(workers)

    def fill(pending: _Pending, row: int, index: int) -> None:
        image, label = decode_example(source, spec, (index, 0, index))
        pending.batch["image"][row], pending.batch["label"][row] = image, label
        pending.batch["mask"][row] = 1.0

    def submit(start: int) -> _Pending:
        pending = _Pending.empty(rows.stop - rows.start, image_size, masked=True)
        end = min(start + batch_size, len(source))
        for row in range(rows.start, rows.stop):
            if start + row < end:
                pending.futures.append(pool.submit(fill, pending, row - rows.start, start + row))
        return pending

    try:
        yield from _pipelined(submit, iter(range(0, len(source), batch_size)), ahead=2)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _eval_batches_in_processes(
    source: ImageSource, batch_size: int, rows: slice, spec: DecodeSpec, workers: int
) -> Iterator[Batch]:
    """`eval_image_batches` decoded by `workers` processes (started here, stopped at the end)."""
    local_rows = rows.stop - rows.start
    decoder = DecodeProcesses(source, spec, processes=workers, rows=local_rows)

    def submit(start: int) -> _ProcessPending:
        # This process's real examples are a prefix of its rows: only the last batch is short.
        first, end = start + rows.start, min(start + rows.stop, start + batch_size, len(source))
        jobs = [(index, 0, index) for index in range(first, end)]
        return _ProcessPending(decoder, jobs, padded_rows=local_rows)

    try:
        yield from _pipelined(submit, iter(range(0, len(source), batch_size)), ahead=2)
    finally:
        decoder.close()


class _Pending:
    """A batch whose rows the worker threads are filling in."""

    def __init__(self, batch: Batch):
        self.batch, self.futures = batch, []

    @classmethod
    def empty(cls, batch_size: int, image_size: int, masked: bool = False) -> _Pending:
        batch = {
            # Zeros: the padding rows of an evaluation batch stay as they are.
            "image": np.zeros((batch_size, image_size, image_size, 3), np.uint8),
            "label": np.zeros((batch_size,), np.int32),
        }
        if masked:
            batch["mask"] = np.zeros((batch_size,), np.float32)
        return cls(batch)


class _ProcessPending:
    """A batch that worker processes are decoding into shared memory; with `padded_rows`, an
    evaluation batch: the decoded rows first, then zero rows up to `padded_rows`, and a mask."""

    futures = ()  # nothing to cancel: the processes finish their chunks

    def __init__(self, decoder: DecodeProcesses, jobs: list, padded_rows: int | None = None):
        self.decoder, self.padded_rows = decoder, padded_rows
        self.submitted = decoder.submit(jobs) if jobs else None

    def batch(self) -> Batch:
        if self.padded_rows is None:
            images, labels = self.decoder.collect(self.submitted)
            return {"image": images, "label": labels}
        batch = _Pending.empty(self.padded_rows, self.decoder.spec.image_size, masked=True).batch
        if self.submitted is not None:  # a process whose rows are all padding decodes nothing
            images, labels = self.decoder.collect(self.submitted)
            batch["image"][: len(labels)], batch["label"][: len(labels)] = images, labels
            batch["mask"][: len(labels)] = 1.0
        return batch


def _collect(pending: _Pending | _ProcessPending) -> Batch:
    if isinstance(pending, _ProcessPending):
        return pending.batch()
    for future in pending.futures:
        future.result()  # re-raises a worker's exception here, in the consumer
    return pending.batch


def _pipelined(
    submit: Callable[[int], _Pending], keys: Iterator[int], ahead: int
) -> Iterator[Batch]:
    """Yields the batches of `keys` in order, with the next `ahead` ones already queued.

    Refilling before each yield keeps the threads decoding while the consumer holds a batch;
    dropping the iterator cancels what was queued but not started.
    """
    pending: collections.deque[_Pending] = collections.deque()

    def refill():
        while len(pending) < max(ahead, 1) and (key := next(keys, None)) is not None:
            pending.append(submit(key))

    try:
        refill()
        while pending:
            batch = _collect(pending.popleft())
            refill()
            yield batch
    finally:
        for batch in pending:
            for future in batch.futures:
                future.cancel()


def imagenet_normalization() -> Normalization:
    """(x / 255 - mean) / std with ImageNet's channel statistics: what the steps apply to the
    uint8 batches of this module."""
    return Normalization.standardize(IMAGENET_MEAN, IMAGENET_STD)


def _thread_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    if workers < 1:
        raise UserError(f"workers={workers}: use at least 1 decoding thread")
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cnnjax-decode")
