"""Checks of `config.data` before any data is read: each problem is one line with its fix."""

from __future__ import annotations

import ml_collections

from cnnjax.config_values import check_choice, check_positive
from cnnjax.data.image_decoding import INTERPOLATIONS
from cnnjax.data.inputs import STREAMING_DATASETS
from cnnjax.data.sources import KNOWN_DATASETS
from cnnjax.data.tasks import TASKS
from cnnjax.errors import UserError


def validate_data_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for the first invalid setting of `config.data` (`config` is the whole
    run config)."""
    data = config.data
    known = KNOWN_DATASETS + STREAMING_DATASETS
    if data.name not in known:
        raise UserError(f"unknown dataset {data.name!r}: choose one of {', '.join(known)}")
    check_positive(data.image_size, "data.image_size")
    check_positive(data.workers, "data.workers")
    resize = data.eval_resize
    if not isinstance(resize, int) or (resize != 0 and resize < data.image_size):
        raise UserError(
            f"config.data.eval_resize must be 0 (image_size / 0.875) or an integer >= "
            f"data.image_size={data.image_size} (got {resize}): set config.data.eval_resize=..."
        )
    check_choice("data.interpolation", data.interpolation, tuple(INTERPOLATIONS))
    check_choice("data task", data.task, TASKS)
    augment = data.augment
    check_positive(augment.upscale, "data.augment.upscale")
    if augment.upscale > 1 and data.task != "classification":
        raise UserError("config.data.augment.upscale is for image classification tasks only")
    if data.task != "classification" and (augment.random_crop_padding or augment.horizontal_flip):
        raise UserError(
            f"data task {data.task!r} takes no crop/flip augmentation: set "
            "config.data.augment.random_crop_padding=0 and horizontal_flip=False"
        )
    check_positive(data.batch_size, "data.batch_size")
    check_positive(data.eval_batch_size, "data.eval_batch_size")
    check_positive(augment.random_crop_padding, "data.augment.random_crop_padding", allow_zero=True)
    pca_color_std = augment.get("pca_color_std", 0.0)  # absent from configs saved before it
    check_positive(pca_color_std, "data.augment.pca_color_std", allow_zero=True)
    if pca_color_std and data.task != "classification":
        raise UserError(
            f"data task {data.task!r} takes no PCA colour augmentation: set "
            "config.data.augment.pca_color_std=0"
        )
    examples_per_class = data.train_examples_per_class
    check_positive(examples_per_class, "data.train_examples_per_class", allow_zero=True)
    if data.name in STREAMING_DATASETS and (data.classes or examples_per_class):
        raise UserError("config.data.classes and train_examples_per_class are for in-memory data")
    check_pixel_permutation(config)


def check_pixel_permutation(config: ml_collections.ConfigDict) -> None:
    """One line where `data.pixel_permutation_seed` cannot apply: a seed below -1, data that is
    not images of an in-memory classification dataset, or transforms of the unshuffled image
    (crops, flips, mirrored evaluation) that would give the net back the locality it removes."""
    data = config.data
    seed = data.get("pixel_permutation_seed", -1)  # absent from configs saved before it
    key = "config.data.pixel_permutation_seed"
    if not isinstance(seed, int) or seed < -1:
        raise UserError(f"{key}={seed!r}: give a seed >= 0, or -1 for no shuffle")
    if seed == -1:
        return
    if data.name in STREAMING_DATASETS:
        raise UserError(
            f"{key} shuffles the images of in-memory datasets ({', '.join(KNOWN_DATASETS)}), "
            f"not {data.name!r}: set it to -1"
        )
    if data.task != "classification":
        raise UserError(
            f"{key} shuffles the pixels of classification images, not of the {data.task!r} "
            "task's inputs (its labels would need the same shuffle): set it to -1"
        )
    augment = data.augment
    if augment.random_crop_padding or augment.horizontal_flip:
        raise UserError(
            f"{key} with random crops or flips: they move and mirror the unshuffled image, "
            "which tells the net which pixels are neighbours; set "
            "config.data.augment.random_crop_padding=0 and horizontal_flip=False"
        )
    if config.get("train") is not None and config.train.get("eval_mirrored", False):
        raise UserError(
            f"{key} with train.eval_mirrored: the mirror of a shuffled image is not the "
            "shuffled mirror of the image; set train.eval_mirrored=False"
        )
