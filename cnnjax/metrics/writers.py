"""One writer for both `metrics.jsonl` and TensorBoard, safe across resumes.

In a workdir on an object store (gs://...), which has no append, metrics.jsonl is rewritten whole
at each record (a few KB to a few MB: one upload per log step) and the TensorBoard event file is
uploaded whole at each of TensorBoard's flushes, through etils.epath like every other file.
"""

from __future__ import annotations

import io
import json
import math
import os

from etils import epath

from cnnjax.errors import UserError
from cnnjax.files import is_remote, read_text, write_atomically

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
    """All records of `<workdir>/metrics.jsonl` ([] when there is none).

    A last line cut short (a process killed while writing it) is left out: it comes after the
    last checkpoint, so a resume writes it again. A damaged line elsewhere is a UserError.
    """
    path = os.path.join(workdir, METRICS_FILE)
    text = read_text(path)
    if text is None:
        return []
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):  # no newline after it: the write never finished
                break
            raise UserError(
                f"{path} line {number} is not a JSON record: move the file aside (the run "
                "then logs from its next step on) or repair that line"
            ) from None
    return records


def _strict(value):
    # Strict JSON has no NaN: a diverged window's loss is recorded as null.
    return value if not isinstance(value, float) or math.isfinite(value) else None


class MetricWriter:
    """Appends `{"step", "split", ...}` records to metrics.jsonl and scalars to TensorBoard.

    On resume from `resume_step`, records written after that step by the interrupted run are
    dropped first, so that the file reads as if the run had never stopped.
    """

    def __init__(self, workdir: str, *, resume_step: int = 0):
        self.path = os.path.join(workdir, METRICS_FILE)
        kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
        self._text = "".join(json.dumps(r) + "\n" for r in kept)
        # Atomic: a crash or a full disk here loses no record and leaves no temporary file.
        write_atomically(self.path, self._text)
        # On an object store each record rewrites the object (kept in `_text`): no append there.
        self._file = None if is_remote(workdir) else open(self.path, "a")  # noqa: SIM115
        self.tensorboard_dir = os.path.join(workdir, "tensorboard")
        # Imported here: importing tensorboardX sets CRC32C_SW_MODE in os.environ.
        from tensorboardX import SummaryWriter

        if is_remote(workdir):
            _register_object_store_events(workdir.split("://", 1)[0])

        self._tensorboard = SummaryWriter(self.tensorboard_dir, purge_step=resume_step + 1)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        """Records `values` (plain floats) of `split` ("train", "test") at `step`."""
        record = {"step": step, "split": split, **{k: _strict(v) for k, v in values.items()}}
        line = json.dumps(record, allow_nan=False) + "\n"
        if self._file is None:
            self._text += line
            write_atomically(self.path, self._text, resume_hint="rerun the same command")
        else:
            self._file.write(line)
            self._file.flush()
        for name, value in values.items():
            if name not in ("epoch",):
                self._tensorboard.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._tensorboard.close()


class _ObjectRecordWriter:
    """A TensorBoard event file on an object store: kept in memory, uploaded whole at each
    flush (tensorboardX's own gs:// writer needs google-cloud-storage's client and project)."""

    def __init__(self, path: str):
        self._path = epath.Path(path)
        self._buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        self._path.write_bytes(self._buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _ObjectRecordWriterFactory:
    def open(self, path: str) -> _ObjectRecordWriter:
        return _ObjectRecordWriter(path)

    def directory_check(self, path: str) -> None:
        del path  # an object store needs no folder before its objects


def _register_object_store_events(scheme: str) -> None:
    """Makes tensorboardX write `scheme://` event files through etils.epath."""
    from tensorboardX import record_writer

    record_writer.register_writer_factory(scheme, _ObjectRecordWriterFactory())


class NullWriter:
    """A MetricWriter that writes nothing: for processes other than the first on many hosts."""

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        del step, split, values

    def close(self) -> None:
        """Nothing is open."""
