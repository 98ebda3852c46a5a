"""Datasets through TFDS: the real Fashion-MNIST offline, other names, and missing data."""

import os
import shutil
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


def test_prepares_offline_from_a_source_dir(tmp_path):
    source = tmp_path / "idx"
    shutil.copytree(DEBIAN_DIR, source)
    data_dir = tmp_path / "tfds"
    split = load_split("fashion_mnist", "test", data_dir=str(data_dir), source_dir=str(source))
    assert split.images.shape == (10_000, 28, 28, 1)
    # What the stock TFDS reader (no cnnjax) sees in that directory is the same dataset.
    stock = tfds.data_source("fashion_mnist", split="test", data_dir=str(data_dir))
    np.testing.assert_array_equal(stock[0]["image"], split.images[0])
    assert (data_dir / "fashion_mnist" / "3.0.1" / "dataset_info.json").exists()


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(UserError, match="unknown dataset 'imagenet9': choose one of fashion_mnist"):
        load_split("imagenet9", "train")
    assert {"fashion_mnist", "mnist", "cifar10", "cifar100"} <= set(KNOWN_DATASETS)


def test_missing_dataset_fails_fast_with_the_fix(tmp_path):
    start = time.perf_counter()
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist.*CNNJAX_DATA"):
        load_split("fashion_mnist", "train", data_dir=str(tmp_path), source_dir=str(tmp_path))
    with pytest.raises(UserError, match="cifar10.*--config.data.download=True"):
        load_split("cifar10", "train", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 5.0


def test_bad_split_fails_clearly(data_dir):
    with pytest.raises(UserError, match="split 'validation' of 'fashion_mnist' is not valid"):
        load_split("fashion_mnist", "validation", data_dir=data_dir)


def test_other_datasets_read_through_the_same_path_with_mock_data():
    with tfds.testing.mock_data(num_examples=20):
        split = load_split("cifar10", "train", data_dir="/nonexistent")
    assert split.images.shape == (20, 32, 32, 3) and split.num_classes == 10
    assert split.labels.dtype == np.int32
