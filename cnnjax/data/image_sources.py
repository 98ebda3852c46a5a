"""Random access to encoded images for the streaming pipeline (cnnjax/data/imagenet.py):
a class-per-directory image folder, or any TFDS image classification dataset read without
decoding (ImageNet, Imagenette, ...)."""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from cnnjax.data.sources import (
    NotPrepared,
    default_data_dir,
    open_data_source,
    prepare_once,
    read_errors,
    unreadable,
)
from cnnjax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# What a TFDS dataset that needs a manual download wants in <data_dir>/downloads/manual.
_MANUAL_FILES = {"imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"}


class ImageSource(Protocol):
    """Random access to encoded images: what `ImageBatches` reads."""

    num_classes: int
    class_names: tuple[str, ...]

    def __len__(self) -> int: ...

    def get(self, index: int) -> tuple[bytes, int]:
        """The encoded image (JPEG/PNG bytes) and integer label of example `index`."""
        ...


class ImageFolderSource:
    """Images in `root/<class>/*.{jpg,jpeg,png}` (any case); classes and files sorted by name."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise UserError(f"image folder {root} does not exist: pass a folder of class folders")
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name[0] != ".")
        if not classes:
            raise UserError(
                f"{root} has no class folders: put each class's images in root/<class>/"
            )
        self.paths, labels = [], []
        for label, name in enumerate(classes):
            folder = os.path.join(root, name)
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
            self.paths += [os.path.join(folder, f) for f in files]
            labels += [label] * len(files)
        if not self.paths:
            raise UserError(f"the class folders of {root} hold no .jpg, .jpeg or .png images")
        self.labels = np.array(labels, np.int32)
        self.class_names, self.num_classes = tuple(classes), len(classes)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> tuple[bytes, int]:
        with open(self.paths[index], "rb") as f:
            return f.read(), int(self.labels[index])


class TfdsImageSource:
    """A TFDS image classification split (features 'image' and 'label'), images left encoded.

    Reads through `tfds.data_source` (array_record, no TensorFlow) with `SkipDecoding` on the
    image, so a record costs a file read and a proto parse, and the JPEG bytes go to
    `ImageBatches` as stored. With `download=True` a dataset that is not prepared yet is
    prepared as array_record (which needs TensorFlow once: the stock builders use it).
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None, download: bool = False):
        import tensorflow_datasets as tfds  # ~1 s to import: only when data is needed

        data_dir = data_dir or default_data_dir()
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except ValueError as error:  # tfds' DatasetNotFoundError
            raise UserError(
                f"unknown TFDS dataset {name!r} ({str(error).splitlines()[0]}): use a name from "
                "tfds.list_builders() such as 'imagenet2012' or 'imagenette'"
            ) from None
        features = builder.info.features
        if (
            "image" not in features
            or "label" not in features
            or not hasattr(features["label"], "num_classes")
        ):
            raise UserError(
                f"{name!r} is not an image classification dataset: it needs the TFDS "
                "features 'image' and 'label' (a ClassLabel)"
            )
        decoders = {"image": tfds.decode.SkipDecoding()}  # the stored JPEG/PNG bytes
        try:
            self._source = open_data_source(tfds, name, split, data_dir, decoders)
        except NotPrepared:
            if not download:
                raise _not_prepared(name, data_dir, builder) from None
            prepare_once(
                name,
                data_dir,
                lambda: tfds.builder(name, data_dir=data_dir, file_format="array_record"),
            )
            self._source = open_data_source(tfds, name, split, data_dir, decoders)
        self.num_classes = features["label"].num_classes
        self.class_names = tuple(features["label"].names)
        self._where = (name, data_dir, builder.data_dir)  # for the error of a damaged file

    def __len__(self) -> int:
        return len(self._source)

    def get(self, index: int) -> tuple[bytes, int]:
        try:
            record = self._source[index]
        except read_errors() as error:  # records are read lazily: damage shows up here
            raise unreadable(*self._where, error) from None
        return bytes(record["image"]), int(record["label"])


def _not_prepared(name: str, data_dir: str, builder) -> UserError:
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        files = _MANUAL_FILES.get(name.split("/")[0].split(":")[0], "the files its TFDS page names")
        manual_dir = os.path.join(data_dir, "downloads", "manual")
        return UserError(
            f"dataset {name!r} is not prepared in {data_dir}: place {files} in {manual_dir} and "
            "pass download=True (TFDS prepares it from there)"
        )
    return UserError(
        f"dataset {name!r} is not prepared in {data_dir}: pass download=True with internet "
        "access (TFDS downloads and prepares it)"
    )
