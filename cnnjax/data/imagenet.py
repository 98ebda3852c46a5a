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
import functools
import io
import itertools
import math
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import PIL.Image

from cnnjax.data.image_sources import (  # noqa: F401 (re-exported: one import for users)
    IMAGE_EXTENSIONS,
    ImageFolderSource,
    ImageSource,
    TfdsImageSource,
)
from cnnjax.errors import UserError

Batch = dict[str, np.ndarray]

# The ImageNet training set's channel statistics of x / 255, as every torchvision and timm
# checkpoint expects them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Evaluation resizes the shorter side to size / 0.875 (256 for 224) before the center crop: the
# standard ResNet/Inception protocol.
EVAL_CROP_FRACTION = 0.875
# numpy pads seed sequences with zeros ([s, e] seeds like [s, e, 0]), so the per-example
# augmentation seed ends with a stream number that no other seed of the data stage uses
# (pipeline.TrainBatches uses 1 for its batch augmentation).
_AUGMENT_STREAM = 2


def example_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The augmentation generator of the example at `position` in `epoch`'s order."""
    return np.random.default_rng([seed, epoch, position, _AUGMENT_STREAM])


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Inception's crop (left, top, width, height): area fraction in `scale`, log-uniform
    aspect ratio in `ratio`, 10 tries, then the central crop clamped to `ratio`.

    The same sampling as torchvision's RandomResizedCrop.get_params and big_vision's
    inception_crop, so published ImageNet recipes carry over unchanged.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(
    data: bytes,
    rng: np.random.Generator,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> np.ndarray:
    """Encoded image -> random-resized crop, bilinear to size x size, random mirror: uint8
    [size, size, 3].
    """
    image = PIL.Image.open(io.BytesIO(data))
    width, height = image.size
    left, top, w, h = random_resized_crop_box(width, height, rng, scale, ratio)
    # A JPEG can decode at 1/2, 1/4 or 1/8 scale for a fraction of the cost: ask for the smallest
    # one whose crop still has at least `size` pixels each way (a no-op for other formats).
    image.draft("RGB", (math.ceil(width * size / w), math.ceil(height * size / h)))
    fx, fy = image.size[0] / width, image.size[1] / height
    box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
    image = _rgb(image).resize((size, size), PIL.Image.Resampling.BILINEAR, box=box)
    pixels = np.asarray(image, np.uint8)  # [size, size, 3]
    if flip and rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return pixels


def eval_transform(data: bytes, size: int = 224, resize: int = 256) -> np.ndarray:
    """Encoded image -> shorter side resized to `resize` (bilinear, aspect kept), central
    size x size crop: uint8 [size, size, 3]."""
    image = PIL.Image.open(io.BytesIO(data))
    width, height = image.size
    # Truncating the longer side, and rounding the crop offset, as torchvision's Resize and
    # CenterCrop do, so numbers reported with torchvision's evaluation are comparable.
    if width <= height:
        new_size = (resize, int(resize * height / width))
    else:
        new_size = (int(resize * width / height), resize)
    image.draft("RGB", new_size)
    image = _rgb(image).resize(new_size, PIL.Image.Resampling.BILINEAR)
    top = int(round((new_size[1] - size) / 2))
    left = int(round((new_size[0] - size) / 2))
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def _rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    # ImageNet holds grayscale and CMYK JPEGs, and PNGs may carry alpha or a palette.
    return image if image.mode == "RGB" else image.convert("RGB")


class ImageBatches:
    """Infinite training batches {'image': float32 [B, S, S, 3], 'label': int32 [B]}.

    Each epoch drops its last N mod B examples (different ones each epoch) so every step has the
    same shape. Iterating starts at `start_step` and keeps the decoding of the next `prefetch`
    batches queued on `workers` threads, so they are ready while the accelerator runs a step.
    `train=False` takes the evaluation transform instead of the augmentation.
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        batch_size: int,
        seed: int,
        image_size: int = 224,
        train: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        workers: int = 8,
        prefetch: int = 4,
        start_step: int = 0,
    ):
        if not 0 < batch_size <= len(source):
            raise UserError(
                f"batch size {batch_size} does not fit {len(source)} examples: use 1 to "
                f"{len(source)}"
            )
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.image_size, self.train = image_size, train
        self.workers, self.prefetch, self.start_step = workers, prefetch, start_step
        self._normalize = _normalizer(mean, std)
        self._order_epoch, self._order = -1, None
        self._pool = None

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
        pending = _Pending.empty(self.batch_size, self.image_size)
        for row, index in enumerate(indices):
            job = (self._fill, pending, row, int(index), epoch, first + row)
            pending.futures.append(self._executor().submit(*job))
        return pending

    def _fill(self, pending: _Pending, row: int, index: int, epoch: int, position: int) -> None:
        if self.train:
            rng = example_rng(self.seed, epoch, position)
            transform = functools.partial(train_transform, rng=rng, size=self.image_size)
        else:
            resize = round(self.image_size / EVAL_CROP_FRACTION)
            transform = functools.partial(eval_transform, size=self.image_size, resize=resize)
        pixels, pending.batch["label"][row] = _read(self.source, index, transform)
        self._normalize(pixels, out=pending.batch["image"][row])

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
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    workers: int = 8,
) -> Iterator[Batch]:
    """Every example of `source` once, in order, with the evaluation transform.

    Like `pipeline.eval_batches`, the last batch is padded to `batch_size` and each batch has
    'mask' float32 [B] (1 for real examples, 0 for padding), so jitted evaluation keeps one
    shape and counts every example once.
    """
    normalize = _normalizer(mean, std)
    pool = _thread_pool(workers)

    def fill(pending: _Pending, row: int, index: int) -> None:
        transform = functools.partial(eval_transform, size=image_size, resize=resize)
        pixels, pending.batch["label"][row] = _read(source, index, transform)
        normalize(pixels, out=pending.batch["image"][row])
        pending.batch["mask"][row] = 1.0

    def submit(start: int) -> _Pending:
        pending = _Pending.empty(batch_size, image_size, masked=True)
        for row, index in enumerate(range(start, min(start + batch_size, len(source)))):
            pending.futures.append(pool.submit(fill, pending, row, index))
        return pending

    try:
        yield from _pipelined(submit, iter(range(0, len(source), batch_size)), ahead=2)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class _Pending:
    """A batch whose rows the worker threads are filling in."""

    def __init__(self, batch: Batch):
        self.batch, self.futures = batch, []

    @classmethod
    def empty(cls, batch_size: int, image_size: int, masked: bool = False) -> _Pending:
        batch = {
            # Zeros: the padding rows of an evaluation batch stay as they are.
            "image": np.zeros((batch_size, image_size, image_size, 3), np.float32),
            "label": np.zeros((batch_size,), np.int32),
        }
        if masked:
            batch["mask"] = np.zeros((batch_size,), np.float32)
        return cls(batch)


def _read(source: ImageSource, index: int, transform) -> tuple[np.ndarray, int]:
    data, label = source.get(index)
    try:
        return transform(data), label
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise UserError(f"example {index} is not a readable image ({error}): replace it") from None


def _collect(pending: _Pending) -> Batch:
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


def _normalizer(mean, std) -> Callable[..., np.ndarray]:
    """(x / 255 - mean) / std as one multiply and one subtract, written into `out`."""
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    offset = (np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)

    def normalize(pixels: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.multiply(pixels, scale, out=out)
        out -= offset
        return out

    return normalize


def _thread_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    if workers < 1:
        raise UserError(f"workers={workers}: use at least 1 decoding thread")
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cnnjax-decode")
