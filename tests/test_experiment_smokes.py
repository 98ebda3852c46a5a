"""Every study in experiments/ runs: its `config.py:smoke=True` sweep, start to report.

Each folder of experiments/ with a config.py is found here, so a new study is covered by adding
it. Its smoke sweep runs through `cnnjax sweep --launcher=inline` in this process
(cnnjax/sweep/inline_executor.py, the same runs as `cnnjax train` processes, without a JAX
start per run) on the suite's offline Fashion-MNIST, and the test checks the numbers the study's
README would be built from: every planned run done, the report's files written with one row
per run, accuracies in [0, 1] and the other metrics finite.
"""

import csv
import json
import math
import os

import pytest

from cnnjax import load_config, train_and_evaluate
from cnnjax.sweep import command as sweep_command
from cnnjax.sweep import status as run_status
from tests.conftest import ROOT

EXPERIMENTS = os.path.join(ROOT, "experiments")
STUDIES = sorted(
    name
    for name in os.listdir(EXPERIMENTS)
    if os.path.isfile(os.path.join(EXPERIMENTS, name, "config.py"))
)
# Written by every report (cnnjax/sweep/report.py); plots only where there are numbers to draw.
REPORT_FILES = ("results.csv", "summary.md", "summary.json", "curves.png")


def _finetune_arguments(tmp_path) -> str:
    """The fine-tuning sweep starts from a pretrained run (experiments/finetune/README.md): the
    smoke variant of pretrain.py on fewer images (3 steps on the 320 images of its five classes
    among the first 640; the sweep needs its weights, not their quality)."""
    pretrained = str(tmp_path / "finetune_pretrain")
    config = load_config(
        os.path.join(EXPERIMENTS, "finetune", "pretrain.py:smoke=True"),
        {"data.train_split": "train[:640]", "data.eval_split": "test[:200]"},
    )
    train_and_evaluate(config, pretrained)
    return f"pretrained={pretrained}"


# Studies whose sweep needs something made first: a function of the test's tmp_path that makes
# it and returns the extra `config.py:` arguments that point the sweep at it.
PREREQUISITES = {"finetune": _finetune_arguments}


def _report_rows(sweep_dir: str) -> list[dict]:
    with open(os.path.join(sweep_dir, "report", "results.csv")) as f:
        return list(csv.DictReader(f))


# Studies older than this file, whose parts the default suite checks elsewhere (finetune:
# test_finetune.py; relu_vs_tanh's smoke sweep: test_remote_workdir.py; bf16 and dropout:
# test_parallel.py and test_sweep_run.py): their smoke sweeps cost 61 CPU seconds on a cold
# compilation cache, so they run with `-m slow`, and the default suite keeps to 6 minutes.
SLOW_STUDIES = {"finetune", "bf16_vs_fp32", "dropout_vs_augmentation", "relu_vs_tanh"}


@pytest.mark.parametrize(
    "study",
    [pytest.param(s, marks=pytest.mark.slow) if s in SLOW_STUDIES else s for s in STUDIES],
)
def test_the_smoke_sweep_of_every_study_runs_to_a_full_report(
    study, tmp_path, data_dir, monkeypatch, capsys
):
    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)  # the runs read it, as `cnnjax train` does
    arguments = ["smoke=True"]
    if study in PREREQUISITES:
        arguments.append(PREREQUISITES[study](tmp_path))
    config_file = os.path.join(EXPERIMENTS, study, "config.py")
    sweep = load_config(f"{config_file}:{','.join(arguments)}")
    sweep_dir = str(tmp_path / "sweep")

    status = sweep_command.sweep(
        sweep, config_file, sweep_dir, workers=1, launcher="inline", dry_run=False
    )

    with open(os.path.join(sweep_dir, "sweep.json")) as f:
        plan = json.load(f)
    failures = {
        run["run_id"]: run_status.read_status(run["workdir"]).get("error")
        for run in plan["runs"]
        if run_status.run_state(run["workdir"])[0] != run_status.DONE
    }
    assert failures == {}, capsys.readouterr().out
    assert status == 0
    assert 1 <= len(plan["runs"]) <= 8, "a smoke sweep is a few runs: shrink its smoke branch"
    for name in REPORT_FILES:
        assert os.path.getsize(os.path.join(sweep_dir, "report", name)) > 0, name
    rows = _report_rows(sweep_dir)
    assert sorted(row["run_id"] for row in rows) == sorted(r["run_id"] for r in plan["runs"])
    assert {row["state"] for row in rows} == {run_status.DONE}
    metrics = list(plan["report"].get("metrics") or ("test_accuracy", "train_accuracy"))
    for row in rows:
        for metric in metrics:
            value = float(row[metric])
            assert math.isfinite(value), (row["run_id"], metric, row[metric])
            if "accuracy" in metric:
                assert 0.0 <= value <= 1.0, (row["run_id"], metric, value)
    with open(os.path.join(sweep_dir, "report", "summary.json")) as f:
        summary = json.load(f)
    assert summary["progress"] == f"complete: all {len(plan['runs'])} runs done"
    assert sorted(summary["arms"]) == sorted(plan["arms"])
    for arm, by_metric in summary["arms"].items():
        runs_of_arm = sum(1 for r in plan["runs"] if r["arm"] == arm)
        assert by_metric[metrics[0]]["n"] == runs_of_arm, arm
