"""Orbax checkpoints of a run: the latest for resuming, and the best-k by test accuracy.

Each checkpoint holds the TrainState, its test metrics when it was saved at an evaluation (Orbax
writes them beside the state, so "best" survives restarts), and a small JSON record: the model
signature (name and parameter shapes, checked before any restore so that a workdir of another
model fails clearly and loses nothing), a CRC-32 of every array of the state (checked after a
restore: a flipped byte is refused instead of trained on), and the host-side state the loop needs
to continue exactly (metric sums of the epoch in progress, the metric history for the curves).
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from cnnjax.errors import UserError
from cnnjax.files import forget_listings, resolve
from cnnjax.train.workdir import CHECKPOINT_DIR, finished_checkpoint_steps, write_failure

BEST_METRIC = "test_accuracy"


def model_signature(model_name: str, params) -> dict:
    """What must match between a checkpoint and the run restoring it."""
    shapes = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        "model": model_name,
        "param_shapes": {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in shapes},
    }


def _host_array(leaf) -> np.ndarray:
    # A replicated array has a full copy on every device: the first local one is enough, and
    # unlike device_get it also works when other processes hold the other copies.
    if isinstance(leaf, jax.Array):
        return np.asarray(leaf.addressable_data(0))
    return np.asarray(leaf)


def state_checksums(state: Any) -> dict[str, str]:
    """CRC-32 of the bytes of every array of `state`, by its path."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {
        jax.tree_util.keystr(path): f"{zlib.crc32(_host_array(leaf).tobytes()):08x}"
        for path, leaf in leaves
    }


