"""Decoded splits kept beside the prepared TFDS dataset, so that later runs skip decoding.

Reading Fashion-MNIST's training split through TFDS decodes 60,000 PNG images (about 13 s on
2 CPU cores); the decoded arrays (47 MB) load from an .npz file in well under a second. The key
is the records the split reads: the dataset's full name (with version), each array_record file
with its record range, size and modification time, so a re-prepared dataset or another split
gets its own entry. Only real array_record sources are cached (not tfds.testing.mock_data's),
and an unreadable entry is read from TFDS again and rewritten. A fast path
(cnnjax/fast_paths.py): CNNJAX_FAST_PATHS=0 turns it off.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile

import numpy as np

FOLDER = "cnnjax_decoded"


def cache_path(source) -> str | None:
    """Where `source`'s decoded split is kept, or None when it cannot be identified."""
    read_instructions = getattr(getattr(source, "data_source", None), "_read_instructions", None)
    info = getattr(source, "dataset_info", None)
    if not read_instructions or info is None or not getattr(info, "data_dir", None):
        return None
    parts = [info.full_name]
    try:
        for instruction in read_instructions:
            stat = os.stat(instruction.filename)
            parts.append(
                f"{instruction.filename}:{instruction.start}:{instruction.end}:"
                f"{stat.st_size}:{stat.st_mtime_ns}"
            )
    except (OSError, AttributeError):
        return None
    key = hashlib.sha1("\n".join(parts).encode()).hexdigest()[:20]
    return os.path.join(info.data_dir, FOLDER, f"{key}.npz")


def load(path: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, labels) stored at `path`, or None when absent or unreadable."""
    if path is None or not os.path.exists(path):
        return None
    try:
        with np.load(path) as stored:
            return stored["images"], stored["labels"]
    # A truncated or damaged .npz is a zip that fails its own checks (BadZipFile: no central
    # directory, or a member's CRC-32), which is none of the other errors.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a partial or foreign file: decoded again and replaced


def save(path: str | None, images: np.ndarray, labels: np.ndarray) -> None:
    """Writes atomically (other processes never see half a file); a read-only folder is fine."""
    if path is None:
        return
    temporary = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(handle, "wb") as f:
            np.savez(f, images=images, labels=labels)
        os.chmod(temporary, 0o644)  # readable like the dataset beside it (mkstemp gives 0600)
        os.replace(temporary, path)
    except OSError:  # caching is an optimization: without a writable folder, decode every time
        if temporary and os.path.exists(temporary):
            os.remove(temporary)
