"""The config a run was trained with, kept across resumes: a resume whose config differs in
anything that changes the math is refused, unless the user allows it, and then each segment's
config is kept.

    <workdir>/config.json                   the config of the latest segment (what eval reads)
    <workdir>/config_history/step_N.json    the config that trained the steps before N, kept when
                                            a resume at step N changed it
    <workdir>/config_history/changes.jsonl  one line per accepted change: step and differences
"""

from __future__ import annotations

import json
import os

import ml_collections
from etils import epath

from cnnjax.config_base import flatten, get_base_config
from cnnjax.errors import UserError
from cnnjax.files import read_text
from cnnjax.train.workdir import write_atomically

CONFIG_FILE = "config.json"
HISTORY_DIR = "config_history"
CHANGES_FILE = "changes.jsonl"
# Keys that change how a run is logged, saved, fed or placed, never what it computes: a resume
# may change them freely (e.g. more devices, another data folder, a larger evaluation batch).
OPERATIONAL_KEYS = frozenset(
    {
        "data.data_dir",
        "data.source_dir",
        "data.download",
        "data.workers",
        "data.worker_processes",
        "data.eval_batch_size",
        "train.log_every_steps",
        "train.eval_every_epochs",
        "train.checkpoint_every_steps",
        "train.keep_best_checkpoints",
        "train.compilation_cache_dir",
        "parallel.num_devices",
        "parallel.step",
        # A permission, not a setting: the decay factor it permits is compared on its own.
        "optimizer.allow_lr_increase",
    }
)
# Options that recipes declare since a later cnnjax, with the value that computes what runs
# recorded before them computed: a run whose config.json lacks one resumes as before.
OPTIONS_ADDED_LATER = {
    "model.options.locally_connected": False,
    # configs/alexnet_cifar10.py's ablation switches, at AlexNet's defaults (LRN: those of the
    # recipe's default net; a `:paper` run of before resumes with --allow_config_change)
    "model.options.lrn": False,
    "model.options.lrn_alpha": 1e-4,
    "model.options.pool_window": 3,
    "model.options.pool_stride": 2,
    "model.options.width_multiplier": 1.0,
    "model.options.input_size": 0,
}
ALLOW_FLAG = "--allow_config_change"


def config_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True) + "\n"


def read_saved(workdir: str) -> dict | None:
    """The flattened config.json of the run in `workdir`, with keys added to cnnjax since then at
    their defaults; None when there is none."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        text = read_text(path)
        if text is None:
            return None
        saved = json.loads(text)
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot read {path} ({type(error).__name__}): restore it from "
            f"{HISTORY_DIR}/ or a backup, or give a new --workdir"
        ) from None
    defaults = flatten(json.loads(config_json(get_base_config())))
    return {**defaults, **flatten(saved)}


def math_changes(saved: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """{key: (recorded value, new value)} of the keys outside OPERATIONAL_KEYS that differ."""
    current = flatten(json.loads(config_json(config)))
    for key, value in OPTIONS_ADDED_LATER.items():
        if key not in saved and current.get(key) == value:
            current.pop(key)
    keys = sorted((set(saved) | set(current)) - OPERATIONAL_KEYS)
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}


def check_resume(
    workdir: str, config: ml_collections.ConfigDict, *, step: int, allow_change: bool
) -> dict[str, tuple]:
    """Refuses (one line listing the keys) to resume `workdir` at `step` with a config that
    changes the math, unless `allow_change`; returns the accepted changes."""
    saved = read_saved(workdir)
    if saved is None:
        return {}
    changes = math_changes(saved, config)
    if changes and not allow_change:
        listed = ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())
        raise UserError(
            f"{workdir} holds a run trained to step {step} with other settings ({listed}): "
            f"rerun with its recorded settings (config.json), give a new --workdir, or pass "
            f"{ALLOW_FLAG} to continue with the new ones (the old config is kept in "
            f"{HISTORY_DIR}/)"
        )
    return changes


def _show(value) -> str:
    return json.dumps(value)


def record(
    workdir: str, config: ml_collections.ConfigDict, *, step: int, changes: dict[str, tuple]
) -> None:
    """Writes config.json; when a resume at `step` changed it, first keeps the old one as
    config_history/step_<step>.json and appends the differences to changes.jsonl."""
    path = os.path.join(workdir, CONFIG_FILE)
    previous = read_text(path) if changes else None
    if previous is not None:
        history = os.path.join(workdir, HISTORY_DIR)
        epath.Path(history).mkdir(parents=True, exist_ok=True)
        write_atomically(os.path.join(history, f"step_{step}.json"), previous)
        line = json.dumps({"step": step, "changes": {k: list(v) for k, v in changes.items()}})
        # Rewritten whole, not appended: an object store (gs://) has no append.
        changes_path = os.path.join(history, CHANGES_FILE)
        write_atomically(changes_path, (read_text(changes_path) or "") + line + "\n")
    write_atomically(path, config_json(config))


def accepted_changes(workdir: str) -> list[dict]:
    """Every change accepted over the run's life, oldest first."""
    text = read_text(os.path.join(workdir, HISTORY_DIR, CHANGES_FILE))
    return [json.loads(line) for line in (text or "").splitlines() if line.strip()]
