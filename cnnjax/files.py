"""Files written whole or not at all: a crash or a full disk never leaves half a file, and a
failed write is one line that says what to do (`write_failure`).

A path is a local path or a URL of an object store (`gs://bucket/run`, any scheme etils.epath
knows: s3://, az://): `resolve`, `read_text`, `write_atomically` and `write_bytes` take both. On an
object store an upload replaces an object whole when it completes, so "atomic" needs no
temporary file; there is no append either, so a growing file is rewritten whole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from etils import epath

from cnnjax.errors import UserError


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL such as gs://bucket/run: an object store, reached through etils.epath."""
    return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> str:
    """An absolute local path, or a URL as given (without a trailing slash)."""
    return str(epath.Path(path)) if is_remote(path) else os.path.abspath(path)


def refuse_object_store(path: str, what: str, fix: str) -> None:
    """One line when `path` is on an object store, for `what` needs file locks, which an object
    store does not have; `fix` says what to do instead."""
    if is_remote(path):
        raise UserError(
            f"{what} needs file locks, which {path.split('://')[0]}:// object storage does not "
            f"have: {fix}"
        )


def forget_listings(path: str) -> None:
    """Drops the folder listings that etils.epath's fsspec client (gcsfs) keeps, and never
    expires, for an object store: another process (a killed run, a run on another host) may have
    changed the folder since this process last listed it."""
    if not is_remote(path):
        return
    from etils.epath import backend

    with contextlib.suppress(Exception):  # no fsspec client (epath uses TensorFlow's gfile)
        backend.fsspec_backend.fs(path).invalidate_cache()


def read_text(path: str) -> str | None:
    """The text of `path` (local or a URL); None when there is none."""
    forget_listings(path)
    file = epath.Path(path)
    return file.read_text() if file.exists() else None


def _errno_of(error: BaseException) -> int | None:
    """The errno of `error` or of an OSError it was raised from (tensorstore wraps them)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return error.errno
        text = str(error)
        if "No space left on device" in text:
            return errno.ENOSPC
        if "Read-only file system" in text:
            return errno.EROFS
        if "Permission denied" in text:
            return errno.EACCES
        error = error.__cause__ or error.__context__
    return None


def write_failure(what: str, path: str, error: BaseException, resume_hint: str) -> UserError:
    """One line for a failed write of `what` to `path`: a full disk, a read-only or unwritable
    folder, or anything else, with what to do about it."""
    code = _errno_of(error)
    if code in (errno.ENOSPC, errno.EDQUOT):
        cause = "no space left on the device"
        fix = "free space (or move the workdir to a larger disk)"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        cause = "the folder is read-only" if code == errno.EROFS else "permission denied"
        fix = "make it writable"
    else:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        cause = f"{type(error).__name__}: {first}"
        fix = "fix the cause"
    return UserError(f"cannot write {what} to {path} ({cause}): {fix}, then {resume_hint}")


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_atomically(path: str, text: str, *, resume_hint: str = "rerun the command") -> None:
    """Writes `text` to `path` through a temporary file and a rename: readers and crashes see
    the old file or the new one, never half of one; a failed write leaves the old file."""
    write_bytes(path, text.encode(), resume_hint=resume_hint)


def write_bytes(path: str, data: bytes, *, resume_hint: str = "rerun the command") -> None:
    """`write_atomically` for bytes (a PNG); on an object store, one upload."""
    if is_remote(path):
        try:
            epath.Path(path).write_bytes(data)
        except Exception as error:  # noqa: BLE001 (network and HTTP errors are not OSErrors)
            folder, name = path.rsplit("/", 1)
            raise write_failure(name, folder, error, resume_hint) from None
        return
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise write_failure(
            os.path.basename(path), os.path.dirname(path), error, resume_hint
        ) from None


@contextlib.contextmanager
def staged_folder(folder: str) -> Iterator[str]:
    """A local folder to write into that ends up as `folder`: `folder` itself when local
    (created), else a temporary one whose files are uploaded when the block ends without error
    (matplotlib, csv and TensorBoard writers then need no object-store support)."""
    if not is_remote(folder):
        os.makedirs(folder, exist_ok=True)
        yield folder
        return
    local = tempfile.mkdtemp(prefix="cnnjax-upload-")
    try:
        yield local
        for root, _, names in os.walk(local):
            for name in names:
                relative = os.path.relpath(os.path.join(root, name), local)
                target = epath.Path(folder) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(os.path.join(root, name), "rb") as f:
                    write_bytes(str(target), f.read())
    finally:
        shutil.rmtree(local, ignore_errors=True)


def write_json(path: str, value: Any, **kwargs) -> None:
    """Strict JSON (NaN and infinities as null), sorted and indented, written atomically."""
    text = json.dumps(strict_json(value), indent=2, sort_keys=True, allow_nan=False)
    write_atomically(path, text + "\n", **kwargs)
