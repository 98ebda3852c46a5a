"""Files written whole or not at all: a crash or a full disk never leaves half a file, and a
failed write is one line that says what to do (`write_failure`)."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from typing import Any

from cnnjax.errors import UserError


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
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise write_failure(
            os.path.basename(path), os.path.dirname(path), error, resume_hint
        ) from None


def write_json(path: str, value: Any, **kwargs) -> None:
    """Strict JSON (NaN and infinities as null), sorted and indented, written atomically."""
    text = json.dumps(strict_json(value), indent=2, sort_keys=True, allow_nan=False)
    write_atomically(path, text + "\n", **kwargs)
