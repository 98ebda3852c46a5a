"""The CPU time-to-accuracy recipe (configs/fashion_mnist_fast.py): its network and a smoke run;
with -m slow, the full recipe reaches 0.93 on the Fashion-MNIST test split."""

import json
import os
import time

import pytest
from conftest import ROOT, run_cnnjax

from cnnjax.config_loader import load_config
from cnnjax.models.inventory import param_count
from cnnjax.train import train_and_evaluate

FAST_RECIPE = os.path.join(ROOT, "configs", "fashion_mnist_fast.py")


def test_recipe_network_size():
    config = load_config(FAST_RECIPE)
    options = dict(
        activation=config.model.activation,
        normalization=config.model.normalization,
        dropout_rate=config.model.dropout_rate,
        **config.model.options,
    )
    # 3x3 conv on the 4 space-to-depth channels 4->32 (1,152 + BN 64), 3x3 32->64 (18,432 +
    # 128), dense 7*7*64->256 (802,816 + BN 512), 256->10 (2,570).
    assert param_count(config.model.name, **options) == 825_674


def test_smoke_variant_trains(tmp_path, data_dir):
    config = load_config(f"{FAST_RECIPE}:smoke", {"data.data_dir": data_dir})
    results = train_and_evaluate(config, str(tmp_path)).results
    assert results["epochs"] == 2.0 and results["steps"] == 20  # 2,560 / 256 x 2
    assert results["test_accuracy"] > 0.5  # chance is 0.1
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 20


@pytest.mark.slow
def test_recipe_reaches_093(tmp_path, data_dir):
    start = time.perf_counter()
    result = run_cnnjax("train", f"--config={FAST_RECIPE}", f"--workdir={tmp_path}", timeout=1800)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    print(f"test accuracy {results['test_accuracy']:.4f} in {seconds:.0f} s")
    assert results["test_accuracy"] >= 0.93