def non_finite_leaves(state: Any) -> list[str]:
    """Paths of the floating-point arrays of `state` that hold a NaN or an infinity."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        array = _host_array(leaf)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad.append(jax.tree_util.keystr(path))
    return bad


def _metric(metrics: dict) -> float:
    return float(metrics[BEST_METRIC])


@dataclasses.dataclass
class BestOfRanked(checkpoint_managers.PreservationPolicy):
    """Keeps the `n` checkpoints with the highest metric among those saved with one.

    Orbax's BestN keeps every checkpoint while there are at most n, ranked or not; with LatestN(1)
    beside it this keeps exactly the n best plus the latest. Ties go to the later step, as in
    CheckpointManager.best_step.
    """

    n: int

    def should_preserve(self, checkpoints: Sequence, *, context) -> list[bool]:
        del context
        ranked = [(i, c) for i, c in enumerate(checkpoints) if c.metrics is not None]
        ranked.sort(key=lambda item: (_metric(item[1].metrics), item[1].step))
        keep = {i for i, _ in ranked[-self.n :]} if self.n else set()
        return [i in keep for i in range(len(checkpoints))]


class RunCheckpoints:
    """Save and restore (TrainState, record) pairs under `<workdir>/checkpoints`.

    `read_only` opens an existing run for evaluation: nothing on disk is created or cleaned up.
    """

    def __init__(self, workdir: str, *, keep_best: int, read_only: bool = False):
        self.workdir = resolve(workdir)  # a local path or a URL (gs://...)
        self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
        forget_listings(self.directory)  # Orbax lists the steps: as they are now, on gs:// too
        policy = checkpoint_managers.AnyPreservationPolicy(
            [checkpoint_managers.LatestN(n=1), BestOfRanked(n=keep_best)]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn makes Orbax write each checkpoint's metrics beside it and read them back
            # after a restart, and best_step() rank by them.
            best_fn=_metric,
            best_mode="max",
            create=not read_only,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "record"), options=options
        )
        self._pending_step = -1  # the step of the last save, for the message if it fails

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the highest test accuracy over the run's whole life (restarts
        included); None when no checkpoint was saved at an evaluation."""
        step = self._manager.best_step()
        if step is None or self._manager.metrics(step) is None:
            return None
        return step

    def metrics(self, step: int) -> dict | None:
        """The test metrics checkpoint `step` was saved with (None between evaluations)."""
        return self._manager.metrics(step)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def resolve(self, which: str) -> int:
        """The step of checkpoint `which`: "best" (by test accuracy; the latest when none was
        ranked), "latest", or a step number that exists."""
        latest = self.latest_step()
        if latest is None:
            raise UserError(
                f"no checkpoint in {self.directory}: train first (`cnnjax train`), or check "
                "the workdir"
            )
        if which == "latest":
            return latest
        if which == "best":
            best = self.best_step()
            return latest if best is None else best
        if not which.isdigit():
            raise UserError(f"checkpoint {which!r}: give best, latest or a step number")
        available = self.all_steps()
        if int(which) not in available:
            raise UserError(
                f"no checkpoint at step {which} in {self.directory}: available steps are "
                f"{', '.join(map(str, available))}"
            )
        return int(which)

    def save(self, step: int, state: Any, record: dict, metrics: dict | None = None) -> None:
        """Saves asynchronously; `metrics` (with a finite test_accuracy) ranks it among the
        best. A write that fails (full disk, read-only folder) raises a one-line UserError."""
        if metrics is not None and not math.isfinite(_metric(metrics)):
            raise ValueError(f"refusing to rank checkpoint {step} by a non-finite {metrics}")
        record = {**record, "checksums": state_checksums(state)}
        previous, self._pending_step = self._pending_step, step
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
                ),
                metrics=metrics,
                force=True,
            )
        except Exception as error:  # noqa: BLE001 (a failed earlier async save surfaces here)
            unfinished = previous >= 0 and previous not in finished_checkpoint_steps(
                os.path.dirname(self.directory)
            )
            raise self._write_failure(previous if unfinished else step, error) from None

    def restore(self, step: int, abstract_state: Any, signature: dict) -> tuple[Any, dict]:
        """Restores checkpoint `step` onto `abstract_state` after checking the signature, then
        checks every array against the checksum saved with it."""
        try:
            record = self._manager.restore(
                step, args=ocp.args.Composite(record=ocp.args.JsonRestore())
            )["record"]
        except Exception as error:  # noqa: BLE001 (any unreadable file is the same user problem)
            raise self._unreadable(step, error) from None
        saved = record.get("signature", {})
        if saved != signature:
            raise UserError(
                f"the checkpoint in {self.directory} is of model {saved.get('model')!r} with "
                f"other parameter shapes than this run's {signature['model']!r}: use a new "
                "--workdir (nothing was changed or deleted)"
            )
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)),
            )
        except Exception as error:  # noqa: BLE001
            raise self._unreadable(step, error) from None
        state = restored["state"]
        self._verify(step, state, record.get("checksums"))
        return state, record

    def restore_as_saved(self, step: int) -> dict:
        """The state of checkpoint `step` as saved (a dict of arrays), with no target to match:
        for reading another model's weights (fine-tuning)."""
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
            )
        except Exception as error:  # noqa: BLE001
            raise self._unreadable(step, error) from None
        self._verify(step, restored["state"], None)
        return restored["state"]

    def _verify(self, step: int, state: Any, checksums: dict | None) -> None:
        # Checkpoints of cnnjax before checksums were recorded are only checked for finiteness.
        if checksums:
            actual = state_checksums(state)
            changed = sorted(k for k, v in checksums.items() if actual.get(k) != v)
            if changed:
                raise self._corrupt(step, f"{changed[0]} does not match its saved checksum")
        bad = non_finite_leaves(state)
        if bad:
            raise self._corrupt(step, f"{bad[0]} holds NaN or infinite values")

    def _corrupt(self, step: int, what: str) -> UserError:
        others = [s for s in self.all_steps() if s != step]
        earlier = f" (other steps: {', '.join(map(str, others))})" if others else ""
        return UserError(
            f"checkpoint {step} in {self.directory} is corrupt ({what}): move that step's folder "
            f"aside to resume from an earlier one{earlier}, or use a new --workdir (nothing was "
            "deleted)"
        )

    def _unreadable(self, step: int, error: Exception) -> UserError:
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        return UserError(
            f"checkpoint {step} in {self.directory} cannot be read ({type(error).__name__}: "
            f"{first_line}): move that step's folder aside to resume from an earlier one, or use "
            "a new --workdir (nothing was deleted)"
        )

    def _write_failure(self, step: int, error: BaseException) -> UserError:
        latest = [s for s in finished_checkpoint_steps(self.workdir) if s != step]
        hint = (
            f"rerun the same command to resume from step {latest[-1]}"
            if latest
            else "rerun the same command"
        )
        return write_failure(f"checkpoint {step}", self.directory, error, hint)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk; a failed one raises UserError."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001
            raise self._write_failure(self._pending_step, error) from None

    def close(self) -> None:
        try:
            self._manager.close()
        except Exception as error:  # noqa: BLE001
            raise self._write_failure(self._pending_step, error) from None


def read_saved_state(workdir: str, checkpoint: str = "best") -> tuple[dict, int]:
    """The state tree (params, batch_stats, ...) of checkpoint `checkpoint` (best | latest |
    STEP) of the run in `workdir`, as saved (numpy), and its step: no model or config needed."""
    checkpoints = RunCheckpoints(workdir, keep_best=1, read_only=True)
    try:
        step = checkpoints.resolve(str(checkpoint))
        saved = checkpoints.restore_as_saved(step)
    finally:
        checkpoints.close()
    return jax.device_get(saved), step
