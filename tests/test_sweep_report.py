"""`cnnjax report` on run directories made in the test: every number checked against numpy/scipy."""

import csv
import json
import os

import ml_collections
import numpy as np
import pytest
from scipy import stats as scipy_stats

from cnnjax.sweep import status as run_status
from cnnjax.sweep.plan import make_plan, write_plan
from cnnjax.sweep.report import epochs_to_threshold, write_report
from tests.conftest import RECIPE

# test accuracy of each arm's seeds 0, 1, 2 (dropout x augment)
ACCURACY = {
    ("dropout=0.0", "aug=none"): [0.80, 0.82, 0.84],
    ("dropout=0.0", "aug=flip"): [0.85, 0.86, 0.90],
    ("dropout=0.5", "aug=none"): [0.81, 0.83, None],  # seed 2 failed
    ("dropout=0.5", "aug=flip"): [0.88, None, None],  # seeds 1, 2 not started
}


def _make_sweep(tmp_path):
    sweep = ml_collections.ConfigDict()
    sweep.base = RECIPE + ":smoke"
    sweep.axes = [
        {"_name": "dropout", "model.dropout_rate": (0.0, 0.5)},
        {
            "_name": "aug",
            "_labels": ("none", "flip"),
            "data.augment.horizontal_flip": (False, True),
        },
    ]
    sweep.seeds = (0, 1, 2)
    sweep.report = {
        "metrics": ("test_accuracy",),
        "thresholds": [
            {"name": "epochs_to_80", "split": "train", "key": "accuracy", "at_least": 0.8}
        ],
    }
    plan = make_plan(sweep, str(tmp_path / "sweep"))
    write_plan(plan)
    for run in plan.runs:
        accuracy = ACCURACY[run.levels][run.seed]
        os.makedirs(run.workdir)
        if run.levels == ("dropout=0.5", "aug=none") and run.seed == 2:
            run_status.write_status(run.workdir, state="failed", error="cnnjax train: error: boom")
        if accuracy is None:
            continue
        run_status.write_status(run.workdir, state="done", attempts=1, seconds=10.0)
        with open(os.path.join(run.workdir, "results.json"), "w") as f:
            json.dump({"test_accuracy": accuracy, "epochs": 2.0}, f)
        with open(os.path.join(run.workdir, "metrics.jsonl"), "w") as f:
            for epoch, value in ((0.5, accuracy - 0.1), (1.0 + run.seed, accuracy), (2.0, 0.99)):
                f.write(
                    json.dumps({"step": 1, "split": "train", "epoch": epoch, "accuracy": value})
                )
                f.write("\n")
    return plan


