"""AlexNet's PCA colour augmentation: the decomposition, the offsets, and how batches draw them."""

import dataclasses
import io

import ml_collections
import numpy as np
import PIL.Image
import pytest

from cnnjax.config_base import get_base_config
from cnnjax.data import AugmentConfig, Split, TrainBatches
from cnnjax.data.color_pca import IMAGENET_PCA, ColorPCA, color_offsets, color_pca, shift_colors
from cnnjax.data.config_checks import validate_data_config
from cnnjax.data.decode_workers import DecodeSpec, decode_example
from cnnjax.data.imagenet import ImageBatches, example_rng, train_transform
from cnnjax.errors import UserError
from cnnjax.sweep.plan import config_hash

PCA_AUGMENT = AugmentConfig(random_crop_padding=1, horizontal_flip=True, pca_color_std=0.1)


def _rgb_split(n=64, size=6, seed=0) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(30, 226, (n, size, size, 3), dtype=np.uint8)
    return Split(images, np.arange(n, dtype=np.int32) % 10, 10)


def test_color_pca_finds_the_direction_the_colours_lie_along():
    # Every pixel is 100 + t * (2, 1, 2) for t in {-30..30}: one direction d = (2, 1, 2) / 3,
    # along which x / 255 has variance var(3 t / 255) and across which it has none.
    t = np.random.default_rng(0).integers(-30, 31, (50, 4, 5))
    images = (100 + t[..., None] * np.array([2, 1, 2])).astype(np.uint8)  # [50, 4, 5, 3]
    pca = color_pca(images)
    expected_variance = np.var(3.0 * t / 255.0)
    np.testing.assert_allclose(pca.eigenvalues, [expected_variance, 0, 0], atol=1e-15)
    np.testing.assert_allclose(pca.eigenvectors[:, 0], [2 / 3, 1 / 3, 2 / 3], atol=1e-12)
    np.testing.assert_allclose(pca.eigenvectors.T @ pca.eigenvectors, np.eye(3), atol=1e-12)
    # One channel: the eigenvalue is the variance of x / 255, the eigenvector [[1]].
    gray = images[..., :1]
    one = color_pca(gray)
    assert one.eigenvectors.tolist() == [[1.0]]
    assert one.eigenvalues[0] == pytest.approx(np.var(gray / 255.0), rel=1e-12)


def test_color_pca_streams_in_chunks_exactly(monkeypatch):
    images = _rgb_split(n=300, size=10).images  # 30,000 pixels
    whole = np.cov(images.reshape(-1, 3).T / 255.0, bias=True)
    monkeypatch.setattr("cnnjax.data.color_pca._CHUNK_PIXELS", 7_001)  # 5 uneven chunks
    pca = color_pca(images)
    eigenvalues = np.linalg.eigvalsh(whole)[::-1]
    np.testing.assert_allclose(pca.eigenvalues, eigenvalues, rtol=1e-12)
    rebuilt = pca.eigenvectors @ np.diag(pca.eigenvalues) @ pca.eigenvectors.T
    np.testing.assert_allclose(rebuilt, whole, atol=1e-15)
    # Each eigenvector's largest entry is positive: the same sign on every machine.
    largest = np.abs(pca.eigenvectors).argmax(0)
    assert (pca.eigenvectors[largest, [0, 1, 2]] > 0).all()


def test_offsets_are_the_formula_in_whole_levels_clipped():
    pca = ColorPCA(
        np.array([0.04, 0.01, 0.0025]), np.linalg.qr(np.arange(9.0).reshape(3, 3) ** 2)[0]
    )
    alphas = np.array([[0.1, -0.2, 0.05], [-1.0, 0.3, 0.0]])
    by_hand = np.array(
        [sum(pca.eigenvectors[:, i] * a[i] * pca.eigenvalues[i] for i in range(3)) for a in alphas]
    )
    np.testing.assert_allclose(color_offsets(alphas, pca), by_hand, rtol=1e-13)
    images = np.full((2, 3, 2, 3), 128, np.uint8)
    images[1, 0, 0] = (0, 255, 3)
    shifted = shift_colors(images, alphas, pca).astype(int)
    levels = np.rint(255 * by_hand).astype(int)  # [2, 3]
    np.testing.assert_array_equal(shifted[0], np.broadcast_to(128 + levels[0], (3, 2, 3)))
    np.testing.assert_array_equal(shifted[1, 0, 0], np.clip([0, 255, 3] + levels[1], 0, 255))
    assert shifted.min() >= 0 and shifted.max() <= 255 and shifted[1, 0, 0].tolist() != [0, 255, 3]


