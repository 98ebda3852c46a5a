"""Datasets by TFDS name, read whole into memory: `load_split(name, split) -> Split`.

Reading goes through `tfds` array_record data sources, which need no TensorFlow. A dataset that
is not prepared yet is prepared offline from local IDX files where a local builder exists
(Fashion-MNIST from Debian's `dataset-fashion-mnist`, MNIST from a folder the user names), or
downloaded by TFDS when the user allows it; otherwise the error says how to get it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os

import numpy as np

from cnnjax import fast_paths
from cnnjax.data import decoded_cache
from cnnjax.errors import UserError, describe

KNOWN_DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100")
# Where Debian's package dataset-fashion-mnist installs the IDX files.
DEFAULT_SOURCE_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
SOURCE_DIR_ENV = "CNNJAX_DATA_SOURCE_DIR"
READ_CHUNK = 10_000  # records decoded per data-source call


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in memory."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]
    num_classes: int


def default_data_dir() -> str:
    """TFDS's data directory: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def resolve_source_dir(name: str, source_dir: str | None) -> str | None:
    """The folder of local source files: the argument, $CNNJAX_DATA_SOURCE_DIR, or Debian's
    (`~` expanded: a quoted `--config.data.source_dir=~/mnist` reaches us unexpanded)."""
    folder = source_dir or os.environ.get(SOURCE_DIR_ENV) or DEFAULT_SOURCE_DIRS.get(name)
    return os.path.expanduser(folder) if folder else None


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    source_dir: str | None = None,
    download: bool = False,
) -> Split:
    """Reads split `split` (a TFDS split string, e.g. 'train' or 'test[:10%]') of `name`."""
    import tensorflow_datasets as tfds  # ~1 s to import: only when data is needed

    if name not in KNOWN_DATASETS:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(KNOWN_DATASETS)}")
    data_dir = data_dir or default_data_dir()
    try:
        source = open_data_source(tfds, name, split, data_dir)
    except NotPrepared:
        _prepare(name, data_dir, source_dir, download)
        source = open_data_source(tfds, name, split, data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    num_classes = builder.info.features["label"].num_classes
    cache = _cache_entry(source, data_dir) if fast_paths.enabled_by_environment() else None
    cached = decoded_cache.load(cache)
    if cached is not None:
        return Split(*cached, num_classes)
    try:
        split = _read_all(source, num_classes)
    except read_errors() as error:
        raise unreadable(name, data_dir, builder.data_dir, error) from None
    decoded_cache.save(cache, split.images, split.labels)
    return split


def _cache_entry(source, data_dir: str) -> str | None:
    """The decoded-cache entry of `source` when it reads a dataset prepared in `data_dir`, else
    None. tfds.testing.mock_data's sources claim TFDS's own package folder as their dataset's
    (testing/metadata/NAME/VERSION): an entry written there would create that folder, which later
    mocks take for the dataset's real metadata (with no splits), so reading the mock would fail."""
    path = decoded_cache.cache_path(source)
    if path is None:
        return None
    inside = os.path.realpath(path).startswith(os.path.realpath(data_dir) + os.sep)
    return path if inside else None


class NotPrepared(Exception):
    """The dataset is not prepared in the data directory yet."""


def read_errors() -> tuple[type[Exception], ...]:
    """What reading a damaged prepared dataset raises: array_record reports a truncated or
    corrupt file as RuntimeError, a damaged record fails to parse (protobuf) or to decode (PIL's
    OSError / ValueError), a damaged dataset_info.json fails to parse (protobuf's json_format)."""
    from google.protobuf import json_format, message

    return (RuntimeError, OSError, EOFError, ValueError, message.Error, json_format.Error)


def unreadable(name: str, data_dir: str, folder: str, error: BaseException) -> UserError:
    """The one-line error for a prepared dataset that cannot be read; deleting `folder` (never
    done here: it may be the user's only copy) makes the next run prepare it again."""
    return UserError(
        f"the prepared dataset {name!r} in {data_dir} cannot be read ({describe(error)}): "
        f"delete {folder} so that it is prepared again"
    )


def open_data_source(tfds, name: str, split: str, data_dir: str, decoders=None):
    """TFDS's random-access source of a prepared split (also what tfds.testing.mock_data fakes);
    NotPrepared when the dataset is missing. `decoders`, e.g. {"image": SkipDecoding()}, keeps
    features encoded."""
    try:
        return tfds.data_source(
            name, split=split, data_dir=data_dir, download=False, decoders=decoders
        )
    except (NotImplementedError, AssertionError, FileNotFoundError) as error:
        if not tfds.builder(name, data_dir=data_dir).is_prepared():
            raise NotPrepared from error
        raise UserError(
            f"dataset {name!r} in {data_dir} was prepared as TFRecord, which cannot be read "
            "without TensorFlow: prepare it as array_record into another data_dir"
        ) from None
    except (ValueError, KeyError) as error:
        raise UserError(
            f"split {split!r} of {name!r} is not valid ({error}): use e.g. 'train', 'test' or "
            "'train[:10%]'"
        ) from None
    except read_errors() as error:  # a damaged dataset_info.json: the builder cannot be made
        folder = os.path.join(data_dir, name.split(":")[0])
        raise unreadable(name, data_dir, folder, error) from None


def prepare_once(name: str, data_dir: str, make_builder, *, downloads: bool = True) -> None:
    """Runs `make_builder().download_and_prepare()` unless `name` is prepared in `data_dir`,
    one process at a time; TFDS's failures become one-line UserErrors. `downloads` says whether
    the builder downloads (an OSError is then a network problem) or reads local files."""
    os.makedirs(data_dir, exist_ok=True)
    safe_name = name.replace("/", "_").replace(":", "_")
    # Concurrent runs of a sweep may all find the dataset missing: the first prepares it, the
    # others wait and then read it (TFDS writes into a temporary folder and renames it at the end,
    # so an interrupted preparation never looks prepared).
    with open(os.path.join(data_dir, f".{safe_name}.prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        import tensorflow_datasets as tfds

        if tfds.builder(name, data_dir=data_dir).is_prepared():
            return
        try:
            make_builder().download_and_prepare()
        except ModuleNotFoundError as error:
            if "tensorflow" not in str(error):
                raise
            raise UserError(
                f"preparing {name!r} with its stock TFDS builder needs TensorFlow: "
                "pip install -e '.[tf]' (only the preparation needs it)"
            ) from None
        except AssertionError as error:  # TFDS's check of the manual download folder
            raise UserError(f"cannot prepare {name!r}: {str(error).splitlines()[0]}") from None
        except OSError as error:
            if not downloads:  # local sources are checked by their builder: this is the output
                raise UserError(
                    f"cannot prepare {name!r} in {data_dir} ({describe(error)}): check that the "
                    "folder is writable and has free space"
                ) from None
            raise UserError(
                f"could not download {name!r} ({type(error).__name__}): check the internet "
                f"connection, or prepare it elsewhere and copy it into {data_dir}"
            ) from None


def _read_all(source, num_classes: int) -> Split:
    images, labels = [], []
    for start in range(0, len(source), READ_CHUNK):
        keys = list(range(start, min(start + READ_CHUNK, len(source))))
        try:
            records = source.__getitems__(keys)  # batched reads: twice as fast as one by one
        except TypeError:  # the source of tfds.testing.mock_data has no working __getitems__
            records = [source[key] for key in keys]
        images.append(np.stack([r["image"] for r in records]))
        labels.append(np.array([r["label"] for r in records], np.int32))
    if not images:
        raise UserError("the requested split is empty: check config.data.*_split")
    return Split(np.concatenate(images), np.concatenate(labels), num_classes)


def _prepare(name: str, data_dir: str, source_dir: str | None, download: bool) -> None:
    """Prepares `name` in `data_dir` from local files or by download; one process at a time."""
    from cnnjax.data.idx_builders import IDX_FILES, LOCAL_BUILDERS

    folder = resolve_source_dir(name, source_dir)
    missing = [f for f in IDX_FILES if not os.path.exists(os.path.join(folder or "", f))]
    local = name in LOCAL_BUILDERS and folder is not None and not missing
    if not local and not download:
        raise _not_found(name, data_dir, folder, missing)

    def make_builder():
        import tensorflow_datasets as tfds

        if local:
            return LOCAL_BUILDERS[name](
                source_dir=folder, data_dir=data_dir, file_format="array_record"
            )
        return tfds.builder(name, data_dir=data_dir, file_format="array_record")

    prepare_once(name, data_dir, make_builder, downloads=not local)


def _not_found(name: str, data_dir: str, folder: str | None, missing: list[str]) -> UserError:
    from cnnjax.data.idx_builders import IDX_FILES

    if name == "mnist" and folder is not None:  # the user named a folder: say what it lacks
        lacks = "does not exist" if not os.path.isdir(folder) else f"lacks {', '.join(missing)}"
        return UserError(
            f"dataset 'mnist' is not prepared in {data_dir} and its source folder {folder} "
            f"{lacks}: set config.data.source_dir (or {SOURCE_DIR_ENV}) to a folder holding "
            f"{', '.join(IDX_FILES)}, or pass config.data.download=True with internet access"
        )
    if name == "fashion_mnist":
        return UserError(
            f"dataset 'fashion_mnist' is not prepared in {data_dir} and its IDX files are not in "
            f"{folder}: run `apt-get install dataset-fashion-mnist`, set {SOURCE_DIR_ENV} (or "
            "config.data.source_dir) to a folder holding them, or pass "
            "config.data.download=True with internet access"
        )
    local_hint = (
        f"set {SOURCE_DIR_ENV} (or config.data.source_dir) to a folder with its IDX .gz files, or "
        if name == "mnist"
        else ""
    )
    return UserError(
        f"dataset {name!r} is not prepared in {data_dir}: {local_hint}pass "
        "config.data.download=True with internet access (TFDS downloads and prepares it)"
    )
