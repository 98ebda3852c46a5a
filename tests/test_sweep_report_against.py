"""The report's `against` section (a metric against a numeric factor, one line per level of
another) on run directories made in the test: numbers checked against numpy and scipy."""

import json
import os

import ml_collections
import numpy as np
import pytest
from scipy import stats as scipy_stats

from cnnjax.errors import UserError
from cnnjax.sweep import status as run_status
from cnnjax.sweep.plan import make_plan, write_plan
from cnnjax.sweep.report import write_report
from tests.conftest import RECIPE

# (optimizer, learning rate) -> test accuracy of seeds 0, 1, 2; None: the run is not done.
ACCURACY = {
    ("sgd", 0.01): [0.80, 0.81, 0.82],
    ("sgd", 0.1): [0.88, 0.89, 0.90],
    ("sgd", 0.3): [0.10, 0.10, None],  # diverged; seed 2 still pending
    ("adam", 0.001): [0.895, 0.905, 0.90],
    ("adam", 0.01): [0.893, 0.894, 0.895],
}


def _make_sweep(tmp_path, against):
    pairs = list(ACCURACY)
    sweep = ml_collections.ConfigDict()
    sweep.base = RECIPE + ":smoke"
    sweep.axes = [
        {
            "_name": "optimizer",
            "_labels": tuple(f"{name} lr={lr:g}" for name, lr in pairs),
            "optimizer.name": tuple(name for name, _ in pairs),
            "optimizer.learning_rate": tuple(lr for _, lr in pairs),
        }
    ]
    sweep.seeds = (0, 1, 2)
    sweep.report = {"metrics": ("test_accuracy",), "against": against}
    plan = make_plan(sweep, str(tmp_path / "sweep"))
    write_plan(plan)
    for run in plan.runs:
        key = (run.factors["optimizer.name"], run.factors["optimizer.learning_rate"])
        accuracy = ACCURACY[key][run.seed]
        if accuracy is None:
            continue
        os.makedirs(run.workdir)
        run_status.write_status(run.workdir, state="done", attempts=1, seconds=1.0)
        with open(os.path.join(run.workdir, "results.json"), "w") as f:
            json.dump({"test_accuracy": accuracy, "epochs": 1.0}, f)
    return plan


def test_lines_points_best_and_sensitivity_match_numpy(tmp_path):
    against = [
        {"x": "optimizer.learning_rate", "lines": "optimizer.name", "log_x": True},
    ]
    plan = _make_sweep(tmp_path, against)
    written = write_report(plan.sweep_dir)
    assert os.path.getsize(written["paths"]["test_accuracy_vs_learning_rate"]) > 10_000
    summary = json.load(open(os.path.join(plan.sweep_dir, "report", "summary.json")))
    (entry,) = summary["against"]
    assert entry["x"] == "optimizer.learning_rate" and entry["tolerance"] == 0.01
    lines = entry["lines_by_value"]
    assert list(lines) == ["sgd", "adam"]
    for name, line in lines.items():
        rates = sorted(lr for n, lr in ACCURACY if n == name)
        assert [p["x"] for p in line["points"]] == rates
        means = []
        for point, lr in zip(line["points"], rates, strict=True):
            values = [v for v in ACCURACY[(name, lr)] if v is not None]
            assert point["values"] == values
            assert point["n"] == len(values)
            assert point["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            half = scipy_stats.t.ppf(0.975, len(values) - 1) * scipy_stats.sem(values)
            assert (point["ci_high"] - point["ci_low"]) / 2 == pytest.approx(half, rel=1e-9)
            means.append(np.mean(values))
        assert line["best_x"] == rates[int(np.argmax(means))]
        assert line["best_mean"] == pytest.approx(max(means))
        assert line["range"] == pytest.approx(max(means) - min(means))
        assert line["near_best"] == sum(m >= max(means) - 0.01 for m in means)
        assert line["of"] == len(rates)
    # sgd: best 0.1 (0.89), the two others more than a point away; adam: both within a point
    assert (lines["sgd"]["best_x"], lines["sgd"]["near_best"]) == (0.1, 1)
    assert lines["sgd"]["range"] == pytest.approx(0.89 - 0.10)
    assert (lines["adam"]["best_x"], lines["adam"]["near_best"]) == (0.001, 2)

    text = open(written["paths"]["summary"]).read()
    assert "## test_accuracy against optimizer.learning_rate, per optimizer.name" in text
    assert "| optimizer.name | 0.001 | 0.01 | 0.1 | 0.3 | best x | best mean |" in text
    assert "| sgd |  | 0.8100 ± 0.0248 (3) | 0.8900 ± 0.0248 (3) | 0.1000 ± 0.0000 (2) |" in text
    assert "| 0.1 | 0.8900 | 0.7900 | 1 of 3 |" in text


def test_min_best_and_one_line_without_a_lines_factor(tmp_path):
    against = {"x": "optimizer.learning_rate", "best": "min", "tolerance": 0.0}
    plan = _make_sweep(tmp_path, against)
    write_report(plan.sweep_dir)
    summary = json.load(open(os.path.join(plan.sweep_dir, "report", "summary.json")))
    (line,) = summary["against"][0]["lines_by_value"].values()
    # all runs pooled per rate: 0.01 holds sgd's and adam's seeds
    at = {p["x"]: p for p in line["points"]}
    assert at[0.01]["n"] == 6
    assert at[0.01]["mean"] == pytest.approx(np.mean([0.80, 0.81, 0.82, 0.893, 0.894, 0.895]))
    assert (line["best_x"], line["best_mean"], line["near_best"]) == (0.3, 0.10, 1)


@pytest.mark.parametrize(
    "against, message",
    [
        ({"x": "optimizer.lr"}, "x='optimizer.lr' is not a factor of the sweep"),
        ({"x": "optimizer.name"}, "takes the value 'sgd', not a number"),
        ({"lines": "optimizer.name"}, "give {'x': factor key"),
        ({"x": "optimizer.learning_rate", "colour": 1}, "(unknown: colour)"),
        ({"x": "optimizer.learning_rate", "metric": "top5"}, "metric='top5': use one of"),
        ({"x": "optimizer.learning_rate", "best": "high"}, "best='high': use 'max' or 'min'"),
        ({"x": "optimizer.learning_rate", "tolerance": -1}, "tolerance=-1: give a number >= 0"),
    ],
)
def test_mistakes_get_one_line(tmp_path, against, message):
    plan = _make_sweep(tmp_path, against)
    with pytest.raises(UserError, match=None) as raised:
        write_report(plan.sweep_dir)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
