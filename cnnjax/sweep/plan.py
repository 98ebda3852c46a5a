"""A sweep declared in a config file, expanded into runs with stable ids and exact commands.

A sweep config's `get_config()` returns a ConfigDict with:

    base       recipe to start from, "path/to/recipe.py[:arg]" (relative paths are resolved
               against the sweep file's folder, then the current directory)
    overrides  values applied to every run, nested like the recipe ({"optimizer": {"name": "sgd"}})
               or flat with dotted keys
    axes       list of factors; each factor is {dotted.key: (values...)}; keys within one factor
               are zipped (equal lengths), factors are crossed (product)
    seeds      seeds to repeat every arm with (`seed` of the recipe)
    report     what `cnnjax report` summarizes (see cnnjax/sweep/report.py)

An arm is one combination of factor values; a run is an arm with a seed. A run's id is
`<readable arm>_seed<k>_<hash>`, where the hash is taken over the resolved training config, so
it is the same on every machine and changes whenever anything that affects the run changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import shlex
import sys

import ml_collections

from cnnjax.config_base import flatten
from cnnjax.config_loader import format_value, load_config
from cnnjax.errors import UserError

PLAN_FILE = "sweep.json"
RUNS_DIR = "runs"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its arm, seed, id, workdir and the `cnnjax train` arguments."""

    run_id: str
    arm: str  # "activation=tanh, learning_rate=0.01"
    factors: dict  # {dotted.key: value} of the arm
    levels: tuple[str, ...]  # one label per factor: ("activation=tanh", "learning_rate=0.01")
    seed: int
    workdir: str
    train_args: tuple[str, ...]  # arguments after `cnnjax`

    def command(self, python: str = sys.executable) -> list[str]:
        """The argv of this run: `python -m cnnjax.cli train ...`."""
        return [python, "-m", "cnnjax.cli", *self.train_args]


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    sweep_dir: str
    base: str
    arms: tuple[str, ...]  # in declaration order; the first is the reference of comparisons
    runs: tuple[RunSpec, ...]
    report: dict

    def to_json(self) -> dict:
        return {
            "base": self.base,
            "arms": list(self.arms),
            "report": self.report,
            "runs": [
                {
                    **dataclasses.asdict(r),
                    "train_args": list(r.train_args),
                    "levels": list(r.levels),
                }
                for r in self.runs
            ],
        }


def _set(config: ml_collections.ConfigDict, key: str, value, where: str) -> None:
    *parents, leaf = key.split(".")
    node = config
    try:
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(leaf)
        node[leaf] = tuple(value) if isinstance(value, list) else value
    except KeyError:
        raise UserError(
            f"{where}: the recipe has no key {key!r} (sweeps can only change existing keys)"
        ) from None
    except TypeError as error:
        raise UserError(f"{where}: {key}={value!r} has the wrong type ({error})") from None


def _resolve_base(base: str, sweep_file: str | None) -> str:
    path, sep, arg = base.partition(":")
    if not os.path.isabs(path):
        candidates = [os.path.join(os.path.dirname(sweep_file), path)] if sweep_file else []
        candidates.append(os.path.abspath(path))
        path = next((c for c in candidates if os.path.exists(c)), candidates[-1])
    if not os.path.exists(path):
        raise UserError(f"the sweep's base recipe {base!r} does not exist")
    return os.path.abspath(path) + sep + arg


def expand_factors(axes: list[dict]) -> list[tuple[dict, list[str]]]:
    """The arms of `axes` as (overrides, level labels): keys zipped within a factor, factors
    crossed. A factor may name its levels with `"_labels": (...)` and itself with `"_name"`
    (e.g. {"_name": "augment", "_labels": ("none", "flip"), "data.augment.horizontal_flip":
    (False, True)} gives arms labelled "augment=none" and "augment=flip")."""
    levels = []
    for index, factor in enumerate(axes):
        keys = [k for k in factor if not k.startswith("_")]
        lengths = {len(factor[k]) for k in keys} | (
            {len(factor["_labels"])} if "_labels" in factor else set()
        )
        if not keys or len(lengths) != 1 or 0 in lengths:
            raise UserError(
                f"sweep axes[{index}]: the zipped keys {keys} (and _labels) need value lists of "
                "one equal, non-zero length"
            )
        rows = []
        for position, values in enumerate(zip(*(factor[k] for k in keys), strict=True)):
            overrides = dict(zip(keys, values, strict=True))
            name = factor.get("_name") or keys[0].split(".")[-1]
            if "_labels" in factor:
                label = f"{name}={factor['_labels'][position]}"
            elif "_name" in factor:
                label = f"{name}=" + ",".join(format_value(v) for v in values)
            else:
                label = ", ".join(
                    f"{k.split('.')[-1]}={format_value(v)}" for k, v in overrides.items()
                )
            rows.append((overrides, label))
        levels.append(rows)
    return [
        (
            {k: v for overrides, _ in combination for k, v in overrides.items()},
            [label for _, label in combination],
        )
        for combination in itertools.product(*levels)
    ]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", label.replace(", ", "_")).strip("_") or "base"


