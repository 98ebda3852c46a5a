"""LeNet-5 on MNIST from the user's four IDX files (configs/lenet5_mnist.py): prepared offline
from a source folder, trained through the Python API, and the one-line error for a missing file.

The IDX files here are tiny stand-ins in MNIST's format (64 training, 32 test images of bars
whose row is the class): MNIST itself is not available offline."""

import gzip
import json
import os
import shutil
import types

import numpy as np
import pytest
from conftest import ROOT

from cnnjax import load_config, train_and_evaluate
from cnnjax.data import AugmentConfig, TrainBatches, load_split
from cnnjax.data.inputs import make_input
from cnnjax.errors import UserError

MNIST_RECIPE = os.path.join(ROOT, "configs", "lenet5_mnist.py")
IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


def _write_idx(path, array: np.ndarray) -> None:
    """A gzipped IDX file (LeCun's format: 0, 0, 8 = unsigned bytes, ndim, big-endian sizes)."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` 28x28 images: class k is a bright bar on rows 2k+4 and 2k+5, over noise."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 10).astype(np.uint8)
    images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        image[2 * label + 4 : 2 * label + 6, 4:24] = 250
    return images, labels


@pytest.fixture(scope="module")
def mnist_files(tmp_path_factory) -> types.SimpleNamespace:
    folder = tmp_path_factory.mktemp("mnist_idx")
    written = {"train": _digits(64, seed=0), "test": _digits(32, seed=1)}
    for (split, kind), name in IDX_NAMES.items():
        _write_idx(folder / name, written[split][kind == "labels"])
    return types.SimpleNamespace(folder=str(folder), written=written)


@pytest.fixture(scope="module")
def mnist_data_dir(mnist_files, tmp_path_factory) -> str:
    """A TFDS data directory where `mnist_files` are prepared as 'mnist' (by the first test)."""
    return str(tmp_path_factory.mktemp("tfds"))


def _smoke_config(mnist_files, data_dir: str, **overrides):
    settings = {"data.data_dir": data_dir, "data.source_dir": mnist_files.folder}
    # The whole stand-in splits: TFDS refuses the smoke variant's [:1024] of 64 examples.
    settings.update({"data.train_split": "train", "data.eval_split": "test", **overrides})
    return load_config(f"{MNIST_RECIPE}:smoke", settings)


def _same_examples(split, images: np.ndarray, labels: np.ndarray) -> None:
    """`split` holds exactly these examples (TFDS stores them in its own shuffled order)."""
    assert split.images.shape == (len(labels), 28, 28, 1) and split.num_classes == 10

    def ordered(imgs, labs):
        return sorted(zip(labs.tolist(), (i.tobytes() for i in imgs), strict=True))

    assert ordered(split.images[..., 0], split.labels) == ordered(images, labels)


def test_smoke_recipe_prepares_mnist_from_the_idx_files_and_trains(
    mnist_files, mnist_data_dir, tmp_path
):
    data_dir = mnist_data_dir
    config = _smoke_config(mnist_files, data_dir)
    assert config.data.name == "mnist" and config.data.batch_size == 32
    workdir = tmp_path / "run"
    results = train_and_evaluate(config, str(workdir)).results
    # 64 examples in batches of 32 for the smoke variant's 2 epochs; all 32 test examples.
    assert results["steps"] == 4 and results["epochs"] == 2.0
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["name"] == "mnist" and saved["data"]["source_dir"] == mnist_files.folder
    # What the run trained on: the written examples, prepared once into data_dir.
    assert os.path.isdir(os.path.join(data_dir, "mnist", "3.0.1"))
    for split in ("train", "test"):
        _same_examples(load_split("mnist", split, data_dir=data_dir), *mnist_files.written[split])


def test_a_missing_idx_file_is_one_line_naming_it(mnist_files, tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in list(IDX_NAMES.values())[:3]:  # no t10k-labels-idx1-ubyte.gz
        shutil.copy(os.path.join(mnist_files.folder, name), folder / name)
    monkeypatch.setenv("HOME", str(tmp_path))  # `~` in a source_dir is the user's home
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(UserError) as error:
        load_split("mnist", "train", data_dir=data_dir, source_dir="~/idx")
    message = str(error.value)
    assert "\n" not in message
    assert (
        f"source folder {folder} lacks t10k-labels-idx1-ubyte.gz: set config.data.source_dir"
        in (message)
    )
    with pytest.raises(UserError, match=f"source folder {tmp_path}/nowhere does not exist: set"):
        load_split("mnist", "train", data_dir=data_dir, source_dir=str(tmp_path / "nowhere"))
    assert not os.path.exists(os.path.join(data_dir, "mnist"))  # nothing half-prepared


def test_pca_colour_of_the_recipe_is_a_brightness_jitter_from_the_training_split(
    mnist_files, mnist_data_dir
):
    config = _smoke_config(mnist_files, mnist_data_dir, **{"data.augment.pca_color_std": 0.1})
    run_input = make_input(config)
    batch = next(run_input.train_batches(0))
    images = mnist_files.written["train"][0]
    # One channel: the eigenvalue is the variance of x / 255 over the training split.
    assert run_input.pca.eigenvalues[0] == pytest.approx(np.var(images / 255.0), rel=1e-12)
    plain = TrainBatches(
        run_input.train_split, batch_size=32, seed=0, augment=AugmentConfig()
    ).batch_at(0)
    np.testing.assert_array_equal(batch["label"], plain["label"])
    # Each image moves by one whole number of levels (where nothing clips at 0 or 255).
    shift = batch["image"].astype(int) - plain["image"]  # [32, 28, 28, 1]
    inside = (plain["image"] > 20) & (plain["image"] < 235)
    levels = [np.unique(s[m]) for s, m in zip(shift, inside, strict=True)]
    assert all(len(level) == 1 for level in levels)
    alphas = np.random.default_rng([0, 0, 0, 1]).normal(0.0, 0.1, (32, 1))
    by_formula = np.rint(255 * alphas[:, 0] * run_input.pca.eigenvalues[0])
    np.testing.assert_array_equal([level[0] for level in levels], by_formula)
    assert np.count_nonzero(by_formula) >= 16 and np.abs(by_formula).max() <= 6
