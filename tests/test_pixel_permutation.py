"""data.pixel_permutation_seed: one fixed shuffle of the pixel positions of every training and
evaluation image, checked against numpy indexing of the raw images, against `cnnjax eval
--permute_pixels`, and its refusals."""

import numpy as np
import pytest

from cnnjax import load_config
from cnnjax.data import load_split
from cnnjax.data.inputs import make_input
from cnnjax.data.perturbations import permute_pixels, shift_images, under_permutation
from cnnjax.errors import UserError
from cnnjax.inspect.invariance import perturbation
from cnnjax.train.config_checks import validate_config
from tests.conftest import RECIPE

SEED = 3  # the permutation's


def _config(data_dir, **overrides):
    """The default recipe's smoke variant without flips (refused with a shuffle), batch 32."""
    settings = {
        "data.data_dir": data_dir,
        "data.augment.horizontal_flip": False,
        "data.batch_size": 32,
        "data.eval_batch_size": 50,
        "data.train_split": "train[:256]",
        "data.eval_split": "test[:100]",
        **overrides,
    }
    return load_config(f"{RECIPE}:smoke", settings)


def _first(batches) -> dict:
    batch = next(batches)
    batches.close()  # stops the pipeline's thread
    return batch


def _shuffled(images: np.ndarray, order: np.ndarray) -> np.ndarray:
    """numpy's own: position i of each image takes the pixel at position order[i]."""
    flat = images.reshape(len(images), -1, images.shape[-1])
    return flat[:, order].reshape(images.shape)


def test_training_and_evaluation_batches_are_the_raw_images_shuffled_alike(data_dir):
    config = _config(data_dir, **{"data.pixel_permutation_seed": SEED})
    data = make_input(config)
    order = np.random.default_rng(SEED).permutation(28 * 28)
    assert sorted(order) == list(range(784)) and (order != np.arange(784)).mean() > 0.99

    train = load_split("fashion_mnist", "train[:256]", data_dir=data_dir)
    first_epoch = np.random.default_rng([config.seed, 0]).permutation(256)[:32]
    batch = _first(data.train_batches(0))
    np.testing.assert_array_equal(batch["image"], _shuffled(train.images[first_epoch], order))
    np.testing.assert_array_equal(batch["label"], train.labels[first_epoch])

    test = load_split("fashion_mnist", "test[:100]", data_dir=data_dir)
    batch = _first(data.eval_batches())
    np.testing.assert_array_equal(batch["image"], _shuffled(test.images[:50], order))
    # The training split's channel statistics do not depend on where the pixels are.
    plain = make_input(_config(data_dir))
    assert data.train_stats == plain.train_stats


def test_seed_minus_one_leaves_every_batch_bitwise_unchanged(data_dir):
    config = _config(data_dir)
    assert config.data.pixel_permutation_seed == -1  # the default
    data = make_input(config)
    train = load_split("fashion_mnist", "train[:256]", data_dir=data_dir)
    first_epoch = np.random.default_rng([config.seed, 0]).permutation(256)[:32]
    np.testing.assert_array_equal(_first(data.train_batches(0))["image"], train.images[first_epoch])
    test = load_split("fashion_mnist", "test[:100]", data_dir=data_dir)
    np.testing.assert_array_equal(_first(data.eval_batches())["image"], test.images[:50])


@pytest.mark.parametrize("upscale", [1, 2])
def test_the_shuffle_is_the_one_of_cnnjax_eval_permute_pixels(data_dir, upscale):
    """A run trained on shuffled pixels sees exactly the images that `cnnjax eval
    --permute_pixels=SEED` shows a run trained on plain ones (after upscaling, both)."""
    plain = make_input(_config(data_dir, **{"data.augment.upscale": upscale}))
    shuffled = make_input(
        _config(data_dir, **{"data.augment.upscale": upscale, "data.pixel_permutation_seed": SEED})
    )
    eval_flag = perturbation("permute_pixels", SEED)  # what --permute_pixels=SEED applies
    pairs = list(zip(plain.eval_batches(), shuffled.eval_batches(), strict=True))
    assert len(pairs) == 2  # 100 test images in batches of 50
    for plain_batch, shuffled_batch in pairs:
        assert shuffled_batch["image"].shape == (50, 28 * upscale, 28 * upscale, 1)
        np.testing.assert_array_equal(shuffled_batch["image"], eval_flag(plain_batch["image"]))
        np.testing.assert_array_equal(shuffled_batch["mask"], plain_batch["mask"])


def test_a_transform_under_the_permutation_acts_on_the_unshuffled_image():
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 5, 2), dtype=np.uint8)
    shift = lambda x: shift_images(x, 1, -2)  # noqa: E731
    moved = under_permutation(shift, SEED)(permute_pixels(images, SEED))
    np.testing.assert_array_equal(moved, permute_pixels(shift(images), SEED))
    assert under_permutation(shift, -1) is shift


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"data.pixel_permutation_seed": -2},
            "config.data.pixel_permutation_seed=-2: give a seed >= 0, or -1 for no shuffle",
        ),
        (
            {"data.pixel_permutation_seed": 0, "data.augment.random_crop_padding": 2},
            "config.data.pixel_permutation_seed with random crops or flips: they move and mirror "
            "the unshuffled image, which tells the net which pixels are neighbours; set "
            "config.data.augment.random_crop_padding=0 and horizontal_flip=False",
        ),
        (
            {"data.pixel_permutation_seed": 0, "data.augment.horizontal_flip": True},
            "config.data.pixel_permutation_seed with random crops or flips",
        ),
        (
            {"data.pixel_permutation_seed": 0, "train.eval_mirrored": True},
            "config.data.pixel_permutation_seed with train.eval_mirrored: the mirror of a "
            "shuffled image is not the shuffled mirror of the image; set train.eval_mirrored=False",
        ),
        (
            {"data.pixel_permutation_seed": 0, "data.task": "segmentation"},
            "config.data.pixel_permutation_seed shuffles the pixels of classification images, not "
            "of the 'segmentation' task's inputs (its labels would need the same shuffle): set it "
            "to -1",
        ),
        (
            {"data.pixel_permutation_seed": 0, "data.name": "imagenette"},
            "config.data.pixel_permutation_seed shuffles the images of in-memory datasets "
            "(fashion_mnist, mnist, cifar10, cifar100), not 'imagenette': set it to -1",
        ),
    ],
)
def test_where_a_shuffle_makes_no_sense_it_is_refused_in_one_line(overrides, message):
    config = load_config(f"{RECIPE}:smoke", {"data.augment.horizontal_flip": False, **overrides})
    with pytest.raises(UserError) as raised:
        validate_config(config)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)