def test_batches_add_the_formula_with_the_batch_generator_alphas():
    split = _rgb_split()
    plain = TrainBatches(split, batch_size=16, seed=4, augment=AugmentConfig(horizontal_flip=True))
    colour = TrainBatches(
        split,
        batch_size=16,
        seed=4,
        augment=AugmentConfig(horizontal_flip=True, pca_color_std=0.1),
    )
    pca = color_pca(split.images)
    np.testing.assert_array_equal(colour.pca.eigenvectors, pca.eigenvectors)
    for step in (0, 5):  # epochs 0 and 1
        epoch, position = divmod(step, 4)
        rng = np.random.default_rng([4, epoch, position, 1])
        rng.random(16)  # the flips' draw comes first
        alphas = rng.normal(0.0, 0.1, (16, 3))
        levels = np.rint(255 * (alphas * pca.eigenvalues) @ pca.eigenvectors.T)  # [16, 3]
        expected = np.clip(plain.batch_at(step)["image"] + levels[:, None, None, :], 0, 255)
        np.testing.assert_array_equal(colour.batch_at(step)["image"], expected)


def test_offsets_have_mean_zero_and_std_alpha_times_lambda_per_direction():
    split = _rgb_split(n=4096, size=2, seed=1)
    pca = color_pca(split.images)
    batches = TrainBatches(split, batch_size=4096, seed=0, augment=AugmentConfig(), pca=pca)
    alphas = np.random.default_rng(5).normal(0.0, 0.1, (4096, 3))
    offsets = color_offsets(alphas, pca)  # [N, 3]
    assert np.abs(offsets.mean(0)).max() < 4 * 0.1 * pca.eigenvalues[0] / np.sqrt(4096)
    per_direction = (offsets @ pca.eigenvectors).std(0)  # [3]: alpha_i lambda_i
    np.testing.assert_allclose(per_direction, 0.1 * pca.eigenvalues, rtol=0.05)
    # In levels, through the pipeline: the shift of each image's colour mean.
    colour = TrainBatches(
        split, batch_size=4096, seed=0, augment=AugmentConfig(pca_color_std=0.1), pca=pca
    )
    shift = colour.batch_at(0)["image"].astype(float) - batches.batch_at(0)["image"]
    levels = shift.mean((1, 2)) @ pca.eigenvectors  # [N, 3]
    assert np.abs(levels.mean(0)).max() < 0.2
    np.testing.assert_allclose(levels.std(0)[:2], 255 * 0.1 * pca.eigenvalues[:2], rtol=0.1)


def test_zero_std_leaves_batches_bitwise_unchanged_and_draws_nothing():
    split = _rgb_split()
    base = AugmentConfig(random_crop_padding=1, horizontal_flip=True)
    off = TrainBatches(split, batch_size=16, seed=2, augment=base)
    zero_std = dataclasses.replace(base, pca_color_std=0.0)
    zero = TrainBatches(split, batch_size=16, seed=2, augment=zero_std)
    on = TrainBatches(split, batch_size=16, seed=2, augment=PCA_AUGMENT)
    assert off.pca is None and zero.pca is None and on.pca is not None
    for step in (0, 3, 6):
        np.testing.assert_array_equal(off.batch_at(step)["image"], zero.batch_at(step)["image"])
        # The crops and flips stay those of the run without colour: only the colours move.
        moved = on.batch_at(step)["image"].astype(int) - off.batch_at(step)["image"]
        assert np.abs(moved).max() <= 12 and np.count_nonzero(moved) > 0


