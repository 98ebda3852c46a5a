"""Deterministic, vectorized input pipeline over a split held in memory.

The batch of global step `s` is a pure function of (seed, epoch = s // steps_per_epoch, position
in the epoch): the epoch's order comes from a generator seeded with (seed, epoch) and the
batch's augmentation from one seeded with (seed, epoch, batch index). A run resumed at any step
therefore sees exactly the batches of a run that never stopped. Whole batches are augmented with
numpy at once (per-example maps reach only 1k-17k images/s) in a background thread.

Batches stay uint8: the steps normalize them on the device (cnnjax/data/normalization.py). With
`rows` (on many hosts, the rows of each global batch that this process's devices hold) only
those examples are read and augmented, each with the random draws it has in the whole batch, so
a batch's rows are the same whichever process makes them.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator

import numpy as np

from cnnjax.data.color_pca import ColorPCA, color_pca, shift_colors
from cnnjax.data.perturbations import permute_pixels
from cnnjax.data.sources import Split

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation switches (evaluation only normalizes)."""

    random_crop_padding: int = 0  # zero-pad by this many pixels, then crop back at random; 0: off
    horizontal_flip: bool = False
    # (x / 255 - mean) / std with the training split's channel statistics, else x / 255: done by
    # the steps on the device (the input's `normalization`).
    normalize: bool = True
    # Integer nearest-neighbour upscaling, train and eval alike: lets nets made for large inputs
    # (Inception v3 needs 75x75 or more) run on 32x32 datasets.
    upscale: int = 1
    # AlexNet's "fancy PCA" colour offset per training image (cnnjax/data/color_pca.py): the
    # standard deviation of its alphas (AlexNet: 0.1), on pixels in [0, 1]; 0: off.
    pca_color_std: float = 0.0


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of `images` / 255, float32 [C] each."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return pixels.mean(0).astype(np.float32), pixels.std(0).astype(np.float32)