# Keys added to cnnjax after sweeps were planned with it, with the values that compute what the
# sweeps computed before: left out of the hash, so that existing sweeps keep their run ids (and
# workdirs). model.fast_paths was True before None ("on the CPU only") became its default.
KEYS_ADDED_LATER = {
    "optimizer.allow_lr_increase": (False,),
    "model.fast_paths": (True, None),
    "train.loss_scale_initial": (2.0**15,),
    "train.loss_scale_period": (2000,),
    "data.jpeg_draft": (True,),
    "data.worker_processes": (False,),
    "data.eval_resize": (0,),
    "data.interpolation": ("bilinear",),
    "data.augment.pca_color_std": (0.0,),
    "model.options.locally_connected": (False,),
    "train.eval_mirrored": (False,),
    "data.pixel_permutation_seed": (-1,),
    # alexnet_cifar10.py declares lrn as its variant computed it: off, and on with :paper.
    "model.options.lrn": (False, True),
    "model.options.lrn_alpha": (1e-4,),
    "model.options.pool_window": (3,),
    "model.options.pool_stride": (2,),
    "model.options.width_multiplier": (1.0,),
    "model.options.input_size": (0,),
}


def config_hash(config: ml_collections.ConfigDict) -> str:
    resolved = json.loads(config.to_json_best_effort())
    for key, defaults in KEYS_ADDED_LATER.items():
        *parents, name = key.split(".")
        node = resolved
        for parent in parents:
            node = node.get(parent, {})
        if node.get(name, defaults[0]) in defaults:
            node.pop(name, None)
    text = json.dumps(resolved, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def make_plan(
    sweep: ml_collections.ConfigDict, sweep_dir: str, sweep_file: str | None = None
) -> SweepPlan:
    """Expands `sweep` into runs under `sweep_dir/runs/`, checking every override up front."""
    for key in ("base", "axes", "seeds"):
        if key not in sweep:
            raise UserError(
                f"the sweep config has no {key!r}: a sweep config declares base, axes and seeds "
                "(see experiments/relu_vs_tanh/config.py); `cnnjax train` runs a plain recipe"
            )
    plain = sweep.to_dict()
    base = _resolve_base(plain["base"], sweep_file)
    fixed = flatten(plain.get("overrides") or {})
    seeds = [int(s) for s in plain["seeds"]]
    if not seeds:
        raise UserError("the sweep has no seeds: set seeds=(0,) at least")
    arms, runs = [], []
    for factors, levels in expand_factors(list(plain["axes"])):
        label = ", ".join(levels) or "base"
        arms.append(label)
        for seed in seeds:
            config = load_config(base)
            overrides = {**fixed, **factors, "seed": seed}
            for key, value in overrides.items():
                _set(config, key, value, where=f"sweep arm {label!r}")
            run_id = f"{_slug(label)}_seed{seed}_{config_hash(config)}"
            workdir = os.path.join(os.path.abspath(sweep_dir), RUNS_DIR, run_id)
            args = ("train", f"--config={base}", f"--workdir={workdir}")
            args += tuple(f"--config.{k}={format_value(v)}" for k, v in overrides.items())
            runs.append(RunSpec(run_id, label, factors, tuple(levels), seed, workdir, args))
    if len({r.run_id for r in runs}) != len(runs):
        raise UserError("two runs of the sweep resolve to the same config: remove duplicate values")
    return SweepPlan(
        os.path.abspath(sweep_dir), base, tuple(arms), tuple(runs), dict(plain.get("report") or {})
    )


def write_plan(plan: SweepPlan) -> str:
    """Writes `sweep.json` (what `cnnjax report` reads) into the sweep directory."""
    os.makedirs(plan.sweep_dir, exist_ok=True)
    path = os.path.join(plan.sweep_dir, PLAN_FILE)
    previous = read_plan_json(plan.sweep_dir)
    if previous and {r["run_id"] for r in previous["runs"]} != {r.run_id for r in plan.runs}:
        # Runs of the old plan stay on disk; the report covers the plan written last.
        print(f"note: {path} held a different sweep; its runs are kept, the new plan replaces it")
    with open(path, "w") as f:
        json.dump(plan.to_json(), f, indent=2)
    return path


def read_plan_json(sweep_dir: str) -> dict | None:
    path = os.path.join(sweep_dir, PLAN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(
            f"{path} is unreadable ({error}): rerun `cnnjax sweep` to rewrite it"
        ) from None


def shell_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
