"""The decoded-split cache returns exactly what decoding the TFDS records returns."""

import os

import numpy as np
import pytest
from conftest import TEST_DATA_DIR

from cnnjax import fast_paths
from cnnjax.data import decoded_cache, load_split
from cnnjax.data import sources as data_sources

SPLIT = "test[:300]"


def _decoding_only(monkeypatch):
    monkeypatch.setenv(fast_paths.ENV_VARIABLE, "0")
    return load_split("fashion_mnist", SPLIT, data_dir=TEST_DATA_DIR)


def _cache_file(monkeypatch, split: str = SPLIT) -> str:
    """The cache entry of `split`, found by spying on cache_path."""
    seen = []
    original = decoded_cache.cache_path

    def spy(source):
        seen.append(original(source))
        return seen[-1]

    monkeypatch.setattr(decoded_cache, "cache_path", spy)
    load_split("fashion_mnist", split, data_dir=TEST_DATA_DIR)
    monkeypatch.setattr(decoded_cache, "cache_path", original)
    return seen[-1]


def test_cached_split_equals_decoded_split(monkeypatch, data_dir):
    decoded = _decoding_only(monkeypatch)
    monkeypatch.setenv(fast_paths.ENV_VARIABLE, "1")
    path = _cache_file(monkeypatch)
    assert path and os.path.exists(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    read_calls = []
    monkeypatch.setattr(
        data_sources, "_read_all", lambda *a: read_calls.append(a) or pytest.fail("decoded")
    )
    cached = load_split(
        "fashion_mnist", SPLIT, data_dir=TEST_DATA_DIR
    )  # from the file: no decoding
    assert not read_calls
    assert cached.images.shape == (300, 28, 28, 1) and cached.images.dtype == np.uint8
    np.testing.assert_array_equal(cached.images, decoded.images)
    np.testing.assert_array_equal(cached.labels, decoded.labels)
    assert cached.num_classes == decoded.num_classes == 10


def test_corrupt_entry_is_decoded_again_and_replaced(monkeypatch, data_dir):
    decoded = _decoding_only(monkeypatch)
    monkeypatch.setenv(fast_paths.ENV_VARIABLE, "1")
    path = _cache_file(monkeypatch)
    with open(path, "wb") as f:
        f.write(b"not an npz file")
    again = load_split("fashion_mnist", SPLIT, data_dir=TEST_DATA_DIR)
    np.testing.assert_array_equal(again.images, decoded.images)
    assert decoded_cache.load(path) is not None  # rewritten whole
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")]


def test_other_splits_get_other_entries_and_fakes_none(monkeypatch, data_dir):
    monkeypatch.setenv(fast_paths.ENV_VARIABLE, "1")
    path = _cache_file(monkeypatch)

    class FakeSource:  # like tfds.testing.mock_data's: no array_record files behind it
        dataset_info = None

    assert decoded_cache.cache_path(FakeSource()) is None
    other = _cache_file(monkeypatch, "test[300:400]")
    assert other != path and os.path.dirname(other) == os.path.dirname(path)
