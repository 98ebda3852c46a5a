"""Bad config values and damaged data files: each is one UserError naming the problem and its
fix, raised before the run writes anything; the shared data is never damaged (copies are)."""

import gzip
import os
import re
import shutil

import numpy as np
import pytest
from conftest import RECIPE, run_cnnjax
from test_cli import _assert_one_line_error, _snapshot

from cnnjax.config_base import get_base_config
from cnnjax.config_loader import load_config
from cnnjax.data import decoded_cache, load_split
from cnnjax.data.idx_builders import IDX_FILES
from cnnjax.errors import UserError
from cnnjax.train import train_and_evaluate
from cnnjax.train.config_checks import validate_config

IDX_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
NAN, INF = float("nan"), float("1e400")  # 1e400 overflows to inf, as on the command line


def _fix(key: str, bound: str, value) -> str:
    return f"config.{key} must be {bound} (got {value}): set config.{key}=..."


BAD_CONFIGS = [
    (
        {"optimizer.learning_rate": NAN},
        _fix("optimizer.learning_rate", "a finite number > 0", "nan"),
    ),
    (
        {"optimizer.learning_rate": INF},
        _fix("optimizer.learning_rate", "a finite number > 0", "inf"),
    ),
    (
        {"optimizer.weight_decay": NAN},
        _fix("optimizer.weight_decay", "a finite number >= 0", "nan"),
    ),
    (
        {"optimizer.warmup_epochs": NAN},
        _fix("optimizer.warmup_epochs", "a finite number >= 0", "nan"),
    ),
    ({"optimizer.momentum": 1.0}, _fix("optimizer.momentum", "in [0, 1)", 1.0)),
    ({"optimizer.momentum": NAN}, _fix("optimizer.momentum", "in [0, 1)", "nan")),
    ({"optimizer.grad_clip_norm": -1.0}, _fix("optimizer.grad_clip_norm", ">= 0", -1.0)),
    (
        {"optimizer.grad_clip_norm": INF},
        _fix("optimizer.grad_clip_norm", "a finite number >= 0", "inf"),
    ),
    ({"optimizer.label_smoothing": NAN}, _fix("optimizer.label_smoothing", "in [0, 1)", "nan")),
    ({"model.dropout_rate": NAN}, _fix("model.dropout_rate", "in [0, 1)", "nan")),
    ({"train.ema_decay": INF}, _fix("train.ema_decay", "in [0, 1)", "inf")),
    ({"optimizer.decay_factor": NAN}, _fix("optimizer.decay_factor", "a finite number > 0", "nan")),
    ({"optimizer.decay_factor": 0.0}, _fix("optimizer.decay_factor", "> 0", 0.0)),
    (
        {"optimizer.decay_epochs": (30, NAN)},
        "config.optimizer.decay_epochs entries must be finite numbers >= 0 (got (30, nan)): set "
        "config.optimizer.decay_epochs='(30, 60)'",
    ),
    (
        {"optimizer.schedule": "step", "optimizer.decay_factor": 10.0},
        "config.optimizer.decay_factor=10.0 > 1 raises the learning rate at each of "
        "optimizer.decay_epochs: set config.optimizer.decay_factor=... to at most 1, or "
        "config.optimizer.allow_lr_increase=True if that is meant",
    ),
    (
        {"optimizer.warmup_epochs": 12.0},
        "config.optimizer.warmup_epochs=12.0 is longer than the run (config.train.epochs=10, "
        "train.steps unset), so the learning rate never reaches its peak: set "
        "config.optimizer.warmup_epochs=... to at most 10",
    ),
]


def _config(settings: dict):
    config = get_base_config()
    config.update_from_flattened_dict(settings)
    return config


@pytest.mark.parametrize("settings, message", BAD_CONFIGS)
def test_a_bad_config_value_is_refused_with_its_fix(settings, message):
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        validate_config(_config(settings))


