"""The report's figures: learning curves per arm with 95% bands, a bar chart per arm, test
accuracy against each invariance transform's value per arm, and a metric against a numeric
factor per level of another (report.against)."""

from __future__ import annotations

import math
import os
from collections import defaultdict

from matplotlib.figure import Figure  # not pyplot: the process's backend is the user's

from cnnjax.sweep import report_against, report_invariance, stats

# The report's `curves` when the sweep config names none: [split, key] per panel.
DEFAULT_CURVES = (("test", "accuracy"), ("train", "accuracy"))


def arm_curve(series: list[list[tuple[float, float]]]):
    """Mean and 95% band over seeds at each epoch logged by the runs: (epochs, mean, lo, hi)."""
    by_epoch = defaultdict(list)
    for points in series:
        for epoch, value in points:
            by_epoch[round(epoch, 6)].append(value)
    epochs = sorted(by_epoch)
    summaries = [stats.summarize(by_epoch[e]) for e in epochs]
    mean = [s.mean for s in summaries]
    low = [s.ci_low if math.isfinite(s.ci_low) else s.mean for s in summaries]
    high = [s.ci_high if math.isfinite(s.ci_high) else s.mean for s in summaries]
    return epochs, mean, low, high


def draw(collected: dict, summaries: dict, out: str, *, partial: bool) -> dict:
    curves = [tuple(c) for c in (collected["plan"].get("report") or {}).get("curves") or ()]
    curves = curves or list(DEFAULT_CURVES)
    suffix = " (PARTIAL)" if partial else ""
    paths = {"curves": os.path.join(out, "curves.png")}
    fig = Figure(figsize=(5.5 * len(curves), 4))
    axes = fig.subplots(1, len(curves), squeeze=False)
    arms = collected["plan"]["arms"]
    # Past the 10 colours of the cycle, dashes and dots tell the arms apart; many arms get one
    # legend beside the panels instead of one over each.
    styles = {arm: ("-", "--", ":", "-.")[(i // 10) % 4] for i, arm in enumerate(arms)}
    side_legend = len(arms) > 8
    for ax, (split, key) in zip(axes[0], curves, strict=True):
        for arm in arms:
            series = [
                [
                    (r["epoch"], r[key])
                    for r in collected["curves"][row["run_id"]]
                    if r.get("split") == split and key in r
                ]
                for row in collected["rows"]
                if row["arm"] == arm
            ]
            series = [s for s in series if s]
            if not series:
                continue
            epochs, mean, low, high = arm_curve(series)
            (line,) = ax.plot(
                epochs, mean, styles[arm], label=f"{arm} (n={len(series)})", linewidth=1.4
            )
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        for threshold in collected["thresholds"]:
            if threshold["split"] == split and threshold["key"] == key:
                value = threshold.get("at_least", threshold.get("at_most"))
                ax.axhline(value, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{split} {key}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and not side_legend:
            ax.legend(fontsize=7)
    fig.suptitle(f"mean over seeds, 95% band{suffix}")
    fig.tight_layout()
    if side_legend and axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.savefig(paths["curves"], dpi=120, bbox_inches="tight")

    for metric in collected["metrics"][:1] + [t["name"] for t in collected["thresholds"]]:
        paths[metric] = _bars(
            collected, summaries, metric, os.path.join(out, f"{metric}.png"), suffix
        )
    for kind, values in (collected.get("invariance") or {}).items():
        path = os.path.join(out, f"invariance_{kind}.png")
        paths[f"invariance_{kind}"] = _invariance(collected, summaries, kind, values, path, suffix)
    for entry in collected.get("against") or ():
        name = report_against.plot_name(entry)
        paths[name] = _against(collected, entry, os.path.join(out, f"{name}.png"), suffix)
    return paths


def _against(collected: dict, entry: dict, path: str, suffix: str) -> str:
    """The metric against x, one line per `lines` value: the mean over seeds with its 95%
    interval as error bars, each seed a dot, and each line's best marked with a star."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    by_line = report_against.series(collected, entry)
    xs = sorted({x for points in by_line.values() for x, *_ in points})
    for index, (line, points) in enumerate(by_line.items()):
        shown = [(x, s, values) for x, s, values in points if s.n]
        if not shown:
            continue
        # Each line a little to the side of the others, so that error bars at one x stay apart.
        dodge = _dodge(xs, index - (len(by_line) - 1) / 2, log=entry["log_x"])
        color = _mean_line(ax, [(dodge(x), s) for x, s, _ in shown], index, line)
        for x, _, values in shown:
            ax.plot([dodge(x)] * len(values), values, ".", color=color, markersize=3, alpha=0.5)
        best = report_against.line_summary(points, entry)
        ax.plot(dodge(best["best_x"]), best["best_mean"], "*", color=color, markersize=11)
    if entry["log_x"]:
        ax.set_xscale("log")
    if len(xs) <= 12:  # the sweep's own values, not the axis's powers of ten
        ax.set_xticks(xs, [f"{x:g}" for x in xs], minor=False)
        ax.minorticks_off()
    ax.set_xlabel(entry["x"])
    ax.set_ylabel(entry["metric"])
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best", title=entry["lines"], title_fontsize=7)
    ax.set_title(f"{entry['metric']}: mean and 95% CI over seeds, * best per line{suffix}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _invariance(collected: dict, summaries: dict, kind: str, values, path: str, suffix: str) -> str:
    """Test accuracy against the transform's value, one line per arm: the mean over seeds with
    its 95% interval as error bars (report.invariance; cnnjax/sweep/report_invariance.py)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for index, arm in enumerate(collected["plan"]["arms"]):
        cells = [summaries[arm][report_invariance.metric_name(kind, v)] for v in values]
        shown = [(v, c) for v, c in zip(values, cells, strict=True) if c.n]
        if not shown:
            continue
        _mean_line(ax, shown, index, arm)
    note = " (mean of 4 directions)" if kind == "shift" else ""
    ax.set_xlabel(f"{kind} ({report_invariance.UNITS[kind]}){note}")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(list(values))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.set_title(f"test accuracy under {kind}: mean and 95% CI over seeds{suffix}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _mean_line(ax, points: list, index: int, label: str) -> str:
    """One line of (x, Summary) points: the means with their 95% intervals as error bars;
    returns its colour."""
    errors = [s.half_width if math.isfinite(s.half_width) else 0.0 for _, s in points]
    bars = ax.errorbar(
        [x for x, _ in points],
        [s.mean for _, s in points],
        yerr=errors,
        capsize=3,
        marker="o",
        markersize=4,
        linewidth=1.3,
        # Past the 10 colours of the cycle, dashes tell the lines apart.
        linestyle="-" if index < 10 else "--",
        label=f"{label} (n={max(s.n for _, s in points)})",
    )
    return bars.lines[0].get_color()


def _dodge(xs: list[float], offset: float, *, log: bool):
    """x moved by `offset` hundredths of the axis' span (in log10 units on a log axis)."""
    if log:
        span = math.log10(xs[-1] / xs[0]) if len(xs) > 1 else 1.0
        return lambda x: x * 10 ** (0.01 * offset * span)
    span = xs[-1] - xs[0] if len(xs) > 1 else 1.0
    return lambda x: x + 0.01 * offset * span


def _bars(collected: dict, summaries: dict, metric: str, path: str, suffix: str) -> str:
    arms = collected["plan"]["arms"]
    means = [summaries[a][metric].mean for a in arms]
    errors = [summaries[a][metric].half_width for a in arms]
    errors = [e if math.isfinite(e) else 0.0 for e in errors]
    fig = Figure(figsize=(max(5, 1.1 * len(arms) + 2), 4))
    ax = fig.subplots()
    ax.bar(
        range(len(arms)),
        [m if math.isfinite(m) else 0 for m in means],
        yerr=errors,
        capsize=4,
        color="tab:blue",
        alpha=0.8,
    )
    for index, arm in enumerate(arms):  # each seed as a dot over its arm's bar
        values = [
            r[metric]
            for r in collected["rows"]
            if r["arm"] == arm and r["state"] == "done" and r[metric] is not None
        ]
        ax.plot([index] * len(values), values, "k.", markersize=4)
        n = summaries[arm][metric].n
        note = f"n={n}" if n else ("not reached" if _is_threshold(collected, metric) else "no runs")
        ax.annotate(
            note,
            (index, 0),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            xycoords=("data", "axes fraction"),
        )
    finite = [m for m in means if math.isfinite(m)]
    if finite and metric.endswith("accuracy"):
        ax.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.03))
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([a.replace(", ", "\n") for a in arms], fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean and 95% CI over seeds{suffix}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _is_threshold(collected: dict, metric: str) -> bool:
    return any(t["name"] == metric for t in collected["thresholds"])
