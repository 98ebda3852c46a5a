"""Data parallelism: 8 devices give the 1-device numbers, checkpoints move between topologies,
two processes train as one, and the training-step options (accumulation, bf16, EMA) are exact."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.train import steps
from cnnjax.train.state import create_train_state
from tests.conftest import RECIPE, ROOT, TEST_DATA_DIR, run_cnnjax, start_distributed

PROBE = os.path.join(ROOT, "tests", "parallel_probe.py")


def _probe(devices: int, *args: str) -> dict:
    env = dict(os.environ, TFDS_DATA_DIR=TEST_DATA_DIR)
    result = subprocess.run(
        [sys.executable, PROBE, str(devices), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one_for_jit_and_shard_map_steps():
    """4 SGD steps of LeNet-5 and ResNet-20, both with batch norm, on a 32-example batch."""
    diffs = _probe(8, "equal")
    assert diffs["devices"] == 8
    for name in ("lenet5", "resnet20"):
        for path in ("jit", "shard_map"):
            assert diffs[f"{name}/{path}"]["loss"] < 1e-5, diffs
            assert diffs[f"{name}/{path}"]["state"] < 1e-5, diffs
        # Ghost batch norm (per-device statistics over 4 examples) is another computation.
        assert diffs[f"{name}/shard_map/ghost"]["state"] > 1e-3, diffs


def test_checkpoint_saved_on_eight_devices_restores_on_one_and_four(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    env = dict(
        os.environ,
        TFDS_DATA_DIR=TEST_DATA_DIR,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnjax.cli",
            "train",
            f"--config={RECIPE}:smoke",
            f"--workdir={workdir}",
            "--config.train.steps=9",
            "--config.train.ema_decay=0.9",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.load(open(os.path.join(workdir, "results.json")))["num_devices"] == 8
    states = {}
    for devices in (8, 1, 4):
        out = str(tmp_path / f"state{devices}.npz")
        info = _probe(devices, "restore", workdir, out)
        assert info == {"devices": devices, "devices_per_leaf": [devices]}  # replicated here
        states[devices] = dict(np.load(out))
    assert int(states[8][".step"]) == 9
    assert len(states[8]) > 20  # params, batch stats, optimizer state, EMA, key
    for devices in (1, 4):
        assert states[devices].keys() == states[8].keys()
        for key, value in states[8].items():
            np.testing.assert_array_equal(states[devices][key], value, err_msg=key)


def test_two_processes_train_like_one(tmp_path, data_dir):
    """Two processes on 127.0.0.1 (gloo), each feeding half of every global batch, end with the
    parameters of one process training on the same global batches."""
    # SGD, not the recipe's Adam: the biases of the dense layers that feed batch norm get only
    # float noise as gradient (batch norm removes them), which Adam scales up to full steps.
    common = [
        f"--config={RECIPE}:smoke",
        "--config.train.steps=6",
        "--config.optimizer.name=momentum",
        "--config.optimizer.learning_rate=0.05",
    ]
    single = run_cnnjax("train", *common, f"--workdir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-2000:]
    workdir = str(tmp_path / "multi")
    port = 12000 + os.getpid() % 20000
    processes = start_distributed(
        [*common, f"--workdir={workdir}"],
        port,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "test accuracy" in outputs[0] and "test accuracy" not in outputs[1]
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert (results["num_processes"], results["num_devices"]) == (2, 2)
    states = []
    for name, path in (("single", str(tmp_path / "single")), ("multi", workdir)):
        _probe(1, "restore", path, str(tmp_path / f"{name}.npz"))
        states.append(dict(np.load(tmp_path / f"{name}.npz")))
    params = [key for key in states[0] if key.startswith(".params")]
    assert len(params) == 16 and int(states[1][".step"]) == 6
    for key in params:
        np.testing.assert_allclose(states[1][key], states[0][key], atol=1e-5, err_msg=key)
    expected = json.load(open(tmp_path / "single" / "results.json"))["train_loss"]
    assert results["train_loss"] == pytest.approx(expected, abs=1e-5)


def _state(normalization="none", ema=False, seed=0):
    model = models.create("lenet5", num_classes=10, normalization=normalization)
    return create_train_state(
        model, optax.sgd(0.05, 0.9), input_shape=(28, 28, 1), seed=seed, ema=ema
    )


def _batch(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(size, 28, 28, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, size), jnp.int32),
    }


def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
    batch = _batch()
    whole, whole_metrics = steps.train_step(_state(), batch, num_classes=10)
    step = jax.jit(functools.partial(steps.train_step, num_classes=10, grad_accum_steps=4))
    accumulated, metrics = step(_state(), batch)
    for a, b in zip(
        jax.tree.leaves(whole.params), jax.tree.leaves(accumulated.params), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for key in ("loss_sum", "correct", "count"):
        assert float(metrics[key]) == pytest.approx(float(whole_metrics[key]), rel=1e-6)
    with pytest.raises(ValueError, match="does not split into 5 micro-batches"):
        steps.train_step(_state(), batch, num_classes=10, grad_accum_steps=5)


def test_bfloat16_compute_keeps_float32_weights_and_follows_float32():
    batch = _batch()
    full, full_metrics = steps.train_step(_state("batch"), batch, num_classes=10)
    half, half_metrics = steps.train_step(
        _state("batch"), batch, num_classes=10, compute_dtype=jnp.bfloat16
    )
    dtypes = {
        leaf.dtype for leaf in jax.tree.leaves((half.params, half.opt_state, half.batch_stats))
    }
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert float(half_metrics["loss_sum"]) == pytest.approx(
        float(full_metrics["loss_sum"]), rel=2e-2
    )
    # One step moves the weights the same way up to bf16 rounding of the gradients.
    deltas = [
        (np.asarray(h - s), np.asarray(f - s))
        for h, f, s in zip(
            jax.tree.leaves(half.params),
            jax.tree.leaves(full.params),
            jax.tree.leaves(_state("batch").params),
            strict=True,
        )
    ]
    # Biases that feed batch norm get float noise as gradient (batch norm removes them): skip
    # updates that small; every other leaf must move the same way.
    compared = [(g, e) for g, e in deltas if np.linalg.norm(e) > 1e-5]
    assert len(compared) >= 12
    for got, expected in compared:
        cosine = (got * expected).sum() / (np.linalg.norm(got) * np.linalg.norm(expected))
        assert cosine > 0.95  # bf16 keeps 8 bits of mantissa: measured 0.979-0.9999


def test_ema_of_weights_is_the_exponential_average_of_the_steps():
    state, decay = _state(ema=True), 0.9
    expected = state.params
    step = jax.jit(functools.partial(steps.train_step, num_classes=10, ema_decay=decay))
    for index in range(3):
        state, _ = step(state, _batch(seed=index))
        expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, expected, state.params)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    ema_metrics = steps.eval_step(
        state, {**_batch(), "mask": jnp.ones(32)}, num_classes=10, use_ema=True
    )
    plain = steps.eval_step(state, {**_batch(), "mask": jnp.ones(32)}, num_classes=10)
    assert float(ema_metrics["loss_sum"]) != float(plain["loss_sum"])


def test_batch_not_divisible_by_devices_is_one_line(tmp_path, data_dir):
    env_flags = "--xla_force_host_platform_device_count=8"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnjax.cli",
            "train",
            f"--config={RECIPE}:smoke",
            f"--workdir={tmp_path}",
            "--config.data.batch_size=100",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, TFDS_DATA_DIR=TEST_DATA_DIR, XLA_FLAGS=env_flags),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cnnjax train: error: data.batch_size=100 does not split evenly over 8 devices: "
        "use a multiple of 8"
    )


def test_clipping_by_global_norm_scales_the_whole_gradient():
    from cnnjax.config_base import get_base_config
    from cnnjax.train.optim import make_optimizer

    config = get_base_config().optimizer
    config.name, config.learning_rate, config.grad_clip_norm = "sgd", 1.0, 1.0
    tx = make_optimizer(config, steps_per_epoch=10, total_steps=10)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    grads = {"a": jnp.array([3.0, 0.0, 4.0]), "b": jnp.full((2, 2), 0.0)}  # global norm 5
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["a"], [-0.6, 0.0, -0.8], rtol=1e-6)
    small = {"a": jnp.array([0.3, 0.0, 0.4]), "b": jnp.zeros((2, 2))}  # norm 0.5: untouched
    updates, _ = tx.update(small, tx.init(params), params)
    np.testing.assert_allclose(updates["a"], [-0.3, 0.0, -0.4], rtol=1e-6)
