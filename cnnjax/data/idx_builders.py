"""TFDS builders that prepare MNIST-format datasets from local IDX files, without TensorFlow.

They subclass the stock TFDS builders and keep their name, version and features, so the result
is the dataset that `tfds.data_source('fashion_mnist', data_dir=...)` expects; only where the
examples come from differs (local files instead of a download). Images are handed to TFDS as
PIL images, which it PNG-encodes with Pillow: numpy images would need TensorFlow to encode.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist

from cnnjax.errors import UserError, describe

# The four files of the IDX distribution, per split prefix.
SPLIT_PREFIXES = {"train": "train", "test": "t10k"}
IDX_FILES = tuple(
    f"{prefix}-{kind}-ubyte.gz"
    for prefix in SPLIT_PREFIXES.values()
    for kind in ("images-idx3", "labels-idx1")
)
# What a truncated or corrupt .gz raises: EOFError (cut short), gzip.BadGzipFile (an OSError: not
# gzip, or a failed CRC), zlib.error (damaged deflate data), ValueError (read_idx's checks).
SOURCE_ERRORS = (EOFError, OSError, zlib.error, ValueError)


def read_idx(path: str) -> np.ndarray:
    """Reads a gzipped IDX file (LeCun's format: magic, dimension sizes, uint8 data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":  # 0x08: unsigned byte data
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} ends inside its IDX header")
    shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(f"{path} holds {data.size} values, its IDX header says {shape}")
    return data.reshape(shape)


class _IdxFilesMixin:
    """Split generators that read `<source_dir>/{train,t10k}-*-ubyte.gz`."""

    # How to get good copies of the files, in the error for a damaged one.
    REPAIR_HINT = "point config.data.source_dir at good copies"

    def __init__(self, *, source_dir: str, **kwargs):
        self._source_dir = source_dir
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return [
            tfds.core.SplitGenerator(
                name=split, gen_kwargs={"prefix": os.path.join(self._source_dir, prefix)}
            )
            for split, prefix in SPLIT_PREFIXES.items()
        ]

    def _generate_examples(self, prefix: str):
        # Read whole before the first example: a damaged file fails before anything is written
        # (TFDS then removes its temporary folder, so nothing looks prepared).
        try:
            images = read_idx(prefix + "-images-idx3-ubyte.gz")  # [N, 28, 28]
            labels = read_idx(prefix + "-labels-idx1-ubyte.gz")  # [N]
            if images.ndim != 3 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{prefix}-*-ubyte.gz hold images {images.shape} and labels {labels.shape}"
                )
        except SOURCE_ERRORS as error:
            raise UserError(
                f"cannot prepare {self.name!r} from the IDX files in {self._source_dir} "
                f"({describe(error)}): a file is truncated or corrupt; {self.REPAIR_HINT}"
            ) from None
        # The index is the key, as in the stock builders, so the shuffled order is TFDS's own.
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": PIL.Image.fromarray(image, mode="L"), "label": int(label)}


class LocalFashionMNIST(_IdxFilesMixin, mnist.FashionMNIST, skip_registration=True):
    name = "fashion_mnist"
    REPAIR_HINT = (
        "reinstall them (apt-get install --reinstall dataset-fashion-mnist) or point "
        "config.data.source_dir at good copies"
    )


class LocalMNIST(_IdxFilesMixin, mnist.MNIST, skip_registration=True):
    name = "mnist"


LOCAL_BUILDERS = {"fashion_mnist": LocalFashionMNIST, "mnist": LocalMNIST}
