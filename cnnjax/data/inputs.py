"""The training run's input, whatever the dataset: `make_input(config) -> RunInput`.

Two kinds share one interface, `TrainingData` (sizes, `train_batches(start_step)`,
`eval_batches()`), which a user's own data can also implement:

* in memory: small datasets (Fashion-MNIST, MNIST, CIFAR) loaded whole as uint8 arrays, the
  tasks derived from them, the crop/flip/PCA-colour pipeline (cnnjax/data/pipeline.py), the
  colour PCA computed from the training split, and optionally one fixed shuffle of the pixel
  positions of every training and evaluation image (data.pixel_permutation_seed);
* streaming: ImageNet-style datasets (`imagenet2012`, `imagenette`, or `imagefolder` with
  `data.image_folder`), decoded per batch in threads with random-resized crops for training
  (and PCA colour with ImageNet's published decomposition) and resize + center crop for
  evaluation (cnnjax/data/imagenet.py).

Both hand over uint8 images and name the `normalization` that the steps apply on the device.
On many hosts each process asks for its own `rows` of every global batch and reads (or decodes)
only those examples; `examples_decoded` counts them per split.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from collections.abc import Iterator
from typing import Protocol

import ml_collections
import numpy as np

from cnnjax.data import color_pca, imagenet, pipeline, sources, subsets, tasks
from cnnjax.data.normalization import Normalization
from cnnjax.errors import UserError

STREAMING_DATASETS = ("imagenet2012", "imagenette", "imagefolder")


class TrainingData(Protocol):
    """What the training loop needs of its data (pass your own to `train_and_evaluate`).

    `train_batches(start_step)` yields {'image': [B, ...], 'label': int [B] or [B, H, W]}
    from step `start_step` on, the same batches for the same step (a resumed run continues
    exactly); `eval_batches()` yields the whole evaluation split once, with a 'mask' [B] of 1
    for real examples and 0 for padding (every batch the same size). Images are float32 model
    inputs, or uint8 with a `normalization` attribute (a cnnjax.data.normalization
    .Normalization) that the steps apply. Optionally, both take `rows` (a slice of each global
    batch) and then yield only those rows: on many hosts, each process's own (data without it
    is read whole by every process, which keeps its own rows).
    """

    num_train: int
    num_classes: int
    input_shape: tuple[int, ...]  # one example, e.g. [H, W, C]

    def train_batches(self, start_step: int) -> Iterator[dict]: ...

    def eval_batches(self) -> Iterator[dict]: ...


@dataclasses.dataclass(frozen=True)
class TrainingSplitStats:
    """What evaluation needs to know of the training split: saved in the workdir by training,
    so that evaluating or inspecting a run does not load the training split again."""

    num_train: int
    num_classes: int
    mean: tuple[float, ...]  # per channel, of images / 255
    std: tuple[float, ...]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, saved: dict) -> TrainingSplitStats:
        return cls(
            int(saved["num_train"]),
            int(saved["num_classes"]),
            tuple(map(float, saved["mean"])),
            tuple(map(float, saved["std"])),
        )


class InMemoryInput:
    """Small datasets held in memory; batches are functions of (seed, step).

    With `train_stats` (of an earlier run) only the evaluation split is loaded: evaluation and
    inspection, not training.
    """

    def __init__(
        self, config: ml_collections.ConfigDict, train_stats: TrainingSplitStats | None = None
    ):
        cfg = config.data
        load = functools.partial(
            sources.load_split,
            cfg.name,
            data_dir=cfg.data_dir,
            source_dir=cfg.source_dir,
            download=cfg.download,
        )
        test = subsets.select_classes(load(cfg.eval_split), cfg.classes)
        # Derived tasks use other seeds for the two splits: different canvases and clips.
        self.test_split = tasks.derive(cfg.task, test, seed=config.seed + 1)
        if train_stats is None:
            train = subsets.select_classes(
                load(cfg.train_split), cfg.classes, examples_per_class=cfg.train_examples_per_class
            )
            self.train_split = tasks.derive(cfg.task, train, seed=config.seed)
            mean, std = pipeline.channel_stats(self.train_split.images)
            train_stats = TrainingSplitStats(
                len(self.train_split.labels),
                self.train_split.num_classes,
                tuple(map(float, mean)),
                tuple(map(float, std)),
            )
        else:
            self.train_split = None
        self.pca = None  # the training split's colour PCA: computed at the first train_batches
        self.train_stats = train_stats
        self.augment = pipeline.AugmentConfig(**cfg.augment.to_dict())
        # A key added later: configs saved before it (evaluating an old run) mean off.
        self.pixel_permutation_seed = cfg.get("pixel_permutation_seed", -1)
        # float32 -> float -> float32 is exact, so saved statistics normalize bit for bit alike.
        self.mean = np.asarray(train_stats.mean, np.float32)
        self.std = np.asarray(train_stats.std, np.float32)
        self.normalization = (
            Normalization.standardize(self.mean, self.std)
            if self.augment.normalize
            else Normalization.unit_range(len(self.mean))
        )
        self.examples_decoded = collections.Counter()  # read and augmented, per split
        self.batch_size, self.eval_batch_size, self.seed = (
            cfg.batch_size,
            cfg.eval_batch_size,
            config.seed,
        )
        self.num_train, self.num_classes = train_stats.num_train, train_stats.num_classes
        height, width, *rest = self.test_split.images.shape[1:]
        scale = cfg.augment.upscale  # the pipeline upscales images by this integer factor
        self.input_shape = (height * scale, width * scale, *rest)

    def train_batches(self, start_step: int, rows: slice | None = None) -> Iterator[dict]:
        if self.train_split is None:
            raise ValueError("this input was built for evaluation only (from saved statistics)")
        if self.augment.pca_color_std and self.pca is None:
            self.pca = color_pca.color_pca(self.train_split.images)
        batches = pipeline.TrainBatches(
            self.train_split,
            batch_size=self.batch_size,
            seed=self.seed,
            augment=self.augment,
            start_step=start_step,
            rows=rows,
            pca=self.pca,
            pixel_permutation_seed=self.pixel_permutation_seed,
        )
        return _counted(iter(batches), self.examples_decoded, "train")

    def eval_batches(self, rows: slice | None = None) -> Iterator[dict]:
        batches = pipeline.eval_batches(
            self.test_split,
            batch_size=self.eval_batch_size,
            augment=self.augment,
            rows=rows,
            pixel_permutation_seed=self.pixel_permutation_seed,
        )
        return _counted(batches, self.examples_decoded, "eval")


class StreamingInput:
    """ImageNet-style datasets decoded per batch (they do not fit in memory)."""

    train_stats = None  # fixed normalization: nothing to save
    normalization = imagenet.imagenet_normalization()

    def __init__(self, config: ml_collections.ConfigDict):
        cfg = config.data
        if cfg.task != "classification":
            raise UserError(f"dataset {cfg.name!r} is for classification: set data.task")
        self.train_source = self._source(cfg, cfg.train_split)
        self.eval_source = self._source(cfg, cfg.eval_split)
        self.batch_size, self.eval_batch_size, self.seed = (
            cfg.batch_size,
            cfg.eval_batch_size,
            config.seed,
        )
        self.image_size, self.workers = cfg.image_size, cfg.workers
        self.jpeg_draft = cfg.get("jpeg_draft", True)
        self.worker_processes = cfg.get("worker_processes", False)
        # Keys added later: configs saved before them (evaluating an old run) mean the defaults.
        self.eval_resize = imagenet.eval_resize_for(cfg.image_size, cfg.get("eval_resize", 0))
        self.interpolation = cfg.get("interpolation", "bilinear")
        self.pca_color_std = cfg.augment.get("pca_color_std", 0.0)
        self.num_train = len(self.train_source)
        self.num_classes = self.train_source.num_classes
        self.input_shape = (cfg.image_size, cfg.image_size, 3)
        self.examples_decoded = collections.Counter()  # per split

    @staticmethod
    def _source(cfg, split: str):
        if cfg.name == "imagefolder":
            if not cfg.image_folder:
                raise UserError(
                    "data.name=imagefolder needs config.data.image_folder=DIR holding "
                    "DIR/<split>/<class>/*.jpg (splits: data.train_split, data.eval_split)"
                )
            return imagenet.ImageFolderSource(os.path.join(cfg.image_folder, split))
        return imagenet.TfdsImageSource(
            cfg.name, split, data_dir=cfg.data_dir, download=cfg.download
        )

    def train_batches(self, start_step: int, rows: slice | None = None) -> Iterator[dict]:
        batches = imagenet.ImageBatches(
            self.train_source,
            batch_size=self.batch_size,
            seed=self.seed,
            image_size=self.image_size,
            workers=self.workers,
            start_step=start_step,
            rows=rows,
            jpeg_draft=self.jpeg_draft,
            worker_processes=self.worker_processes,
            interpolation=self.interpolation,
            pca_color_std=self.pca_color_std,
        )
        return _counted(iter(batches), self.examples_decoded, "train")

    def eval_batches(self, rows: slice | None = None) -> Iterator[dict]:
        batches = imagenet.eval_image_batches(
            self.eval_source,
            batch_size=self.eval_batch_size,
            image_size=self.image_size,
            resize=self.eval_resize,
            workers=self.workers,
            rows=rows,
            jpeg_draft=self.jpeg_draft,
            worker_processes=self.worker_processes,
            interpolation=self.interpolation,
        )
        return _counted(batches, self.examples_decoded, "eval")


def _counted(batches: Iterator[dict], counts: collections.Counter, split: str) -> Iterator[dict]:
    """`batches`, adding the real examples of each batch taken (its rows with mask 1) to
    `counts[split]`: what this process read and decoded for the devices (the decoding of a few
    batches queued ahead and never taken is not counted)."""
    try:
        for batch in batches:
            mask = batch.get("mask")
            counts[split] += len(batch["label"]) if mask is None else int(np.count_nonzero(mask))
            yield batch
    finally:
        batches.close()  # stops the pipeline's threads now, not when collected


RunInput = InMemoryInput | StreamingInput


def make_input(
    config: ml_collections.ConfigDict, train_stats: TrainingSplitStats | None = None
) -> RunInput:
    """The input of `config.data`; with `train_stats` (saved by training) an in-memory dataset
    loads only its evaluation split."""
    if config.data.name in STREAMING_DATASETS:
        return StreamingInput(config)
    return InMemoryInput(config, train_stats)