def test_settings_that_make_sense_still_pass():
    # In the base config, so that --config.optimizer.allow_lr_increase=True is a valid override.
    assert get_base_config().optimizer.allow_lr_increase is False
    for settings in (
        # What the divergence tests (test_run_faults.py) ask for on purpose.
        {
            "optimizer.schedule": "step",
            "optimizer.decay_factor": 1e36,
            "optimizer.allow_lr_increase": True,
        },
        # With train.steps set, the run's length in epochs is unknown before the data is read.
        {"optimizer.warmup_epochs": 12.0, "train.steps": 100},
        {"optimizer.warmup_epochs": 10.0},  # warm-up over the whole run
        {"optimizer.decay_factor": 10.0},  # not a step schedule: the factor is unused
    ):
        validate_config(_config(settings))


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _source_copy(folder, damaged: bytes | None = None) -> str:
    """The four IDX files copied into `folder`, the training images replaced by `damaged`."""
    os.makedirs(folder)
    for name in IDX_FILES:
        if name == TRAIN_IMAGES and damaged is not None:
            (folder / name).write_bytes(damaged)
        else:
            shutil.copy(os.path.join(IDX_DIR, name), folder / name)
    return str(folder)


def _real_train_images() -> bytes:
    with open(os.path.join(IDX_DIR, TRAIN_IMAGES), "rb") as f:
        return f.read()


def _gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# Each damage of the training images (read first) with the exception that names it.
DAMAGED_IDX = {
    "truncated": (
        lambda: _real_train_images()[:1_000_000],
        "EOFError: Compressed file ended before the end-of-stream marker was reached",
    ),
    "not_gzip": (lambda: b"not a gzip file", "BadGzipFile: Not a gzipped file (b'no')"),
    "bad_deflate": (
        lambda: _gzipped(b"")[:10] + b"\xff" * 64,  # a gzip header, then an invalid block type
        "error: Error -3 while decompressing data: invalid block type",
    ),
    "short_data": (
        lambda: _gzipped(bytes([0, 0, 8, 3]) + np.array([60000, 28, 28], ">u4").tobytes() + b"x"),
        "ValueError: {folder}/train-images-idx3-ubyte.gz holds 1 values, its IDX header says "
        "(60000, 28, 28)",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_IDX))
def test_a_damaged_idx_file_is_one_error_and_prepares_nothing(tmp_path, damage):
    make_bytes, cause = DAMAGED_IDX[damage]
    source_dir = _source_copy(tmp_path / "idx", make_bytes())
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(UserError) as error:
        load_split("fashion_mnist", "test", data_dir=data_dir, source_dir=source_dir)
    assert str(error.value) == (
        f"cannot prepare 'fashion_mnist' from the IDX files in {source_dir} "
        f"({cause.format(folder=source_dir)}): a file is truncated or corrupt; reinstall them "
        "(apt-get install --reinstall dataset-fashion-mnist) or point config.data.source_dir "
        "at good copies"
    )
    # TFDS removed its temporary folder: nothing looks prepared.
    assert os.listdir(os.path.join(data_dir, "fashion_mnist")) == []


def test_good_files_prepare_after_a_failed_preparation(tmp_path):
    data_dir = str(tmp_path / "tfds")
    damaged = _source_copy(tmp_path / "idx", DAMAGED_IDX["truncated"][0]())
    with pytest.raises(UserError, match="a file is truncated or corrupt"):
        load_split("fashion_mnist", "test", data_dir=data_dir, source_dir=damaged)
    # Tiny good files (6 training, 4 test images): a full preparation would take ~20 s.
    good = tmp_path / "good"
    good.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 28, 28), np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], np.uint8)
    for prefix, rows in (("train", slice(0, 6)), ("t10k", slice(6, 10))):
        _write_idx(good / f"{prefix}-images-idx3-ubyte.gz", images[rows])
        _write_idx(good / f"{prefix}-labels-idx1-ubyte.gz", labels[rows])
    test = load_split("fashion_mnist", "test", data_dir=data_dir, source_dir=str(good))
    # TFDS shuffles the examples by key: compare in label order (the test labels differ).
    order = np.argsort(test.labels)
    np.testing.assert_array_equal(test.labels[order], [2, 3, 5, 6])
    np.testing.assert_array_equal(test.images[order, ..., 0], images[[6, 9, 8, 7]])


def _prepared_copy(data_dir: str, tmp_path) -> tuple[str, str]:
    """The test split of the prepared dataset copied into tmp_path (no decoded cache, no train
    split); returns the copy's data_dir and dataset folder."""
    source = os.path.join(data_dir, "fashion_mnist", "3.0.1")
    copy_dir = str(tmp_path / "tfds")
    folder = os.path.join(copy_dir, "fashion_mnist", "3.0.1")
    os.makedirs(folder)
    for name in os.listdir(source):
        if name.endswith((".json", ".txt")) or name.startswith("fashion_mnist-test."):
            shutil.copy(os.path.join(source, name), folder)
    return copy_dir, folder


