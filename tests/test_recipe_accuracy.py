"""Slow: the default recipe reaches its documented accuracy within its time budget.

./quickstart.sh test -m slow      (about 2 minutes on 2 CPU cores)
"""

import json
import time

import pytest
from conftest import RECIPE, run_cnnjax


@pytest.mark.slow
def test_default_recipe_reaches_090_within_5_minutes(tmp_path, data_dir):
    start = time.perf_counter()
    result = run_cnnjax("train", f"--config={RECIPE}", f"--workdir={tmp_path}", timeout=600)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    print(
        f"test accuracy {results['test_accuracy']:.4f} in {seconds:.0f} s, "
        f"{results['train_images_per_sec']:,.0f} images/s"
    )
    assert results["test_accuracy"] >= 0.90
    assert seconds < 300
    for name in ("config.json", "metrics.jsonl", "curves.png"):
        assert (tmp_path / name).exists()
    assert any((tmp_path / "tensorboard").iterdir())


@pytest.mark.slow
def test_float16_with_loss_scaling_reaches_the_float32_accuracy(tmp_path, data_dir):
    """3 epochs of the default recipe in float16 (dynamic loss scaling) and in float32: test
    accuracies within 0.5 points."""
    accuracy = {}
    for dtype in ("float16", "float32"):
        workdir = tmp_path / dtype
        result = run_cnnjax(
            "train",
            f"--config={RECIPE}",
            f"--workdir={workdir}",
            "--config.train.epochs=3",
            f"--config.train.compute_dtype={dtype}",
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        accuracy[dtype] = json.loads((workdir / "results.json").read_text())["test_accuracy"]
    print(accuracy)
    assert abs(accuracy["float16"] - accuracy["float32"]) <= 0.005
