"""The sweep report's invariance metrics (report.invariance, cnnjax/sweep/report_invariance.py):
each run's accuracy under test-time shifts equals `cnnjax eval --shift`'s, is cached in its
workdir and read back, and is summarized over seeds like any metric."""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest
from scipy import stats as scipy_stats

from cnnjax import load_config, train_and_evaluate
from cnnjax.data.perturbations import permute_pixels, shift_images
from cnnjax.errors import UserError
from cnnjax.inspect.invariance import invariance_workdir
from cnnjax.sweep import report_invariance
from cnnjax.sweep import status as run_status
from cnnjax.sweep.plan import make_plan, write_plan
from cnnjax.sweep.report import write_report
from cnnjax.train.trained_run import load_trained_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(ROOT, "experiments", "why_convolution")
SEED = 5  # the shuffled arm's permutation


def _plan(tmp_path, report: dict, *, seeds=(0,), axes=None):
    sweep = ml_collections.ConfigDict()
    sweep.base = os.path.join(STUDY, "recipe.py:smoke")  # 4 steps on 256 images, 200 test
    sweep.overrides = {"model": {"name": "logistic"}}  # compiles and trains in a second
    sweep.axes = axes or [
        {
            "_name": "pixels",
            "_labels": ("plain", "shuffled"),
            "data.pixel_permutation_seed": (-1, SEED),
        }
    ]
    sweep.seeds = seeds
    sweep.report = report
    plan = make_plan(sweep, str(tmp_path / "sweep"))
    write_plan(plan)
    return plan


def _train(run, data_dir) -> dict:
    """Trains `run` of a plan in this process, as `cnnjax sweep` would; its results.json."""
    overrides = [a for a in run.train_args if a.startswith("--config.")]
    config = load_config(run.train_args[1].removeprefix("--config="), overrides)
    config.data.data_dir = data_dir
    outcome = train_and_evaluate(config, run.workdir)
    run_status.write_status(run.workdir, state="done", attempts=1, seconds=1.0)
    return outcome.results


