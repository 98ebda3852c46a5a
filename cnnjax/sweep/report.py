"""`cnnjax report DIR`: one table of a sweep's runs, its arms with intervals, and plots.

Reads `DIR/sweep.json` (the plan written by `cnnjax sweep`) and each run's workdir, and writes
`DIR/report/`:

    results.csv      one row per run: arm, factors, seed, state, error or interruption message,
                     final metrics, the CPU threads it ran on
    summary.md       one row per arm: n, mean, standard deviation, 95% t interval of each metric;
                     each arm against the reference arm (difference with Welch's interval, ratio
                     of means with a delta-method interval); a factor-by-factor table of the
                     first metric when the sweep crosses two factors
    summary.json     the same numbers for programs
    curves.png       learning curves per arm: mean over seeds with a 95% band
    <metric>.png     bar chart of the first metric per arm with 95% intervals

It works at any time: runs that are not done are listed with their state and the report says
PARTIAL at the top. CPU runs on different numbers of threads get a warning at the top (see
`thread_warnings`). The sweep config's `report` section chooses what is summarized:

    metrics     keys of results.json (default test_accuracy, train_accuracy); the first leads
    thresholds  [{name, split, key, at_least | at_most}]: epochs until a logged metric first
                crosses a value (e.g. training error <= 25%), per run from metrics.jsonl
    curves      [[split, key], ...] drawn per arm (default test and train accuracy)
    reference   the arm the others are compared with (default the first arm)
    invariance  {"shift": (0, 1, 2)}: test accuracy under test-time transforms per run,
                evaluated once and cached in its workdir (cnnjax/sweep/report_invariance.py);
                metrics test_accuracy_shift_0, ..., a table of arms by value and
                invariance_<kind>.png
    against     [{x, lines, ...}]: a metric against a numeric factor, one line per level of
                another (cnnjax/sweep/report_against.py): a table with each line's best and
                sensitivity, and <metric>_vs_<x>.png
"""

from __future__ import annotations

import csv
import json
import math
import os

from cnnjax.config_loader import format_value
from cnnjax.errors import UserError
from cnnjax.metrics import read_metrics
from cnnjax.sweep import report_against, report_invariance, stats
from cnnjax.sweep import status as run_status
from cnnjax.sweep.plan import read_plan_json

DEFAULT_METRICS = ("test_accuracy", "train_accuracy")


def epochs_to_threshold(records: list[dict], threshold: dict) -> float | None:
    """The epoch of the first `split` record whose `key` crosses the threshold (None if never)."""
    for record in records:
        if record.get("split") != threshold["split"] or threshold["key"] not in record:
            continue
        value = record[threshold["key"]]
        if ("at_least" in threshold and value >= threshold["at_least"]) or (
            "at_most" in threshold and value <= threshold["at_most"]
        ):
            return float(record["epoch"])
    return None


def collect(sweep_dir: str) -> dict:
    """Every planned run's state, error, metrics and curves; raises UserError without a plan."""
    plan = read_plan_json(sweep_dir)
    if plan is None:
        raise UserError(
            f"{sweep_dir} has no sweep.json: give the --workdir of a `cnnjax sweep` (it is "
            "written before the first run starts)"
        )
    options = plan.get("report") or {}
    invariance = report_invariance.parse_options(options.get("invariance"))
    metrics = list(options.get("metrics") or DEFAULT_METRICS)
    metrics += report_invariance.metric_names(invariance)  # set below, from each run's cache
    thresholds = list(options.get("thresholds") or [])
    rows, curves, platforms = [], {}, {}
    for run in plan["runs"]:
        state, status = run_status.run_state(run["workdir"])
        results = _read_json(os.path.join(run["workdir"], "results.json"))
        records = read_metrics(run["workdir"]) if os.path.isdir(run["workdir"]) else []
        row = {
            "run_id": run["run_id"],
            "arm": run["arm"],
            **{key: format_value(value) for key, value in run["factors"].items()},
            **{f"factor{i + 1}": level for i, level in enumerate(run.get("levels", []))},
            "seed": run["seed"],
            "state": state,
            "attempts": status.get("attempts", 0),
            "error": status.get("error") or "" if state == run_status.FAILED else "",
            "message": status.get("message") or "" if state == run_status.INTERRUPTED else "",
        }
        done = state == run_status.DONE
        for metric in metrics:
            row[metric] = results.get(metric) if done else None
        for threshold in thresholds:
            # A threshold reached is a fact even while the run goes on; "never" needs the end.
            epoch = epochs_to_threshold(records, threshold)
            row[threshold["name"]] = epoch
            row[threshold["name"] + "_reached"] = epoch is not None if done else None
        row["epochs"] = results.get("epochs") if done else _last_epoch(records)
        row["wall_seconds"] = status.get("seconds")
        row["cpu_threads"] = results.get("cpu_threads") if done else None
        row["workdir"] = run["workdir"]
        rows.append(row)
        curves[run["run_id"]] = records
        platforms[run["run_id"]] = results.get("platform") if done else None
    if invariance:
        # Only once no run runs or waits: the evaluations would take a running run's CPU, or
        # delay (and load JAX in the launcher before) starting the next one.
        waiting = (run_status.RUNNING, run_status.PENDING)
        settled = not any(row["state"] in waiting for row in rows)
        report_invariance.add_metrics(rows, invariance, evaluate=settled)
    factor_keys = {key for run in plan["runs"] for key in run["factors"]}
    all_metrics = metrics + [t["name"] for t in thresholds]
    against = report_against.parse_options(options.get("against"), factor_keys, all_metrics)
    return {
        "plan": plan,
        "rows": rows,
        "platforms": platforms,
        "curves": curves,
        "metrics": all_metrics,
        "thresholds": thresholds,
        "invariance": invariance,
        "against": against,
    }


