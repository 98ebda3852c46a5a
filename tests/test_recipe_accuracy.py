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
