"""One writer for both `metrics.jsonl` and TensorBoard, safe across resumes."""

from __future__ import annotations

import json
import os

from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
    """All records of `<workdir>/metrics.jsonl` ([] when there is none)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    """Appends `{"step", "split", ...}` records to metrics.jsonl and scalars to TensorBoard.

    On resume from `resume_step`, records written after that step by the interrupted run are
    dropped first, so that the file reads as if the run had never stopped.
    """

    def __init__(self, workdir: str, *, resume_step: int = 0):
        self.path = os.path.join(workdir, METRICS_FILE)
        kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
        temporary = self.path + ".tmp"
        with open(temporary, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(temporary, self.path)  # atomic: a crash here loses no record
        self._file = open(self.path, "a")  # noqa: SIM115 (closed in close())
        self.tensorboard_dir = os.path.join(workdir, "tensorboard")
        self._tensorboard = SummaryWriter(self.tensorboard_dir, purge_step=resume_step + 1)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        """Records `values` (plain floats) of `split` ("train", "test") at `step`."""
        self._file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
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