def test_rows_of_a_batch_equal_those_rows_of_the_whole_batch():
    split = _rgb_split(n=70)
    whole = TrainBatches(split, batch_size=16, seed=2, augment=PCA_AUGMENT)
    parts = [
        TrainBatches(split, batch_size=16, seed=2, augment=PCA_AUGMENT, rows=slice(a, a + 4))
        for a in (0, 4, 8, 12)
    ]
    for step in (0, 5, 9):
        joined = np.concatenate([part.batch_at(step)["image"] for part in parts])
        np.testing.assert_array_equal(joined, whole.batch_at(step)["image"])


def test_resumed_batches_equal_uninterrupted_ones():
    split = _rgb_split()
    batches = TrainBatches(split, batch_size=16, seed=9, augment=PCA_AUGMENT)
    full = iter(batches)
    expected = [next(full)["image"] for _ in range(10)]  # 4 steps per epoch
    resumed = iter(TrainBatches(split, batch_size=16, seed=9, augment=PCA_AUGMENT, start_step=6))
    for image in expected[6:]:
        np.testing.assert_array_equal(next(resumed)["image"], image)


class _OnePhoto:
    """A 40x30 PNG with smooth colours, one example per index (labels 0..n-1)."""

    def __init__(self, n: int):
        self.n, self.num_classes, self.class_names = n, n, tuple(map(str, range(n)))
        y, x = np.mgrid[0:30, 0:40]
        pixels = np.stack([x * 5, y * 7, np.full_like(x, 120)], -1).astype(np.uint8)
        buffer = io.BytesIO()
        PIL.Image.fromarray(pixels).save(buffer, "PNG")
        self.data = buffer.getvalue()

    def __len__(self) -> int:
        return self.n

    def get(self, index: int) -> tuple[bytes, int]:
        return self.data, index


def test_streaming_transform_applies_imagenet_pca_per_example():
    source = _OnePhoto(8)
    plain = train_transform(source.data, example_rng(4, 1, 5), size=12)
    coloured = train_transform(source.data, example_rng(4, 1, 5), size=12, pca_color_std=0.1)
    rng = example_rng(4, 1, 5)
    train_transform(source.data, rng, size=12)  # the crop and flip draws come first
    alphas = rng.normal(0.0, 0.1, 3)
    levels = np.rint(255 * color_offsets(alphas, IMAGENET_PCA))
    np.testing.assert_array_equal(coloured, np.clip(plain + levels, 0, 255))
    np.testing.assert_array_equal(levels, [4, 5, 6])  # this example's offset, in levels
    # Batches decode each example with its own generator: the same in threads and processes.
    kwargs = dict(batch_size=4, seed=4, image_size=12, pca_color_std=0.1)
    threads = ImageBatches(source, workers=2, **kwargs)
    processes = ImageBatches(source, workers=2, worker_processes=True, **kwargs)
    batch = threads.batch_at(3)  # 2 steps per epoch: epoch 1, positions 4..7
    np.testing.assert_array_equal(processes.batch_at(3)["image"], batch["image"])
    np.testing.assert_array_equal(batch["image"][1], coloured)  # position 5
    spec = DecodeSpec(12, seed=4, pca_color_std=0.1)
    np.testing.assert_array_equal(decode_example(source, spec, (0, 1, 5))[0], coloured)
    uncoloured = ImageBatches(source, workers=1, batch_size=4, seed=4, image_size=12)
    assert not np.array_equal(uncoloured.batch_at(3)["image"], batch["image"])


def test_negative_std_is_one_line_error_and_the_key_keeps_old_sweep_hashes():
    config = get_base_config()
    config.data.augment.pca_color_std = -0.1
    with pytest.raises(UserError, match=r"^config.data.augment.pca_color_std must be >= 0 "):
        validate_data_config(config)
    config.data.augment.pca_color_std = 0.1
    config.data.task = "rows"
    with pytest.raises(UserError, match="takes no PCA colour augmentation"):
        validate_data_config(config)
    # A config saved before the key existed hashes (names its sweep runs) as one with it at 0.
    config = get_base_config()
    old = ml_collections.ConfigDict(config.to_dict())
    del old.data.augment["pca_color_std"]
    validate_data_config(old)
    assert config_hash(old) == config_hash(config)
    config.data.augment.pca_color_std = 0.1
    assert config_hash(old) != config_hash(config)