def _truncate(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize(
    "file, size, cause",
    [
        ("fashion_mnist-test.array_record-00000-of-00001", 3_000_000, r"RuntimeError: .*"),
        ("fashion_mnist-test.array_record-00000-of-00001", 0, r"RuntimeError: .*64KB.*"),
        ("dataset_info.json", 600, r"ParseError: .*Failed to load JSON.*"),
    ],
)
def test_a_damaged_prepared_dataset_is_one_error_naming_the_folder(
    tmp_path, data_dir, file, size, cause
):
    copy_dir, folder = _prepared_copy(data_dir, tmp_path)
    _truncate(os.path.join(folder, file), size)
    # The whole dataset's folder when even its description cannot be read.
    named = folder if file.endswith("array_record-00000-of-00001") else os.path.dirname(folder)
    expected = (
        f"the prepared dataset 'fashion_mnist' in {re.escape(copy_dir)} cannot be read "
        f"\\({cause}\\): delete {re.escape(named)} so that it is prepared again"
    )
    before = sorted(os.listdir(folder))
    with pytest.raises(UserError, match=f"^{expected}$"):
        load_split("fashion_mnist", "test", data_dir=copy_dir, source_dir=str(tmp_path / "none"))
    assert sorted(os.listdir(folder)) == before  # nothing deleted, no cache entry written


def test_a_damaged_record_read_by_the_streaming_source_is_one_error(tmp_path, data_dir):
    from cnnjax.data.image_sources import TfdsImageSource

    copy_dir, folder = _prepared_copy(data_dir, tmp_path)
    _truncate(os.path.join(folder, "fashion_mnist-test.array_record-00000-of-00001"), 3_000_000)
    source = TfdsImageSource("fashion_mnist", "test", data_dir=copy_dir)
    with pytest.raises(UserError, match=f"cannot be read .*: delete {re.escape(folder)} so"):
        source.get(0)


def test_a_damaged_decoded_cache_entry_is_decoded_again(tmp_path):
    path = str(tmp_path / "entry.npz")
    decoded_cache.save(path, np.zeros((100, 28, 28, 1), np.uint8), np.arange(100))
    _truncate(path, os.path.getsize(path) // 2)  # a zip without its central directory
    assert decoded_cache.load(path) is None


def _workdir(tmp_path) -> str:
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me")
    return str(workdir)


@pytest.mark.parametrize(
    "recipe, message",
    [
        (
            "def get_config(arg=None):\n    config = dict(seed=0)\n",  # forgot the return
            "cannot load --config {path}: get_config() returned NoneType, not an "
            "ml_collections.ConfigDict",
        ),
        (
            "import ml_collections\n\nCONFIG = ml_collections.ConfigDict()\n",
            "{path} defines no get_config(): a recipe file defines get_config(arg=None) "
            "returning an ml_collections.ConfigDict (see configs/lenet5_fashion_mnist.py)",
        ),
    ],
    ids=["returns_none", "no_get_config"],
)
def test_a_broken_recipe_file_is_one_line(tmp_path, recipe, message):
    path = tmp_path / "recipe.py"
    path.write_text(recipe)
    workdir = _workdir(tmp_path)
    before = _snapshot(workdir)
    result = run_cnnjax("train", f"--config={path}:smoke", f"--workdir={workdir}")
    _assert_one_line_error(result, f"cnnjax train: error: {message.format(path=path)}")
    assert _snapshot(workdir) == before


def test_a_truncated_idx_file_stops_training_with_one_error(tmp_path):
    source_dir = _source_copy(tmp_path / "idx", DAMAGED_IDX["truncated"][0]())
    workdir = _workdir(tmp_path)
    before = _snapshot(workdir)
    config = load_config(
        f"{RECIPE}:smoke",
        {"data.data_dir": str(tmp_path / "tfds"), "data.source_dir": source_dir},
    )
    with pytest.raises(UserError) as error:
        train_and_evaluate(config, workdir)
    assert str(error.value).startswith(
        f"cannot prepare 'fashion_mnist' from the IDX files in {source_dir} "
        "(EOFError: Compressed file ended before the end-of-stream marker was reached)"
    )
    assert _snapshot(workdir) == before