def test_report_rows_means_intervals_differences_and_pivot(tmp_path):
    plan = _make_sweep(tmp_path)
    written = write_report(plan.sweep_dir)
    assert written["progress"] == "PARTIAL: 9 of 12 runs done (1 failed, 2 pending)"
    with open(written["paths"]["results"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    assert [r["state"] for r in rows].count("failed") == 1
    assert next(r for r in rows if r["state"] == "failed")["error"] == "cnnjax train: error: boom"

    summary = json.load(open(os.path.join(plan.sweep_dir, "report", "summary.json")))
    arms = summary["arms"]
    assert list(arms) == [
        "dropout=0.0, aug=none",
        "dropout=0.0, aug=flip",
        "dropout=0.5, aug=none",
        "dropout=0.5, aug=flip",
    ]
    flip = [0.85, 0.86, 0.90]
    got = arms["dropout=0.0, aug=flip"]["test_accuracy"]
    half = scipy_stats.t.ppf(0.975, 2) * np.std(flip, ddof=1) / np.sqrt(3)
    assert got["n"] == 3
    assert got["mean"] == pytest.approx(np.mean(flip))
    assert got["ci_high"] - got["mean"] == pytest.approx(half)
    assert arms["dropout=0.5, aug=none"]["test_accuracy"]["n"] == 2
    assert arms["dropout=0.5, aug=flip"]["test_accuracy"]["n"] == 1
    # Thresholds: the first train record at or above 0.8 is epoch 0.5 when accuracy >= 0.9.
    assert arms["dropout=0.0, aug=none"]["epochs_to_80"]["mean"] == pytest.approx((1 + 2 + 3) / 3)
    assert arms["dropout=0.0, aug=flip"]["epochs_to_80"]["mean"] == pytest.approx((1 + 2 + 0.5) / 3)

    compared = {(c["arm"], c["metric"]): c for c in summary["comparisons"]}
    diff = compared[("dropout=0.0, aug=flip", "test_accuracy")]["difference"]
    assert diff[0] == pytest.approx(np.mean(flip) - 0.82)
    welch = scipy_stats.ttest_ind(flip, [0.80, 0.82, 0.84], equal_var=False)
    assert (diff[2] - diff[1]) / 2 == pytest.approx(
        abs(diff[0] / welch.statistic) * scipy_stats.t.ppf(0.975, welch.df)
    )

    markdown = open(written["paths"]["summary"]).read()
    assert "**PARTIAL: 9 of 12 runs done (1 failed, 2 pending)**" in markdown
    assert "| | aug=none | aug=flip |" in markdown
    assert (
        f"| dropout=0.0 | 0.8200 ± {0.02 * scipy_stats.t.ppf(0.975, 2) / np.sqrt(3):.4f} (3) | "
        in markdown
    )
    assert "| dropout=0.5 | 0.8200 ± " in markdown and "0.8800 ± - (1) |" in markdown
    for name in ("curves", "test_accuracy", "epochs_to_80"):
        assert os.path.getsize(written["paths"][name]) > 5_000


def test_threshold_is_the_first_crossing_and_none_when_never():
    records = [
        {"split": "train", "epoch": 0.1, "accuracy": 0.5},
        {"split": "test", "epoch": 0.2, "accuracy": 0.95},
        {"split": "train", "epoch": 0.3, "accuracy": 0.91},
        {"split": "train", "epoch": 0.4, "accuracy": 0.85},
    ]
    assert (
        epochs_to_threshold(records, {"split": "train", "key": "accuracy", "at_least": 0.9}) == 0.3
    )
    assert (
        epochs_to_threshold(records, {"split": "train", "key": "accuracy", "at_most": 0.5}) == 0.1
    )
    assert (
        epochs_to_threshold(records, {"split": "train", "key": "accuracy", "at_least": 0.99})
        is None
    )


def _two_arms() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.base = RECIPE + ":smoke"
    sweep.axes = [{"_name": "dropout", "model.dropout_rate": (0.0, 0.5)}]
    sweep.seeds = (0, 1)
    return sweep


def _two_arm_sweep(tmp_path, runs: dict):
    """Two arms x two seeds; `runs[(arm index, seed)]` = (state, results.json or status fields)."""
    plan = make_plan(_two_arms(), str(tmp_path / "sweep"))
    write_plan(plan)
    for run in plan.runs:
        state, fields = runs[(plan.arms.index(run.arm), run.seed)]
        os.makedirs(run.workdir)
        if state == "done":
            run_status.write_status(run.workdir, state="done", attempts=1, seconds=10.0)
            with open(os.path.join(run.workdir, "results.json"), "w") as f:
                json.dump({"test_accuracy": 0.8, **fields}, f)
        else:
            run_status.write_status(run.workdir, state=state, attempts=1, **fields)
    return plan


def _done(threads: int, platform: str = "cpu") -> tuple:
    return "done", {"cpu_threads": threads, "platform": platform}


THREADS_WARNING = (
    "CPU runs used different numbers of threads (arm: cpu_threads of its runs; dropout=0.0: "
    "1, 2; dropout=0.5: 2). XLA:CPU splits float reductions across its threads, so the same run "
    "gives slightly different numbers on 1 and 2 threads (test accuracy 0.7670 vs 0.7660 in one "
    "sweep): differences that small mix the arms' effect with the thread count. Give every run "
    "the same number of cores (the same --workers on the same machine)."
)


@pytest.mark.parametrize(
    "runs, warnings",
    [
        (
            {(0, 0): _done(1), (0, 1): _done(2), (1, 0): _done(2), (1, 1): _done(2)},
            [THREADS_WARNING],
        ),
        ({(0, 0): _done(2), (0, 1): _done(2), (1, 0): _done(2), (1, 1): _done(2)}, []),
        # On a GPU the threads do not change the numbers; results.json from before cpu_threads.
        (
            {(0, 0): _done(1, "gpu"), (0, 1): _done(2, "gpu"), (1, 0): _done(2), (1, 1): _done(2)},
            [],
        ),
        ({(0, 0): ("done", {}), (0, 1): _done(2), (1, 0): _done(2), (1, 1): _done(2)}, []),
    ],
)
def test_report_warns_when_cpu_runs_used_different_thread_counts(tmp_path, runs, warnings):
    plan = _two_arm_sweep(tmp_path, runs)
    written = write_report(plan.sweep_dir)
    summary = json.load(open(os.path.join(plan.sweep_dir, "report", "summary.json")))
    assert summary["warnings"] == warnings
    markdown = open(written["paths"]["summary"]).read()
    assert markdown.count("> **Warning:**") == len(warnings)
    for warning in warnings:
        assert f"\n\n> **Warning:** {warning}\n\n" in markdown
    with open(written["paths"]["results"]) as f:
        threads = [r["cpu_threads"] for r in csv.DictReader(f)]
    assert threads == [
        str(runs[(arm, seed)][1].get("cpu_threads", "")) for arm in (0, 1) for seed in (0, 1)
    ]


def test_interrupted_runs_are_listed_with_their_line_and_resumed_by_the_next_sweep(
    tmp_path, capsys
):
    line = "cnnjax train: interrupted by SIGTERM at step 30 of 60: checkpoint 30 is saved in /c"
    stopped = ("interrupted", {"returncode": 143, "message": line})
    runs = {(0, 0): _done(2), (0, 1): stopped, (1, 0): _done(2), (1, 1): ("running", {})}
    plan = _two_arm_sweep(tmp_path, runs)
    written = write_report(plan.sweep_dir)
    # A "running" status with a free lock (a killed worker) reads as interrupted too.
    assert written["progress"] == "PARTIAL: 2 of 4 runs done (2 interrupted)"
    with open(written["paths"]["results"]) as f:
        rows = {r["run_id"]: r for r in csv.DictReader(f)}
    stopped_id, killed_id = plan.runs[1].run_id, plan.runs[3].run_id
    assert (rows[stopped_id]["state"], rows[stopped_id]["message"], rows[stopped_id]["error"]) == (
        "interrupted",
        line,
        "",
    )
    markdown = open(written["paths"]["summary"]).read()
    assert (
        "## Interrupted runs (the next `cnnjax sweep` resumes them)\n\n"
        f"| run | message |\n|---|---|\n| {stopped_id} | {line} |\n| {killed_id} |  |\n" in markdown
    )
    assert "## Failed runs" not in markdown

    from cnnjax.sweep import command

    code = command.sweep(_two_arms(), "", plan.sweep_dir, workers=1, launcher="local", dry_run=True)
    assert code == 0
    out = capsys.readouterr().out
    assert "(2 done, 2 interrupted)" in out
    assert f"[0] {stopped_id}\n" in out and f"[1] {killed_id}\n" in out and "[2]" not in out


def test_results_record_the_cpus_the_process_may_run_on():
    from cnnjax.train.run_record import environment

    cpus = os.sched_getaffinity(0)
    assert environment()["cpu_threads"] == len(cpus)
    os.sched_setaffinity(0, {min(cpus)})  # this thread only: XLA's own threads keep theirs
    try:
        assert environment()["cpu_threads"] == 1
    finally:
        os.sched_setaffinity(0, cpus)
