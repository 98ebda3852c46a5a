"""Datasets through TFDS: the real Fashion-MNIST offline, other names, and missing data."""

import gzip
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnnjax.data import KNOWN_DATASETS, load_split
from cnnjax.data.idx_builders import read_idx
from cnnjax.errors import UserError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def test_real_fashion_mnist_has_the_published_splits(data_dir):
    train = load_split("fashion_mnist", "train", data_dir=data_dir)
    test = load_split("fashion_mnist", "test", data_dir=data_dir)
    assert train.images.shape == (60_000, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (10_000, 28, 28, 1) and train.num_classes == 10
    np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    # Same images as the IDX files (TFDS stores them in its own shuffled order).
    raw = read_idx(os.path.join(DEBIAN_DIR, "t10k-images-idx3-ubyte.gz"))
    assert raw.shape == (10_000, 28, 28)
    assert int(test.images.sum(dtype=np.int64)) == int(raw.sum(dtype=np.int64))
    raw_labels = read_idx(os.path.join(DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz"))
    first = np.flatnonzero((test.images[..., 0] == raw[0]).all(axis=(1, 2)))
    assert len(first) >= 1 and test.labels[first[0]] == raw_labels[0]


def test_split_slices_are_tfds_split_strings(data_dir):
    subset = load_split("fashion_mnist", "train[:1000]", data_dir=data_dir)
    assert subset.images.shape == (1000, 28, 28, 1)


def _write_idx(path, array: np.ndarray) -> None:
    """A gzipped IDX file (LeCun's format: magic, dimension sizes, uint8 data) of `array`."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_prepares_offline_from_a_source_dir(tmp_path):
    # Tiny IDX files in the real files' format (5 training, 7 test images): preparing the real
    # 70,000 takes about 20 s, and the shared data directory (data_dir) is prepared that way.
    source = tmp_path / "idx"
    source.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28), np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 9, 8, 7, 6, 5, 5, 9], np.uint8)
    for prefix, rows in (("train", slice(0, 5)), ("t10k", slice(5, 12))):
        _write_idx(source / f"{prefix}-images-idx3-ubyte.gz", images[rows])
        _write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", labels[rows])
    data_dir = tmp_path / "tfds"
    split = load_split("fashion_mnist", "test", data_dir=str(data_dir), source_dir=str(source))
    assert split.images.shape == (7, 28, 28, 1) and split.num_classes == 10
    # The same examples (TFDS stores them in its own shuffled order).
    order = np.argsort(split.labels, kind="stable")
    np.testing.assert_array_equal(split.labels[order], [5, 5, 6, 7, 8, 9, 9])
    by_label = sorted(range(5, 12), key=lambda i: (labels[i], images[i].tobytes()))
    got = sorted(range(7), key=lambda i: (split.labels[i], split.images[i].tobytes()))
    np.testing.assert_array_equal(split.images[got, ..., 0], images[by_label])
    # What the stock TFDS reader (no cnnjax) sees in that directory is the same dataset.
    stock = tfds.data_source("fashion_mnist", split="test", data_dir=str(data_dir))
    np.testing.assert_array_equal(stock[0]["image"], split.images[0])
    assert len(tfds.data_source("fashion_mnist", split="train", data_dir=str(data_dir))) == 5
    assert (data_dir / "fashion_mnist" / "3.0.1" / "dataset_info.json").exists()


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(UserError, match="unknown dataset 'imagenet9': choose one of fashion_mnist"):
        load_split("imagenet9", "train")
    assert {"fashion_mnist", "mnist", "cifar10", "cifar100"} <= set(KNOWN_DATASETS)


def test_missing_dataset_fails_fast_with_the_fix(tmp_path):
    start = time.perf_counter()
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist.*CNNJAX_DATA"):
        load_split("fashion_mnist", "train", data_dir=str(tmp_path), source_dir=str(tmp_path))
    # The library names config keys as `config.x` (the command line prints `--config.x`).
    with pytest.raises(UserError, match=r"cifar10.* pass config\.data\.download=True"):
        load_split("cifar10", "train", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5.0


def test_bad_split_fails_clearly(data_dir):
    with pytest.raises(UserError, match="split 'validation' of 'fashion_mnist' is not valid"):
        load_split("fashion_mnist", "validation", data_dir=data_dir)


def test_other_datasets_read_through_the_same_path_with_mock_data():
    # Mocked sources claim TFDS's own package folder as their dataset's: reading one must leave
    # it alone (a decoded-cache entry there once made every later mock of the dataset empty).
    metadata = os.path.join(os.path.dirname(tfds.testing.__file__), "metadata", "cifar10")
    assert not os.path.exists(metadata), f"{metadata}: left by an earlier run, delete it"
    for _ in range(2):  # the second read sees whatever the first one left
        with tfds.testing.mock_data(num_examples=20):
            split = load_split("cifar10", "train", data_dir="/nonexistent")
        assert split.images.shape == (20, 32, 32, 3) and split.num_classes == 10
        assert split.labels.dtype == np.int32
    assert not os.path.exists(metadata)
