"""The sweep report's invariance metrics: each finished run's test accuracy under test-time
shifts (or rotations, zooms, pixel shuffles), evaluated once and cached in the run's workdir.

A sweep config asks for them in its report section:

    invariance  {"shift": (0, 1, 2, 3, 4)}: any of shift (pixels), rotate (degrees), scale
                (factor) and permute_pixels (seed), the transforms of `cnnjax eval` (cnnjax/
                inspect/invariance.py), with their values

Each run gains the metrics `test_accuracy_<kind>_<value>` (`test_accuracy_shift_2`: the mean
over the four directions of a 2-pixel shift), which the report summarizes over seeds like any
other. They are evaluated on the run's latest checkpoint (the weights of results.json's
test_accuracy, its final evaluation) over its evaluation split, and written to
`<run>/eval/sweep_invariance.json` with the step and the values asked: a later report reads them
back, and evaluates again only when the run has trained further or other values are asked.

The transforms act on the images as they are before any pixel shuffle the run was trained with
(`data.pixel_permutation_seed`): a shift moves the object, then the run's shuffle applies, so
the shift curve of a run on shuffled pixels is comparable with that of a run on plain ones.

Evaluating costs CPU that concurrent runs would lose (XLA:CPU takes every core) and would delay
the start of the next run, so runs are evaluated only once no run of the sweep is running or
waiting to start (`cnnjax sweep` refreshes its report as each run ends: the refresh after the last
one evaluates them all); until then their values are read from the cache or missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from cnnjax.errors import UserError

# The transforms of cnnjax/inspect/invariance.py and their units (its UNITS; that module loads
# JAX, which a report without invariance metrics never needs).
UNITS = {"shift": "pixels", "rotate": "degrees", "scale": "factor", "permute_pixels": "seed"}
KINDS = tuple(UNITS)
CACHE_FILE = os.path.join("eval", "sweep_invariance.json")
CHECKPOINT = "latest"  # the final evaluation's weights, whose accuracy is results.json's


def parse_options(options) -> dict[str, tuple]:
    """The report's `invariance` section {kind: values} checked: one line for an unknown kind or
    values that are not numbers (shifts: whole pixels >= 0; scales: > 0)."""
    if not options:
        return {}
    if not isinstance(options, dict):
        raise UserError(
            f"report.invariance={options!r}: give {{kind: values}}, e.g. {{'shift': (0, 1, 2)}}"
        )
    parsed = {}
    for kind, values in options.items():
        if kind not in KINDS:
            known = ", ".join(KINDS)
            raise UserError(f"report.invariance: unknown transform {kind!r}; use {known}")
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        whole = kind in ("shift", "permute_pixels")
        if not values or not all(_is_number(v, whole) for v in values):
            what = "whole numbers" if whole else "numbers"
            raise UserError(f"report.invariance.{kind}={values!r}: give {what}, e.g. (0, 1, 2)")
        if (kind == "shift" and min(values) < 0) or (kind == "scale" and min(values) <= 0):
            limit = "pixels >= 0 (each is tried in four directions)" if kind == "shift" else "> 0"
            raise UserError(f"report.invariance.{kind}={values!r}: give {limit}")
        parsed[kind] = values
    return parsed


def _is_number(value, whole: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return float(value).is_integer() if whole else True


def metric_name(kind: str, value) -> str:
    """`test_accuracy_shift_2`, `test_accuracy_scale_0.9`: the run metric of one value."""
    return f"test_accuracy_{kind}_{value:g}"


def metric_names(options: dict[str, tuple]) -> list[str]:
    return [metric_name(kind, value) for kind, values in options.items() for value in values]


def add_metrics(rows: list[dict], options: dict[str, tuple], *, evaluate: bool) -> None:
    """Sets each invariance metric of the done `rows` (report rows with `workdir` and `state`)
    from the run's cache, evaluating the runs whose cache lacks them when `evaluate`; a run that
    cannot be evaluated gets its one line in `invariance_error`."""
    names = metric_names(options)
    for row in rows:
        for name in names:
            row[name] = None
        row["invariance_error"] = ""
        if row["state"] != "done":
            continue
        try:
            values = run_values(row["workdir"], options, evaluate=evaluate)
        except UserError as error:
            row["invariance_error"] = str(error)
            continue
        row.update(values or {})


def run_values(
    workdir: str, options: dict[str, tuple], *, evaluate: bool
) -> dict[str, float] | None:
    """{metric name: accuracy} of the finished run in `workdir`: from its cache when that holds
    these values at the step the run ended (results.json's `steps`), else evaluated and cached
    (None when it is not and `evaluate` is False)."""
    asked = {kind: list(values) for kind, values in options.items()}
    steps = (_read_json(os.path.join(workdir, "results.json")) or {}).get("steps")
    cached = _read_json(os.path.join(workdir, CACHE_FILE))
    if not (cached and cached.get("step") == steps and cached.get("asked") == asked):
        if not evaluate:
            return None
        cached = evaluate_run(workdir, options)
        _write_cache(os.path.join(workdir, CACHE_FILE), cached)
    return accuracies(cached["curves"], options)


def accuracies(curves: dict, options: dict[str, tuple]) -> dict[str, float]:
    """{metric name: accuracy} of `invariance_curves`' result for the values of `options`."""
    out = {}
    for kind, values in options.items():
        by_value = {float(row["value"]): row["accuracy"] for row in curves[kind]}
        for value in values:
            out[metric_name(kind, value)] = by_value[float(value)]
    return out


def evaluate_run(workdir: str, options: dict[str, tuple]) -> dict:
    """The invariance curves of the run in `workdir` (its latest checkpoint, its evaluation
    split): {step, checkpoint, split, pixel_permutation_seed, asked, curves}."""
    # JAX and the model zoo load only when a report evaluates runs.
    from cnnjax.inspect.invariance import check_run, invariance_curves, run_evaluator
    from cnnjax.train.trained_run import load_trained_run

    trained = load_trained_run(workdir, CHECKPOINT)
    data = trained.config.data
    spatial_dims = check_run(trained, options.get("rotate", ()), options.get("scale", ()))
    seed = data.get("pixel_permutation_seed", -1)
    curves = invariance_curves(
        run_evaluator(trained),
        spatial_dims=spatial_dims,
        **{_ARGUMENTS[kind]: list(values) for kind, values in options.items()},
    )
    return {
        "step": trained.step,
        "checkpoint": CHECKPOINT,
        "split": data.eval_split,
        "pixel_permutation_seed": seed,
        "asked": {kind: list(values) for kind, values in options.items()},
        "curves": curves,
    }


# invariance_curves' keyword for each kind's values.
_ARGUMENTS = {
    "shift": "shifts",
    "rotate": "rotations",
    "scale": "scales",
    "permute_pixels": "permutation_seeds",
}


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_cache(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:  # a reader never sees half a file
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)


def pending_note(rows: Sequence[dict], options: dict[str, tuple]) -> str:
    """A line for the summary when done runs lack their invariance metrics (other runs were
    running or pending), else ""."""
    names = metric_names(options)
    missing = [
        row
        for row in rows
        if row["state"] == "done" and not row["invariance_error"] and row[names[0]] is None
    ]
    if not missing:
        return ""
    return (
        f"Invariance metrics of {len(missing)} done runs are not evaluated yet: they are "
        "evaluated once no run of the sweep is running or pending (`cnnjax report` then)."
    )


def summary_lines(collected: dict, summaries: dict) -> list[str]:
    """summary.md's invariance section: per transform, a table of arms (rows) by value
    (columns) of the mean test accuracy ± the 95% interval's half-width (n); a note for runs not
    evaluated yet and a line per run that could not be."""
    options = collected.get("invariance") or {}
    if not options:
        return []
    lines = []
    for kind, values in options.items():
        note = ", the mean of 4 directions" if kind == "shift" else ""
        lines += [
            f"## Test accuracy under {kind} ({UNITS[kind]}{note}): mean ± 95% CI half-width (n)",
            "",
            "| arm | " + " | ".join(f"{value:g}" for value in values) + " |",
            "|---|" + "---|" * len(values),
        ]
        for arm, by_metric in summaries.items():
            cells = [cell(by_metric[metric_name(kind, value)]) for value in values]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    pending = pending_note(collected["rows"], options)
    if pending:
        lines += [pending, ""]
    failed = [r for r in collected["rows"] if r.get("invariance_error")]
    for row in failed:
        lines.append(f"- not evaluated: {row['run_id']}: {row['invariance_error']}")
    return lines + ([""] if failed else [])


def cell(summary) -> str:
    """A table cell: mean ± 95% CI half-width (n); '-' without runs."""
    if not summary.n:
        return "-"
    half = f"{summary.half_width:.4f}" if summary.n > 1 else "-"
    return f"{summary.mean:.4f} ± {half} ({summary.n})"
