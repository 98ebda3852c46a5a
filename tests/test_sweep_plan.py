"""Sweep declaration: factors crossed and zipped, stable run ids, checked overrides, statistics."""

import math

import ml_collections
import numpy as np
import pytest
from ml_collections.config_flags import config_flags

from cnnjax.config_loader import format_value
from cnnjax.errors import UserError
from cnnjax.sweep import stats
from cnnjax.sweep.plan import expand_factors, make_plan
from cnnjax.sweep.worker import error_line
from tests.conftest import RECIPE


def _sweep(**changes):
    sweep = ml_collections.ConfigDict()
    sweep.base = RECIPE + ":smoke"
    sweep.overrides = {"train": {"epochs": 1}}
    sweep.axes = [
        {"model.activation": ("relu", "tanh")},
        {"optimizer.learning_rate": (0.01, 0.1), "optimizer.name": ("sgd", "adam")},
    ]
    sweep.seeds = (0, 1, 2)
    for key, value in changes.items():
        sweep[key] = value
    return sweep


def test_factors_are_crossed_and_zipped_keys_move_together():
    arms = expand_factors(_sweep().axes)
    assert [levels for _, levels in arms] == [
        ["activation=relu", "learning_rate=0.01, name=sgd"],
        ["activation=relu", "learning_rate=0.1, name=adam"],
        ["activation=tanh", "learning_rate=0.01, name=sgd"],
        ["activation=tanh", "learning_rate=0.1, name=adam"],
    ]
    assert arms[3][0] == {
        "model.activation": "tanh",
        "optimizer.learning_rate": 0.1,
        "optimizer.name": "adam",
    }


def test_named_levels_label_arms():
    axes = [
        {
            "_name": "augment",
            "_labels": ("none", "flip"),
            "data.augment.horizontal_flip": (False, True),
        }
    ]
    assert [levels for _, levels in expand_factors(axes)] == [["augment=none"], ["augment=flip"]]


def test_zipped_keys_of_different_lengths_are_refused():
    with pytest.raises(UserError, match="equal, non-zero length"):
        expand_factors([{"a.b": (1, 2), "a.c": (1,)}])


def test_plan_has_one_run_per_arm_and_seed_with_stable_distinct_ids(tmp_path):
    plan = make_plan(_sweep(), str(tmp_path))
    assert len(plan.arms) == 4 and len(plan.runs) == 12
    assert len({r.run_id for r in plan.runs}) == 12
    again = make_plan(_sweep(), str(tmp_path / "elsewhere"))
    assert [r.run_id for r in plan.runs] == [r.run_id for r in again.runs]
    # Any change to the resolved config changes the id, and only the hash part of it.
    changed = make_plan(_sweep(overrides={"train": {"epochs": 2}}), str(tmp_path))
    assert all(a.run_id != b.run_id for a, b in zip(plan.runs, changed.runs, strict=True))
    assert plan.runs[0].run_id.startswith("activation=relu_learning_rate=0.01_name=sgd_seed0_")
    assert plan.runs[0].workdir == str(tmp_path / "runs" / plan.runs[0].run_id)


def test_run_command_reproduces_the_resolved_config(tmp_path):
    """The printed overrides, parsed as `cnnjax train` parses them, give the planned config."""
    run = make_plan(_sweep(), str(tmp_path)).runs[-1]
    config = config_flags.ConfigFileFlagParser(name="config", lock_config=False).parse(
        RECIPE + ":smoke"
    )
    assert run.train_args[1] == f"--config={RECIPE}:smoke"
    overrides = dict(a[len("--config.") :].split("=", 1) for a in run.train_args[3:])
    assert overrides == {
        "train.epochs": "1",
        "model.activation": "tanh",
        "optimizer.learning_rate": "0.1",
        "optimizer.name": "adam",
        "seed": "2",
    }
    assert config.model.activation == "relu"  # the recipe itself is untouched


@pytest.mark.parametrize(
    "value, text",
    [(True, "True"), (0.001, "0.001"), ((30, 60), "(30,60)"), ((5,), "(5,)"), ("a", "a")],
)
def test_override_values_are_written_as_the_flag_parser_reads_them(value, text):
    assert format_value(value) == text


def test_unknown_key_or_missing_sections_fail_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="no key 'model.activaton'"):
        make_plan(_sweep(axes=[{"model.activaton": ("relu",)}]), str(tmp_path))
    plain = ml_collections.ConfigDict({"model": {"name": "lenet5"}})
    with pytest.raises(UserError, match="has no 'base'"):
        make_plan(plain, str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        make_plan(_sweep(base="no/such/recipe.py"), str(tmp_path))


def test_mean_interval_matches_the_t_distribution():
    s = stats.summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t(0.975, 2)
    assert stats.summarize([0.5]).n == 1 and math.isnan(stats.summarize([0.5]).ci_low)
    assert stats.summarize([None, 1.0, math.inf, 3.0]).mean == 2.0


def test_welch_difference_and_ratio_of_means():
    a, b = stats.summarize([2.0, 4.0, 6.0]), stats.summarize([1.0, 2.0, 3.0, 4.0])
    diff, low, high = stats.welch_difference(a, b)
    va, vb = 4.0 / 3, (5 / 3) / 4
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    from scipy.stats import t

    assert diff == pytest.approx(1.5)
    assert high - diff == pytest.approx(t.ppf(0.975, df) * se)
    ratio, low, high = stats.ratio_of_means(a, b)
    assert ratio == pytest.approx(4.0 / 2.5)
    se_log = math.sqrt((2 / 4) ** 2 / 3 + (np.std([1, 2, 3, 4], ddof=1) / 2.5) ** 2 / 4)
    assert high == pytest.approx(ratio * math.exp(t.ppf(0.975, 2) * se_log))
    assert low * high == pytest.approx(ratio**2)


def test_error_line_is_the_one_line_error_or_the_exception():
    assert error_line("x\ncnnjax train: error: bad batch\n") == "cnnjax train: error: bad batch"
    traceback = "Traceback (most recent call last):\n  File x\nValueError: boom\n"
    assert error_line(traceback) == "ValueError: boom"
    assert error_line("") == "no output"


def test_local_workers_get_disjoint_core_slots():
    from cnnjax.sweep.local_executor import core_slots

    assert core_slots(2, cores=[0, 1]) == [(0,), (1,)]
    assert core_slots(2, cores=[0, 1, 2, 3, 4]) == [(0, 1), (2, 3)]
    assert core_slots(1, cores=[3, 1]) == [(1, 3)]
    assert core_slots(3, cores=[0, 1]) == [(0,), (1,), (0,)]  # more workers than cores: shared


def test_keys_added_to_cnnjax_later_keep_the_run_ids_of_existing_sweeps():
    from cnnjax.config_base import get_base_config
    from cnnjax.sweep.plan import config_hash

    config = get_base_config()
    # The hash of the base config before optimizer.allow_lr_increase existed (cnnjax c316b4f).
    assert config_hash(config) == "e9ca3f2c"
    config.optimizer.allow_lr_increase = True  # away from its default it is part of the id
    assert config_hash(config) != "e9ca3f2c"
    config = get_base_config()  # likewise model.fast_paths, added after that
    config.model.fast_paths = False
    assert config_hash(config) != "e9ca3f2c"