def _last_epoch(records: list[dict]) -> float | None:
    return records[-1]["epoch"] if records else None


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def arm_summaries(collected: dict) -> dict:
    """{arm: {metric: Summary}} over the runs that are done (and thresholds reached)."""
    summaries = {}
    for arm in collected["plan"]["arms"]:
        rows = [r for r in collected["rows"] if r["arm"] == arm and r["state"] == run_status.DONE]
        summaries[arm] = {m: stats.summarize(r[m] for r in rows) for m in collected["metrics"]}
    return summaries


def comparisons(collected: dict, summaries: dict) -> list[dict]:
    """Each arm against the reference arm, per metric: difference and ratio with intervals."""
    arms = collected["plan"]["arms"]
    reference = (collected["plan"].get("report") or {}).get("reference") or arms[0]
    if reference not in summaries:
        raise UserError(
            f"report.reference {reference!r} is not an arm of the sweep: use one of {arms}"
        )
    out = []
    for arm in arms:
        if arm == reference:
            continue
        for metric in collected["metrics"]:
            a, b = summaries[arm][metric], summaries[reference][metric]
            diff = stats.welch_difference(a, b)
            ratio = stats.ratio_of_means(a, b)
            out.append(
                {
                    "arm": arm,
                    "reference": reference,
                    "metric": metric,
                    "difference": diff,
                    "ratio": ratio,
                }
            )
    return out


def thread_warnings(collected: dict) -> list[str]:
    """One warning when the finished CPU runs ran on different numbers of threads, naming each
    arm's counts; [] otherwise (or when results.json predates `cpu_threads`)."""
    counts: dict[str, set[int]] = {}
    for row in collected["rows"]:
        if row["cpu_threads"] is not None and collected["platforms"][row["run_id"]] == "cpu":
            counts.setdefault(row["arm"], set()).add(row["cpu_threads"])
    if len(set().union(*counts.values())) < 2:
        return []
    arms = "; ".join(f"{arm}: {', '.join(map(str, sorted(n)))}" for arm, n in counts.items())
    return [
        f"CPU runs used different numbers of threads (arm: cpu_threads of its runs; {arms}). "
        "XLA:CPU splits float reductions across its threads, so the same run gives slightly "
        "different numbers on 1 and 2 threads (test accuracy 0.7670 vs 0.7660 in one sweep): "
        "differences that small mix the arms' effect with the thread count. Give every run the "
        "same number of cores (the same --workers on the same machine)."
    ]


