"""The training loop's state besides the TrainState, as named structures.

- `MetricSums`: the train step's metric sums since the start of the epoch and of the log window,
  kept on the device (adding them needs no host sync);
- `Throughput`: compile time and images/s, timed from the second step on (the first compiles);
- `RunRecord`: what a checkpoint carries besides the state, so that a resumed run continues its
  sums and still reports its last results.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

from cnnjax.train import steps


def _on_device(sums: dict | None) -> steps.Metrics:
    # Sums saved by an older cnnjax lack the newer keys: those start from zero.
    return {
        key: jnp.asarray((sums or {}).get(key, zero), jnp.float32)
        for key, zero in steps.zero_metrics().items()
    }


@jax.jit
def _add_to_both(
    epoch: steps.Metrics, window: steps.Metrics, metrics: steps.Metrics
) -> tuple[steps.Metrics, steps.Metrics]:
    # One dispatch per step instead of two per metric: with a dozen eager additions per step a
    # whole LeNet-5 run kept 0.907 of its bare step's throughput, with this 0.92-0.96
    # (benchmarks/whole_run.py, 2 CPU cores).
    return steps.add_metrics(epoch, metrics), steps.add_metrics(window, metrics)


def on_host(sums: steps.Metrics) -> dict[str, float]:
    """Device metric sums as Python floats (a host sync)."""
    return {key: float(value) for key, value in jax.device_get(sums).items()}


@dataclasses.dataclass
class MetricSums:
    """Train metric sums on the device since the epoch began and since the last log step."""

    epoch: steps.Metrics
    window: steps.Metrics

    @classmethod
    def resumed(cls, record: RunRecord) -> MetricSums:
        return cls(_on_device(record.epoch_sums), _on_device(record.window_sums))

    def add(self, metrics: steps.Metrics) -> None:
        self.epoch, self.window = _add_to_both(self.epoch, self.window, metrics)

    def take_window(self) -> dict[str, float]:
        """The window's sums on the host; the window starts again from zero."""
        window, self.window = on_host(self.window), steps.zero_metrics()
        return window

    def take_epoch(self) -> dict[str, float]:
        """The epoch's sums on the host; the epoch starts again from zero."""
        epoch, self.epoch = on_host(self.epoch), steps.zero_metrics()
        return epoch


@dataclasses.dataclass
class Throughput:
    """Seconds and steps of training (the first, compiling step excluded) for images/s."""

    batch_size: int
    compile_seconds: float | None = None
    train_seconds: float = 0.0
    timed_steps: int = 0
    mark: float = dataclasses.field(default_factory=time.perf_counter)

    def restart_clock(self) -> None:
        """Excludes the time since the last mark (a checkpoint save, an evaluation)."""
        self.mark = time.perf_counter()

    def compiled(self) -> None:
        """Called after the first step has finished (the caller blocked on it)."""
        self.compile_seconds = time.perf_counter() - self.mark
        self.restart_clock()

    def end_window(self, steps_run: int) -> float:
        """Closes a log window after `steps_run` steps of this invocation; returns the
        window's images/s."""
        now = time.perf_counter()
        timed = steps_run - 1 - self.timed_steps  # the first step (compilation) is not timed
        seconds = now - self.mark
        self.timed_steps += timed
        self.train_seconds += seconds
        self.mark = now
        return timed * self.batch_size / max(seconds, 1e-9)

    @property
    def images_per_sec(self) -> float | None:
        if not self.timed_steps:
            return None
        return self.timed_steps * self.batch_size / self.train_seconds


@dataclasses.dataclass
class RunRecord:
    """The JSON record saved with each checkpoint (the keys are those of earlier cnnjax)."""

    last_train: dict = dataclasses.field(default_factory=dict)
    last_test: dict = dataclasses.field(default_factory=dict)
    train_images_per_sec: float | None = None
    compile_seconds: float | None = None
    epoch_sums: dict | None = None
    window_sums: dict | None = None

    @classmethod
    def from_checkpoint(cls, record: dict) -> RunRecord:
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in fields})

    def to_checkpoint(self, signature: dict, epoch_sums: dict, window_sums: dict) -> dict:
        """The record to save now: the current sums (on the host) make a resume exact."""
        self.epoch_sums, self.window_sums = epoch_sums, window_sums
        record = {"signature": signature, **dataclasses.asdict(self)}
        # Absent rather than null, as earlier cnnjax wrote them.
        return {key: value for key, value in record.items() if value is not None}