def upscale(images: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of [B, H, W, C] by an integer `factor` (uint8 stays uint8)."""
    if factor == 1:
        return images
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


def model_inputs(images: np.ndarray, factor: int, permutation_seed: int) -> np.ndarray:
    """What the model takes of uint8 [B, H, W, C] (after any augmentation), training and
    evaluation alike: upscaled by `factor`, then, for `permutation_seed` >= 0, with the pixel
    positions shuffled by `perturbations.permute_pixels` (the shuffle that `cnnjax eval
    --permute_pixels=SEED` applies to the images a model takes, so both see the same images)."""
    images = upscale(images, factor)
    return images if permutation_seed < 0 else permute_pixels(images, permutation_seed)


def random_crop(
    images: np.ndarray,
    padding: int,
    rng: np.random.Generator,
    *,
    batch_size: int | None = None,
    rows: slice = slice(None),
) -> np.ndarray:
    """Zero-pads [B, H, W, C] by `padding` and crops each image back at a random offset.

    `images` may be `rows` of a batch of `batch_size`: the offsets are drawn for the whole batch
    and each image takes its own row's.
    """
    batch, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dy, dx = rng.integers(0, 2 * padding + 1, size=(2, batch_size or batch))[:, rows]
    rows_index = dy[:, None] + np.arange(height)  # [B, H]
    cols = dx[:, None] + np.arange(width)  # [B, W]
    return padded[np.arange(batch)[:, None, None], rows_index[:, :, None], cols[:, None, :]]


def random_flip(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    batch_size: int | None = None,
    rows: slice = slice(None),
) -> np.ndarray:
    """Mirrors a random half (on average) of the images left to right (`images` may be `rows`
    of a batch of `batch_size`, as in `random_crop`)."""
    flip = rng.random(batch_size or images.shape[0])[rows] < 0.5
    return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_pca_color(
    images: np.ndarray,
    pca: ColorPCA,
    std: float,
    rng: np.random.Generator,
    *,
    batch_size: int | None = None,
    rows: slice = slice(None),
) -> np.ndarray:
    """Adds AlexNet's PCA colour offset to each image of uint8 [B, H, W, C], alphas ~ N(0, std)
    per eigenvector of `pca` (`images` may be `rows` of a batch of `batch_size`, as in
    `random_crop`); returns uint8 [B, H, W, C] (color_pca.shift_colors: offsets in whole
    levels, clipped)."""
    channels = images.shape[-1]
    alphas = rng.normal(0.0, std, size=(batch_size or images.shape[0], channels))[rows]
    return shift_colors(images, alphas, pca)


class TrainBatches:
    """Infinite training batches {'image': uint8 [B, H, W, C], 'label': int32 [B]}.

    The remainder of each epoch (N mod batch_size examples, different ones each epoch) is
    dropped so that every step has the same shape. Iterating starts at `start_step`. With
    `rows`, each batch holds only those rows of the global batch of `batch_size`. Images stay
    uint8: the steps normalize them on the device. `pca`: the training split's colour
    decomposition for `augment.pca_color_std` (computed from `split` when not given).
    `pixel_permutation_seed` >= 0 shuffles the pixel positions of every image the same way
    (`model_inputs`); -1: off.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        seed: int,
        augment: AugmentConfig,
        start_step: int = 0,
        prefetch: int = 3,
        rows: slice | None = None,
        pca: ColorPCA | None = None,
        pixel_permutation_seed: int = -1,
    ):
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.pixel_permutation_seed = pixel_permutation_seed
        self.augment, self.rows = augment, rows or slice(0, batch_size)
        self.start_step, self.prefetch = start_step, prefetch
        self.steps_per_epoch = len(split.labels) // batch_size
        self._order_epoch, self._order = -1, None
        if augment.pca_color_std and pca is None:
            pca = color_pca(split.images)
        self.pca = pca

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of example indices for `epoch`."""
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order, self._order_epoch = rng.permutation(len(self.split.labels)), epoch
        return self._order

    def batch_at(self, step: int) -> Batch:
        """The batch of global step `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        indices = self.order(epoch)[position * self.batch_size : (position + 1) * self.batch_size]
        indices = indices[self.rows]
        images = self.split.images[indices]
        rng = np.random.default_rng([self.seed, epoch, position, 1])
        draws = dict(batch_size=self.batch_size, rows=self.rows)
        if self.augment.random_crop_padding:
            images = random_crop(images, self.augment.random_crop_padding, rng, **draws)
        if self.augment.horizontal_flip:
            images = random_flip(images, rng, **draws)
        # Drawn after crop and flip (which thus stay as they are without it) and added to every
        # pixel of the crop, its zero padding too: the whole input's colour shifts, as for a photo.
        if self.augment.pca_color_std:
            images = random_pca_color(images, self.pca, self.augment.pca_color_std, rng, **draws)
        return {
            "image": model_inputs(images, self.augment.upscale, self.pixel_permutation_seed),
            "label": self.split.labels[indices],
        }

    def __iter__(self) -> Iterator[Batch]:
        step = self.start_step
        return _background(lambda: self._generate(step), self.prefetch)

    def _generate(self, step: int) -> Iterator[Batch]:
        while True:
            yield self.batch_at(step)
            step += 1


def eval_batches(
    split: Split,
    *,
    batch_size: int,
    augment: AugmentConfig,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    rows: slice | None = None,
    pixel_permutation_seed: int = -1,
) -> Iterator[Batch]:
    """Every example of `split` once, in order; the last batch is zero-padded to `batch_size`.

    Each batch has 'mask' float32 [B] (1 for real examples, 0 for padding) so that jitted
    evaluation keeps one shape and still counts every example exactly once. With `rows` each
    batch holds only those rows of the global batch (rows past `batch_size` are padding too).
    Images stay uint8 (`mean` and `std` are not used: the steps normalize); they are the
    model's inputs as in training (`model_inputs`: upscaled, pixels shuffled for
    `pixel_permutation_seed` >= 0).
    """
    del mean, std
    rows = rows or slice(0, batch_size)
    total = len(split.labels)
    for start in range(0, total, batch_size):
        # The examples of this batch's rows; rows past the batch or the split are padding.
        wanted = start + np.arange(rows.start, rows.stop)
        real = (wanted < min(start + batch_size, total)).sum()  # real rows come first
        images = split.images[wanted[:real]]
        labels = split.labels[wanted[:real]]
        padding = len(wanted) - real
        if padding:
            images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros((padding, *labels.shape[1:]), labels.dtype)])
        yield {
            "image": model_inputs(images, augment.upscale, pixel_permutation_seed),
            "label": labels,
            "mask": (np.arange(len(wanted)) < real).astype(np.float32),
        }


_DONE = object()


def _background(make_iterator, size: int) -> Iterator[Batch]:
    """Runs the iterator from `make_iterator()` in a daemon thread, `size` items ahead.

    An exception in the thread is raised in the consumer; the thread stops when the consumer
    drops the iterator (checked whenever the queue is full).
    """
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce():
        try:
            for item in make_iterator():
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_DONE)
        except BaseException as error:  # noqa: BLE001 (handed to the consumer)
            items.put(error)

    threading.Thread(target=produce, daemon=True, name="cnnjax-input").start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