def test_report_evaluates_each_run_once_as_cnnjax_eval_does(tmp_path, data_dir, monkeypatch):
    plan = _plan(tmp_path, {"metrics": ("test_accuracy",), "invariance": {"shift": (0, 1)}})
    plain, shuffled = plan.runs
    results = {run.run_id: _train(run, data_dir) for run in plan.runs}

    write_report(plan.sweep_dir)
    summary = json.load(open(os.path.join(plan.sweep_dir, "report", "summary.json")))
    arms = summary["arms"]
    for run in plan.runs:
        cached = json.load(open(os.path.join(run.workdir, report_invariance.CACHE_FILE)))
        assert cached["step"] == results[run.run_id]["steps"] == 4
        got = report_invariance.accuracies(cached["curves"], {"shift": (0, 1)})
        # Unshifted: the final evaluation's weights and images, so results.json's accuracy.
        assert got["test_accuracy_shift_0"] == results[run.run_id]["test_accuracy"]
        assert arms[run.arm]["test_accuracy_shift_1"]["mean"] == got["test_accuracy_shift_1"]

    # The plain run: what `cnnjax eval --shift=0,1` finds.
    evaluated = invariance_workdir(plain.workdir, "latest", shifts=[0, 1])
    shift_1 = evaluated["shift"][1]["accuracy"]
    assert arms[plain.arm]["test_accuracy_shift_1"]["mean"] == shift_1
    assert 0.3 < shift_1 < evaluated["shift"][0]["accuracy"]  # learned something; shifts hurt

    # The shuffled run: a shift moves the object, then the run's shuffle applies.
    trained = load_trained_run(shuffled.workdir, "latest")
    trained.input.pixel_permutation_seed = -1  # its raw test images, transformed here

    def accuracy(transform) -> float:
        sums = trained.evaluation_sums(transform=transform)
        return int(sums["top_1_correct"]) / int(sums["count"])

    trained_on = accuracy(lambda x: permute_pixels(x, SEED))  # what it was trained to see
    assert trained_on == results[shuffled.run_id]["test_accuracy"]
    moved_right = accuracy(lambda x: permute_pixels(shift_images(x, 0, 1), SEED))
    cached = json.load(open(os.path.join(shuffled.workdir, report_invariance.CACHE_FILE)))
    assert cached["curves"]["shift"][1]["directions"]["right"]["accuracy"] == moved_right
    # `cnnjax eval --shift` on the shuffled run moves the object too.
    (row,) = invariance_workdir(shuffled.workdir, "latest", shifts=[1])["shift"]
    assert row["value"] == 1 and row["directions"]["right"]["accuracy"] == moved_right

    # A second report reads the caches: no run is evaluated again.
    def refuse(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(report_invariance, "evaluate_run", refuse)
    write_report(plan.sweep_dir)
    markdown = open(os.path.join(plan.sweep_dir, "report", "summary.md")).read()
    assert "## Test accuracy under shift (pixels, the mean of 4 directions)" in markdown
    assert os.path.getsize(os.path.join(plan.sweep_dir, "report", "invariance_shift.png")) > 5_000


def _fake_run(run, steps: int, accuracies: dict | None) -> None:
    """A done run with results.json and, if `accuracies` ({shift: accuracy}), a cache at
    `steps`."""
    os.makedirs(os.path.join(run.workdir, "eval"), exist_ok=True)
    run_status.write_status(run.workdir, state="done", attempts=1, seconds=1.0)
    with open(os.path.join(run.workdir, "results.json"), "w") as f:
        json.dump({"test_accuracy": accuracies[0] if accuracies else 0.5, "steps": steps}, f)
    if accuracies:
        rows = [{"value": v, "accuracy": a, "loss": 1.0, "n": 200} for v, a in accuracies.items()]
        cache = {"step": steps, "asked": {"shift": list(accuracies)}, "curves": {"shift": rows}}
        with open(os.path.join(run.workdir, report_invariance.CACHE_FILE), "w") as f:
            json.dump(cache, f)


def test_summary_gives_each_shift_the_mean_and_t_interval_over_seeds(tmp_path, monkeypatch):
    axes = [{"_name": "pixels", "_labels": ("plain",), "data.pixel_permutation_seed": (-1,)}]
    report = {"metrics": ("test_accuracy",), "invariance": {"shift": (0, 2)}}
    plan = _plan(tmp_path, report, seeds=(0, 1, 2), axes=axes)
    at_2 = [0.61, 0.64, 0.70]
    for run, value in zip(plan.runs, at_2, strict=True):
        _fake_run(run, 40, {0: 0.8, 2: value})
    monkeypatch.setattr(report_invariance, "evaluate_run", None)  # every value is cached

    write_report(plan.sweep_dir)
    summary = json.load(open(os.path.join(plan.sweep_dir, "report", "summary.json")))
    got = summary["arms"]["pixels=plain"]["test_accuracy_shift_2"]
    half = scipy_stats.t.ppf(0.975, 2) * np.std(at_2, ddof=1) / np.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(np.mean(at_2))
    assert got["ci_high"] - got["mean"] == pytest.approx(half)
    markdown = open(os.path.join(plan.sweep_dir, "report", "summary.md")).read()
    assert "| arm | 0 | 2 |" in markdown
    assert f"| pixels=plain | 0.8000 ± 0.0000 (3) | {np.mean(at_2):.4f} ± {half:.4f} (3) |" in (
        markdown
    )


def test_while_a_run_runs_or_waits_stale_caches_are_left_for_later(tmp_path, monkeypatch):
    axes = [{"_name": "pixels", "_labels": ("plain",), "data.pixel_permutation_seed": (-1,)}]
    plan = _plan(tmp_path, {"invariance": {"shift": (0, 2)}}, seeds=(0, 1, 2), axes=axes)
    fresh, stale, running = plan.runs
    _fake_run(fresh, 40, {0: 0.8, 2: 0.6})
    _fake_run(stale, 50, None)
    shutil.copy(  # a cache of an earlier step: the run trained further since
        os.path.join(fresh.workdir, report_invariance.CACHE_FILE),
        os.path.join(stale.workdir, report_invariance.CACHE_FILE),
    )
    lock = run_status.try_lock(running.workdir)  # as the run's worker holds it
    monkeypatch.setattr(report_invariance, "evaluate_run", None)  # must not be called
    try:
        write_report(plan.sweep_dir)
    finally:
        lock.close()
    assert run_status.run_state(running.workdir)[0] == run_status.PENDING
    write_report(plan.sweep_dir)  # a run waiting to start holds the evaluations back too
    summary = json.load(open(os.path.join(plan.sweep_dir, "report", "summary.json")))
    assert summary["arms"]["pixels=plain"]["test_accuracy_shift_2"]["n"] == 1
    markdown = open(os.path.join(plan.sweep_dir, "report", "summary.md")).read()
    assert (
        "Invariance metrics of 1 done runs are not evaluated yet: they are evaluated once no "
        "run of the sweep is running or pending (`cnnjax report` then)." in markdown
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"turn": (0, 1)}, "report.invariance: unknown transform 'turn'; use shift, rotate,"),
        ({"shift": (0, -1)}, "report.invariance.shift=(0, -1): give pixels >= 0"),
        ({"shift": (0, 1.5)}, "report.invariance.shift=(0, 1.5): give whole numbers"),
        ({"scale": (0.0,)}, "report.invariance.scale=(0.0,): give > 0"),
        ((0, 1), "report.invariance=(0, 1): give {kind: values}"),
    ],
)
def test_bad_invariance_options_are_one_line(options, message):
    with pytest.raises(UserError) as raised:
        report_invariance.parse_options(options)
    assert str(raised.value).startswith(message)
    assert report_invariance.parse_options({"shift": [0, 2]}) == {"shift": (0, 2)}
    assert report_invariance.metric_names({"shift": (0, 2), "scale": (0.9,)}) == [
        "test_accuracy_shift_0",
        "test_accuracy_shift_2",
        "test_accuracy_scale_0.9",
    ]