def progress_line(rows: list[dict]) -> str:
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    done = counts.get(run_status.DONE, 0)
    detail = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if state != "done")
    if done == len(rows):
        return f"complete: all {len(rows)} runs done"
    return f"PARTIAL: {done} of {len(rows)} runs done ({detail})"


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(low: float, high: float, digits: int = 4) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "-"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def summary_markdown(collected: dict, summaries: dict, compared: list[dict]) -> str:
    rows, metrics = collected["rows"], collected["metrics"]
    lines = [f"# Sweep report: {collected['plan']['base']}", "", f"**{progress_line(rows)}**", ""]
    lines += [
        line for warning in thread_warnings(collected) for line in (f"> **Warning:** {warning}", "")
    ]
    lines += [
        "Mean over seeds, sample standard deviation, 95% t interval of the mean; n = runs "
        "done (for thresholds: runs that reached it).",
        "",
    ]
    for metric in metrics:
        lines += [f"## {metric}", "", "| arm | n | mean | std | 95% CI |", "|---|---|---|---|---|"]
        for arm, by_metric in summaries.items():
            s = by_metric[metric]
            lines.append(
                f"| {arm} | {s.n} | {_fmt(s.mean)} | {_fmt(s.std)} | "
                f"{_interval(s.ci_low, s.ci_high)} |"
            )
        lines.append("")
        missed = _not_reached(collected, metric)
        if missed:
            lines += [f"Did not reach the threshold (excluded above): {missed}.", ""]
    if compared:
        lines += [
            "## Against the reference arm",
            "",
            "Difference: Welch's 95% interval. Ratio of means: delta method on the log ratio.",
            "",
            "| arm | reference | metric | difference | 95% CI | ratio | 95% CI |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in compared:
            d, r = c["difference"], c["ratio"]
            lines.append(
                f"| {c['arm']} | {c['reference']} | {c['metric']} | {_fmt(d[0])} | "
                f"{_interval(d[1], d[2])} | {_fmt(r[0], 3)} | {_interval(r[1], r[2], 3)} |"
            )
        lines.append("")
    lines += _pivot(collected, summaries)
    lines += report_invariance.summary_lines(collected, summaries)
    lines += report_against.summary_lines(collected)
    failed = [r for r in rows if r["state"] == run_status.FAILED]
    if failed:
        lines += ["## Failed runs", "", "| run | error |", "|---|---|"]
        lines += [f"| {r['run_id']} | {r['error'].replace('|', '/')} |" for r in failed]
        lines.append("")
    stopped = [r for r in rows if r["state"] == run_status.INTERRUPTED]
    if stopped:
        lines += ["## Interrupted runs (the next `cnnjax sweep` resumes them)", ""]
        lines += ["| run | message |", "|---|---|"]
        lines += [f"| {r['run_id']} | {r['message'].replace('|', '/')} |" for r in stopped]
        lines.append("")
    lines += [
        "## Runs",
        "",
        "| run | arm | seed | state | " + " | ".join(metrics) + " |",
        "|---|---|---|---|" + "---|" * len(metrics),
    ]
    for r in rows:
        values = " | ".join(_fmt(r[m]) for m in metrics)
        lines.append(f"| {r['run_id']} | {r['arm']} | {r['seed']} | {r['state']} | {values} |")
    return "\n".join(lines) + "\n"


def _not_reached(collected: dict, metric: str) -> str:
    if not any(t["name"] == metric for t in collected["thresholds"]):
        return ""
    missed = [r for r in collected["rows"] if r.get(metric + "_reached") is False]
    return ", ".join(
        f"{r['arm']} seed {r['seed']} (ran {_fmt(r['epochs'], 2)} epochs)" for r in missed
    )


def _pivot(collected: dict, summaries: dict) -> list[str]:
    """The first metric as a table of factor 1 (rows) by factor 2 (columns)."""
    runs = collected["plan"]["runs"]
    if not runs or len(runs[0].get("levels", [])) != 2:
        return []
    metric = collected["metrics"][0]
    arm_of = {tuple(r["levels"]): r["arm"] for r in runs}
    firsts = list(dict.fromkeys(k[0] for k in arm_of))
    seconds = list(dict.fromkeys(k[1] for k in arm_of))
    lines = [
        f"## {metric}: factor by factor (mean ± 95% CI half-width, n)",
        "",
        "| | " + " | ".join(seconds) + " |",
        "|---|" + "---|" * len(seconds),
    ]
    for first in firsts:
        cells = []
        for second in seconds:
            s = summaries[arm_of[(first, second)]][metric]
            cells.append(f"{_fmt(s.mean)} ± {_fmt(s.half_width)} ({s.n})" if s.n else "-")
        lines.append(f"| {first} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(sweep_dir: str) -> dict:
    """Writes `sweep_dir/report/`; returns {"progress", "paths"}."""
    from cnnjax.sweep import report_plots  # matplotlib only when writing

    collected = collect(sweep_dir)
    summaries = arm_summaries(collected)
    compared = comparisons(collected, summaries)
    out = os.path.join(sweep_dir, "report")
    os.makedirs(out, exist_ok=True)
    paths = {
        "results": os.path.join(out, "results.csv"),
        "summary": os.path.join(out, "summary.md"),
    }
    rows = collected["rows"]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(paths["results"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(paths["summary"], "w") as f:
        f.write(summary_markdown(collected, summaries, compared))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(
            {
                "progress": progress_line(rows),
                "warnings": thread_warnings(collected),
                "arms": {arm: {m: vars(s) for m, s in by.items()} for arm, by in summaries.items()},
                "comparisons": compared,
                "against": report_against.summary_json(collected),
            },
            f,
            indent=2,
            allow_nan=True,
        )
    paths.update(report_plots.draw(collected, summaries, out, partial=not _complete(rows)))
    return {"progress": progress_line(rows), "paths": paths}


def _complete(rows: list[dict]) -> bool:
    return all(r["state"] == run_status.DONE for r in rows)
