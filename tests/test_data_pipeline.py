"""The input pipeline: deterministic across resume, exact augmentations, whole-split eval."""

import time

import numpy as np
import pytest

from cnnjax.data import AugmentConfig, Split, TrainBatches, channel_stats, eval_batches
from cnnjax.data.normalization import Normalization
from cnnjax.data.pipeline import random_crop, random_flip

# Every training augmentation on, so that the resume and rows tests cover them all.
AUGMENT = AugmentConfig(random_crop_padding=2, horizontal_flip=True, pca_color_std=0.1)


def _split(n=100, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    return Split(images, np.arange(n, dtype=np.int32) % 10, 10)


def _batches(split, start_step, count, seed=0, augment=AUGMENT, batch_size=16):
    batches = TrainBatches(
        split, batch_size=batch_size, seed=seed, augment=augment, start_step=start_step
    )
    iterator = iter(batches)
    return [next(iterator) for _ in range(count)]


def test_resumed_batches_equal_uninterrupted_ones_bitwise():
    split = _split()
    full = _batches(split, 0, 20)  # 6 steps per epoch: crosses three epoch boundaries
    resumed = _batches(split, 7, 13)
    for a, b in zip(full[7:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_seeds_and_epochs_change_the_order():
    split = _split()
    first = _batches(split, 0, 1, seed=0)[0]["label"]
    assert not np.array_equal(first, _batches(split, 0, 1, seed=1)[0]["label"])
    assert not np.array_equal(first, _batches(split, 6, 1, seed=0)[0]["label"])


def test_each_epoch_visits_distinct_examples_and_drops_the_remainder():
    split = Split(np.zeros((100, 2, 2, 1), np.uint8), np.arange(100, dtype=np.int32), 100)
    batches = TrainBatches(split, batch_size=16, seed=3, augment=AugmentConfig(normalize=False))
    assert batches.steps_per_epoch == 6
    for epoch in range(2):
        seen = np.concatenate([batches.batch_at(epoch * 6 + i)["label"] for i in range(6)])
        assert len(seen) == 96 and len(np.unique(seen)) == 96
        np.testing.assert_array_equal(
            np.sort(np.concatenate([seen, batches.order(epoch)[96:]])), np.arange(100)
        )


def test_random_crop_only_shifts_content_within_the_padding():
    image = np.zeros((1, 6, 6, 1), np.uint8)
    image[0, 2, 3, 0] = 200  # one bright pixel
    rng = np.random.default_rng(0)
    shifts = set()
    for _ in range(50):
        cropped = random_crop(image, 2, rng)
        assert cropped.shape == image.shape
        ys, xs = np.nonzero(cropped[0, :, :, 0])
        if len(ys):  # the pixel may leave the frame only if shifted past the border
            assert cropped[0, ys[0], xs[0], 0] == 200 and len(ys) == 1
            shifts.add((ys[0] - 2, xs[0] - 3))
    assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in shifts) and len(shifts) > 5


def test_random_flip_mirrors_exactly_the_flipped_images():
    images = np.random.default_rng(0).integers(0, 256, (200, 5, 5, 3), dtype=np.uint8)
    flipped = random_flip(images, np.random.default_rng(1))
    mirrored = np.array(
        [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images, strict=True)]
    )
    kept = np.array([np.array_equal(f, i) for f, i in zip(flipped, images, strict=True)])
    assert np.all(mirrored | kept) and 70 < mirrored.sum() < 130


def test_eval_covers_the_whole_split_once_with_a_mask():
    split = _split(n=10)
    batches = list(eval_batches(split, batch_size=4, augment=AUGMENT))
    assert len(batches) == 3 and all(b["image"].shape == (4, 8, 8, 1) for b in batches)
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(labels, split.labels)


def test_normalization_standardizes_the_training_split():
    split = _split(n=512)
    batches = _batches(split, 0, 32, augment=AugmentConfig())
    assert all(b["image"].dtype == np.uint8 for b in batches)  # normalized on the device
    pixels = np.asarray(
        Normalization.standardize(*channel_stats(split.images))(
            np.concatenate([b["image"] for b in batches])
        )
    )
    assert abs(float(pixels.mean())) < 0.02 and abs(float(pixels.std()) - 1.0) < 0.02


def test_errors_in_the_background_thread_reach_the_consumer(monkeypatch):
    split = _split()
    batches = TrainBatches(split, batch_size=16, seed=0, augment=AUGMENT)

    def broken(step):
        raise RuntimeError(f"corrupt record at step {step}")

    monkeypatch.setattr(batches, "batch_at", broken)
    with pytest.raises(RuntimeError, match="corrupt record at step 0"):
        next(iter(batches))


def test_pipeline_is_far_faster_than_training():
    split = _split(n=5000, size=28)
    iterator = iter(TrainBatches(split, batch_size=256, seed=0, augment=AUGMENT))
    next(iterator)
    start = time.perf_counter()
    for _ in range(40):
        next(iterator)
    images_per_sec = 40 * 256 / (time.perf_counter() - start)
    print(f"input pipeline: {images_per_sec:,.0f} images/s with crop + flip + PCA colour")
    assert images_per_sec > 30_000  # training runs at ~10-15k images/s here


def test_upscale_repeats_each_pixel():
    split = _split(n=4, size=3)
    upscaled = AugmentConfig(normalize=False, upscale=2)
    batch = next(eval_batches(split, batch_size=4, augment=upscaled, mean=None, std=None))
    assert batch["image"].shape == (4, 6, 6, 1) and batch["image"].dtype == np.uint8
    np.testing.assert_array_equal(batch["image"][:, ::2, ::2], split.images)
    np.testing.assert_array_equal(batch["image"][:, 1::2, 1::2], batch["image"][:, ::2, ::2])


def test_rows_of_a_batch_equal_those_rows_of_the_whole_batch():
    """A process that makes only its rows of each global batch (on many hosts) gets exactly
    those rows of the whole batch: order, augmentation and padding drawn for the whole batch."""
    split = _split(n=70)
    whole = TrainBatches(split, batch_size=16, seed=2, augment=AUGMENT)
    parts = [
        TrainBatches(split, batch_size=16, seed=2, augment=AUGMENT, rows=slice(a, a + 8))
        for a in (0, 8)
    ]
    for step in (0, 5, 9):  # 4 steps per epoch: three epochs
        expected = whole.batch_at(step)
        for key in ("image", "label"):
            joined = np.concatenate([part.batch_at(step)[key] for part in parts])
            np.testing.assert_array_equal(joined, expected[key])
    # Evaluation: 10 examples in batches of 4 padded to 6 rows (e.g. 3 devices), two halves.
    split = _split(n=10)
    halves = [
        list(eval_batches(split, batch_size=4, augment=AUGMENT, rows=slice(a, a + 3)))
        for a in (0, 3)
    ]
    whole_eval = list(eval_batches(split, batch_size=4, augment=AUGMENT))
    assert [len(h) for h in halves] == [3, 3]
    for first, second, batch in zip(*halves, whole_eval, strict=True):
        for key in ("image", "label", "mask"):
            joined = np.concatenate([first[key], second[key]])
            np.testing.assert_array_equal(joined[:4], batch[key])
            assert not joined[4:].any()  # the rows past the batch: padding
    np.testing.assert_array_equal(halves[1][2]["mask"], [0, 0, 0])  # nothing to read
