"""The report's `against` section: a metric against a numeric factor (e.g. the learning rate),
one line per level of another factor (e.g. the optimizer), with each line's best value and its
sensitivity to the numeric factor.

    report.against = [{"x": "optimizer.learning_rate", "lines": "optimizer.name", "log_x": True}]

Each entry takes:
    x          a factor key whose values are numbers (required)
    lines      a factor key; one line per value (default: one line over all runs)
    metric     a metric of the report (default its first)
    log_x      a logarithmic x axis (default False)
    best       "max" or "min": which end of the metric is better (default "max")
    tolerance  a line's x values whose mean is within this of the line's best are counted as
               near the best, the width of its good range (default 0.01: one accuracy point)

summary.md gets a table of lines by x (mean ± 95% interval half-width, n) with each line's
best x, the range of its means and its count near the best; the plot is
`<metric>_vs_<x's last part>.png` (cnnjax/sweep/report_plots.py).
"""

from __future__ import annotations

import math
import numbers

from cnnjax.config_loader import format_value
from cnnjax.errors import UserError
from cnnjax.sweep import report_invariance, stats

ALL = "all runs"  # the one line when an entry names no `lines` factor
KEYS = ("x", "lines", "metric", "log_x", "best", "tolerance")


def parse_options(options, factor_keys: set[str], metrics: list[str]) -> list[dict]:
    """The `against` entries with defaults filled; one line for each mistake."""
    if not options:
        return []
    if isinstance(options, dict):
        options = [options]
    parsed = []
    for entry in options:
        entry = dict(entry) if isinstance(entry, dict) else {}
        unknown = set(entry) - set(KEYS)
        if "x" not in entry or unknown:
            raise UserError(
                f"report.against entry {entry!r}: give {{'x': factor key, 'lines': factor key}} "
                f"with optional {', '.join(KEYS[2:])}"
                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
            )
        for role in ("x", "lines"):
            key = entry.get(role)
            if key is not None and key not in factor_keys:
                known = ", ".join(sorted(factor_keys)) or "none"
                raise UserError(
                    f"report.against {role}={key!r} is not a factor of the sweep; its factor "
                    f"keys: {known}"
                )
        metric = entry.get("metric") or metrics[0]
        if metric not in metrics:
            raise UserError(f"report.against metric={metric!r}: use one of {', '.join(metrics)}")
        best = entry.get("best", "max")
        if best not in ("max", "min"):
            raise UserError(f"report.against best={best!r}: use 'max' or 'min'")
        tolerance = entry.get("tolerance", 0.01)
        if not isinstance(tolerance, numbers.Real) or tolerance < 0:
            raise UserError(f"report.against tolerance={tolerance!r}: give a number >= 0")
        parsed.append(
            {
                "x": entry["x"],
                "lines": entry.get("lines"),
                "metric": metric,
                "log_x": bool(entry.get("log_x", False)),
                "best": best,
                "tolerance": float(tolerance),
            }
        )
    return parsed


def series(collected: dict, entry: dict) -> dict[str, list[tuple[float, stats.Summary, list]]]:
    """{line: [(x, Summary of the metric over its done runs, the values), ...] in increasing x},
    lines in the order they first appear in the plan; an x that is not a number is one line."""
    values: dict[str, dict[float, list[float]]] = {}
    for run, row in zip(collected["plan"]["runs"], collected["rows"], strict=True):
        x = run["factors"][entry["x"]]
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise UserError(
                f"report.against x={entry['x']!r} takes the value {x!r}, not a number: choose "
                "a numeric factor"
            )
        if entry["log_x"] and x <= 0:
            raise UserError(f"report.against x={entry['x']!r} has {x} <= 0: set log_x=False")
        line = format_value(run["factors"][entry["lines"]]) if entry["lines"] else ALL
        cell = values.setdefault(line, {}).setdefault(float(x), [])
        value = row.get(entry["metric"])
        if row["state"] == "done" and value is not None and math.isfinite(value):
            cell.append(float(value))
    return {
        line: [(x, stats.summarize(cell[x]), cell[x]) for x in sorted(cell)]
        for line, cell in values.items()
    }


def line_summary(points: list, entry: dict) -> dict:
    """A line's best x and mean, the range of its means, and how many of its x values have a
    mean within `tolerance` of the best (None where no point has a run done)."""
    means = [(x, s.mean) for x, s, _ in points if s.n]
    if not means:
        return {"best_x": None, "best_mean": None, "range": None, "near_best": None, "of": 0}
    pick = max if entry["best"] == "max" else min
    best_x, best_mean = pick(means, key=lambda pair: pair[1])
    near = sum(1 for _, m in means if abs(m - best_mean) <= entry["tolerance"] + 1e-12)
    spread = max(m for _, m in means) - min(m for _, m in means)
    return {
        "best_x": best_x,
        "best_mean": best_mean,
        "range": spread,
        "near_best": near,
        "of": len(means),
    }


def summary_lines(collected: dict) -> list[str]:
    """summary.md's section per `against` entry."""
    lines = []
    for entry in collected.get("against") or ():
        by_line = series(collected, entry)
        xs = sorted({x for points in by_line.values() for x, _, _ in points})
        title = f"{entry['metric']} against {entry['x']}"
        if entry["lines"]:
            title += f", per {entry['lines']}"
        lines += [
            f"## {title}",
            "",
            f"Mean ± 95% CI half-width (n). Best: the {entry['best']} mean of the line (chosen "
            "on the seeds it is reported on). Range: its largest mean minus its smallest. Near "
            f"best: its x values with a mean within {entry['tolerance']:g} of the best.",
            "",
            f"| {entry['lines'] or ''} | "
            + " | ".join(f"{x:g}" for x in xs)
            + " | best x | best mean | range | near best |",
            "|---|" + "---|" * (len(xs) + 4),
        ]
        for line, points in by_line.items():
            at = {x: s for x, s, _ in points}
            cells = [report_invariance.cell(at[x]) if x in at else "" for x in xs]
            s = line_summary(points, entry)
            if s["best_x"] is None:
                tail = ["-", "-", "-", "-"]
            else:
                tail = [
                    f"{s['best_x']:g}",
                    f"{s['best_mean']:.4f}",
                    f"{s['range']:.4f}",
                    f"{s['near_best']} of {s['of']}",
                ]
            lines.append(f"| {line} | " + " | ".join(cells + tail) + " |")
        lines.append("")
    return lines


def summary_json(collected: dict) -> list[dict]:
    """The same numbers for summary.json: per entry, per line, its points and summary."""
    out = []
    for entry in collected.get("against") or ():
        lines = {
            line: {
                "points": [{"x": x, **vars(s), "values": values} for x, s, values in points],
                **line_summary(points, entry),
            }
            for line, points in series(collected, entry).items()
        }
        out.append({**entry, "lines_by_value": lines})
    return out


def plot_name(entry: dict) -> str:
    return f"{entry['metric']}_vs_{entry['x'].rsplit('.', 1)[-1]}"
