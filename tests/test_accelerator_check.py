"""benchmarks/accelerator_check.sh, the one-call GPU check, run whole in its --cpu-smoke mode
(every part on the CPU at tiny sizes, without ResNet-50): the script is what a GPU user runs,
so the test runs it as a command and reads the numbers of its JSON file."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import accelerator_check  # noqa: E402

SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator_check.sh")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_dir):
    """(JSON results, stdout) of `accelerator_check.sh --cpu-smoke`."""
    output = tmp_path_factory.mktemp("accelerator_check") / "check.json"
    done = subprocess.run(
        # ResNet-50 takes ResNet-18's code path in the script and compiles for seconds more
        # (tests/test_families.py trains it); `--models` is what a GPU user may pass too.
        ["bash", SCRIPT, "--cpu-smoke", "--models=lenet5,resnet20,resnet18", f"--json={output}"],
        env=dict(os.environ, TFDS_DATA_DIR=data_dir, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(output) as file:
        return json.load(file), done.stdout


def test_every_model_is_timed_and_compiled(smoke):
    results, _ = smoke
    assert results["mode"] == "cpu-smoke"
    assert results["devices"]["backend"] == "cpu" and results["devices"]["count"] >= 1
    assert results["devices"]["versions"]["jax"]
    measured = {(row["model"], row["dtype"]): row["jax"] for row in results["train_step"]}
    assert set(measured) == {
        ("lenet5", "float32"),
        ("lenet5", "bfloat16"),
        ("resnet20", "float32"),
        ("resnet18", "float32"),
    }
    for (model, _), jax_result in measured.items():
        assert "error" not in jax_result, jax_result
        assert jax_result["images_per_sec_median"] > 0
        assert jax_result["compile_seconds"] > 0
        assert jax_result["batch_size"] == 4
        assert jax_result["image_shape"] == ([28, 28, 1] if model == "lenet5" else [8, 8, 3])
        assert jax_result["last_loss"] == pytest.approx(jax_result["last_loss"])  # not NaN


def test_recipe_trains_and_reports_its_accuracy(smoke):
    recipe = smoke[0]["recipe"]
    assert recipe["recipe"] == "configs/lenet5_fashion_mnist.py:smoke"
    assert 0 < recipe["test_accuracy"] <= 1
    assert recipe["steps"] == 10 and recipe["seconds"] > 0


def test_the_same_steps_on_the_same_cpu_give_the_same_parameters(smoke):
    diff = smoke[0]["cpu_diff"]
    assert diff["accelerator"] == diff["cpu"]  # --cpu-smoke: the "accelerator" is the CPU
    assert diff["steps"] == 3
    assert diff["default"]["max_abs_param_difference"] == 0.0
    assert diff["default"]["loss_accelerator"] == diff["default"]["loss_cpu"]
    assert diff["max_abs_param"] > 0


def test_pytorch_columns_say_why_they_are_empty(smoke):
    results, stdout = smoke
    assert "targets: not judged" in stdout and "wrote" in stdout
    if results["torch"]["available"]:
        eager = [row["torch_eager"] for row in results["train_step"]]
        assert all(result["images_per_sec_median"] > 0 for result in eager)
        return
    assert results["torch"]["why"].startswith("skipped: PyTorch is not installed")
    for row in results["train_step"]:
        assert row["torch_eager"] == {"skipped": results["torch"]["why"]}
        assert row["jax_vs_torch"] is None
    assert "lenet5    float32" in stdout


def test_a_failing_measurement_is_recorded_and_the_next_still_runs():
    part = accelerator_check.Part(({"kind": "no_such_part"}, {"kind": "devices"}), 120)
    failed, devices = accelerator_check.spawn(part, accelerator_check.CPU_SMOKE, 120)
    assert failed["error"] == "KeyError: 'no_such_part'"
    assert devices["backend"] == "cpu"


def test_a_part_past_its_time_is_stopped_and_recorded():
    part = accelerator_check.Part(({"kind": "devices"},), 0.01)
    (result,) = accelerator_check.spawn(part, accelerator_check.CPU_SMOKE, 0.01)
    assert result["error"] == "stopped after 0.01 s"


def test_parts_beyond_the_budget_are_skipped_without_starting():
    parts = accelerator_check.plan(accelerator_check.ACCELERATOR, ["resnet50"], with_torch=True)
    done = accelerator_check.run_parts(parts, accelerator_check.ACCELERATOR, budget_seconds=0)
    assert len(done) == 2 + 2 + 2 + 2 + 1  # devices, diff, JAX x2, eager x2, compiled x2, recipe
    assert all(result == {"skipped": "skipped: 0 s of the 0 s budget left"} for _, result in done)
    kinds = [item["kind"] for item, _ in done]
    assert kinds.index("recipe") == 7  # after the target's torch.compile, before the others
