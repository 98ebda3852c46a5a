"""Orbax checkpoints of a run: the latest for resuming, and the best-k by test accuracy.

Each checkpoint holds the TrainState and a small JSON record: the model signature (name and
parameter shapes, checked before any restore so that a workdir of another model fails clearly
and loses nothing) and the host-side state the loop needs to continue exactly (metric sums of
the epoch in progress, the metric history for the curves).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from cnnjax.errors import UserError

BEST_METRIC = "test_accuracy"


def model_signature(model_name: str, params) -> dict:
    """What must match between a checkpoint and the run restoring it."""
    shapes = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        "model": model_name,
        "param_shapes": {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in shapes},
    }


class RunCheckpoints:
    """Save and restore (TrainState, record) pairs under `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, *, keep_best: int):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(n=1),
                # Checkpoints saved between evaluations carry no metric: only LatestN keeps them.
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_METRIC],
                    reverse=False,
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "record"), options=options
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, record: dict, metrics: dict | None = None) -> None:
        """Saves asynchronously; `metrics` (with test_accuracy) ranks it among the best."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, abstract_state: Any, signature: dict) -> tuple[Any, dict]:
        """Restores checkpoint `step` onto `abstract_state` after checking the signature."""
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
        return restored["state"], record

    def restore_as_saved(self, step: int) -> dict:
        """The state of checkpoint `step` as saved (a dict of arrays), with no target to match:
        for reading another model's weights (fine-tuning)."""
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
            )
        except Exception as error:  # noqa: BLE001
            raise self._unreadable(step, error) from None
        return restored["state"]

    def _unreadable(self, step: int, error: Exception) -> UserError:
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        return UserError(
            f"checkpoint {step} in {self.directory} cannot be read ({type(error).__name__}: "
            f"{first_line}): move that step's folder aside to resume from an earlier one, or use "
            "a new --workdir (nothing was deleted)"
        )

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
