"""One writer for both `metrics.jsonl` and TensorBoard, safe across resumes."""

from __future__ import annotations

import json
import math
import os

from cnnjax.errors import UserError
from cnnjax.files import write_atomically

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
    """All records of `<workdir>/metrics.jsonl` ([] when there is none).

    A last line cut short (a process killed while writing it) is left out: it comes after the
    last checkpoint, so a resume writes it again. A damaged line elsewhere is a UserError.
    """
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
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
        # Atomic: a crash or a full disk here loses no record and leaves no temporary file.
        write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")  # noqa: SIM115 (closed in close())
        self.tensorboard_dir = os.path.join(workdir, "tensorboard")
        # Imported here: importing tensorboardX sets CRC32C_SW_MODE in os.environ.
        from tensorboardX import SummaryWriter

        self._tensorboard = SummaryWriter(self.tensorboard_dir, purge_step=resume_step + 1)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        """Records `values` (plain floats) of `split` ("train", "test") at `step`."""
        record = {"step": step, "split": split, **{k: _strict(v) for k, v in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        for name, value in values.items():
            if name not in ("epoch",):
                self._tensorboard.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        self._file.close()
        self._tensorboard.close()


class NullWriter:
    """A MetricWriter that writes nothing: for processes other than the first on many hosts."""

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        del step, split, values

    def close(self) -> None:
        """Nothing is open."""
