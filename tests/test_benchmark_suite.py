"""benchmarks/suite.py --repeats: the medians it reports are of each repeat's own ratio, and a
kind that failed in every repeat keeps its error line."""

import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
)
import suite  # noqa: E402


def _row(fast, torch, first_step=2.0):
    return {
        "model": "resnet20",
        "jax_plain": {"error": "jax resnet20 failed (exit 1): boom"},
        "jax_fast": {
            "batch_size": 128,
            "images_per_sec_median": fast,
            "first_step_seconds": first_step,
        },
        "jax_fast_cached_compile": {"batch_size": 128, "first_step_seconds": 0.5},
        "torch": {"batch_size": 128, "images_per_sec_median": torch, "first_step_seconds": 0.1},
        "ratio_jax_fast_vs_torch": fast / torch,
    }


def test_medians_over_repeats_pair_each_repeat_ratio():
    # Repeat 2 ran in a slow spell for both frameworks: its ratio is still 0.5.
    repeats = [[_row(300, 600)], [_row(100, 200, 4.0)], [_row(340, 500, 3.0)]]
    (row,) = suite.summarize_repeats(repeats)
    assert row["repeats"] == 3
    assert row["jax_fast"]["images_per_sec_median"] == 300
    assert row["jax_fast"]["images_per_sec_median_repeats"] == [300, 100, 340]
    assert row["jax_fast"]["first_step_seconds"] == 3.0
    assert row["torch"]["images_per_sec_median"] == 500
    assert row["ratio_jax_fast_vs_torch_repeats"] == [0.5, 0.5, 0.68]
    assert row["ratio_jax_fast_vs_torch"] == 0.5  # not 300 / 500 = 0.6
    assert row["jax_plain"] == {"error": "jax resnet20 failed (exit 1): boom"}
    assert "ratio_jax_plain_vs_torch" not in row
    assert "resnet20" in suite._table([row])


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    assert suite._median([4.0, 1.0, None, 3.0, 2.0]) == 2.5
    assert suite._median([None]) is None
