"""Data parallelism: 8 devices give the 1-device numbers, checkpoints move between topologies, and
the training-step options (accumulation, bf16, EMA) are exact. Two processes training as one:
tests/test_distributed.py."""

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
from model_sizes import jit_fast

from cnnjax import load_trained_run, models, parallel
from cnnjax.models.layers import LayerOptions
from cnnjax.train import evaluation, steps
from cnnjax.train.shard_map_step import make_shard_map_train_step
from cnnjax.train.state import create_train_state
from tests.conftest import ROOT

PROBE = os.path.join(ROOT, "tests", "parallel_probe.py")


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory, data_dir) -> dict:
    """What tests/parallel_probe.py measured in one process with 8 fake CPU devices (one
    process, one JAX start-up, for every 8-device check), and its WORKDIR."""
    workdir = tmp_path_factory.mktemp("eight_devices")
    result = subprocess.run(
        [sys.executable, PROBE, str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TFDS_DATA_DIR=data_dir),
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    return {**out, "workdir": workdir}


def _part(probe: dict, name: str) -> dict:
    part = probe[name]
    assert "error" not in part or name == "uneven_batch", part["error"]
    return part


def test_eight_devices_match_one_for_jit_and_shard_map_steps(eight_devices):
    """4 SGD steps of LeNet-5 with batch norm on a 32-example batch: 8 devices give the numbers
    of 1 device, with the jit step and with the shard_map step (batch norm synced)."""
    diffs = _part(eight_devices, "equal")
    for path in ("jit", "shard_map"):
        assert diffs[path]["loss"] < 1e-5, diffs
        assert diffs[path]["state"] < 1e-5, diffs
    # Ghost batch norm (per-device statistics over 4 examples) is another computation.
    assert diffs["shard_map/ghost"]["state"] > 1e-3, diffs


def _flat_state(state) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def test_checkpoint_saved_on_eight_devices_restores_on_one_and_four(eight_devices):
    """The probe trained 9 steps with EMA on 8 devices and restored the checkpoint onto 8 and 4
    of them; this process has one device."""
    info = _part(eight_devices, "checkpoint")
    assert info["num_devices"] == 8
    assert info["devices_per_leaf"] == {"8": [8], "4": [4]}  # replicated on the new mesh
    workdir = eight_devices["workdir"]
    states = {n: dict(np.load(workdir / f"state{n}.npz")) for n in (8, 4)}
    on_one = load_trained_run(str(workdir / "run"), "latest")
    states[1] = _flat_state(on_one.state)
    assert int(states[8][".step"]) == 9
    assert len(states[8]) > 20  # params, batch stats, optimizer state, EMA, key
    assert any(key.startswith(".ema_params") for key in states[8])
    for devices in (1, 4):
        assert states[devices].keys() == states[8].keys()
        for key, value in states[8].items():
            np.testing.assert_array_equal(states[devices][key], value, err_msg=key)
    # Evaluated in batches of 100 padded to 104 rows on 8 devices, and unpadded on one.
    metrics = on_one.evaluate()
    assert metrics["count"] == 256
    accuracy, loss = info["test"]
    assert metrics["top_1_accuracy"] == accuracy
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)


def test_batch_not_divisible_by_devices_is_one_line(eight_devices):
    assert _part(eight_devices, "uneven_batch")["error"] == (
        "data.batch_size=100 does not split evenly over 8 devices: use a multiple of 8"
    )


TX = optax.sgd(0.05, 0.9)


@functools.cache
def _initial(normalization: str):
    """LeNet-5's state of seed 0 (with EMA weights), initialized once per normalization."""
    model = models.create("lenet5", num_classes=10, normalization=normalization)
    return create_train_state(model, TX, input_shape=(28, 28, 1), seed=0, ema=True)


def _state(normalization="none", ema=False, layer_options=None):
    """A fresh copy (jitted steps may donate it) of `_initial`, the model rebuilt with
    `layer_options` when given (they change no parameter)."""
    state = _initial(normalization)
    if not ema:
        state = state.replace(ema_params={})
    if layer_options is not None:
        model = models.create("lenet5", normalization=normalization, layer_options=layer_options)
        state = state.replace(apply_fn=model.apply)
    return jax.tree.map(jnp.copy, state)


def _batch(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(size, 28, 28, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, size), jnp.int32),
    }


def _train_step(jit=jit_fast, **options):
    """The train step of `options`, compiled with model_sizes.QUICK_COMPILE unless `jit` says
    otherwise: these tests compare steps with each other, not with the `cnnjax` command's."""
    return jit(
        functools.partial(steps.train_step, options=steps.StepOptions(num_classes=10, **options))
    )


def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
    batch = _batch()
    whole, whole_metrics = _train_step()(_state(), batch)
    accumulated, metrics = _train_step(grad_accum_steps=4)(_state(), batch)
    for a, b in zip(
        jax.tree.leaves(whole.params), jax.tree.leaves(accumulated.params), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert float(jnp.abs(whole.params["Dense_2"]["bias"]).max()) > 1e-3  # the step moved
    for key in ("loss_sum", "correct", "count"):
        assert float(metrics[key]) == pytest.approx(float(whole_metrics[key]), rel=1e-6)
    five = functools.partial(
        steps.train_step, options=steps.StepOptions(num_classes=10, grad_accum_steps=5)
    )
    with pytest.raises(ValueError, match="does not split into 5 micro-batches"):
        jax.eval_shape(five, _state(), batch)  # refused while tracing


def test_bfloat16_compute_keeps_float32_weights_and_follows_float32():
    batch, start = _batch(), _initial("batch").params
    # Both with XLA's default optimizations: at level 0 XLA:CPU computes bfloat16 otherwise
    # (cosine 0.84 below, measured with jaxlib 0.10).
    full, full_metrics = _train_step(jax.jit)(_state("batch"), batch)
    half, half_metrics = _train_step(jax.jit, compute_dtype="bfloat16")(_state("batch"), batch)
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
            jax.tree.leaves(start),
            strict=True,
        )
    ]
    # Biases that feed batch norm get float noise as gradient (batch norm removes them): leave
    # out updates that small; every other leaf must move the same way.
    compared = [(g, e) for g, e in deltas if np.linalg.norm(e) > 1e-5]
    assert len(compared) >= 12
    for got, expected in compared:
        cosine = (got * expected).sum() / (np.linalg.norm(got) * np.linalg.norm(expected))
        assert cosine > 0.95  # bf16 keeps 8 bits of mantissa: measured 0.979-0.9999
        assert not np.array_equal(got, expected)  # it did compute in bfloat16


def test_ema_of_weights_is_the_exponential_average_of_the_steps():
    state, decay = _state(ema=True), 0.9
    expected = state.params
    step = _train_step(ema_decay=decay)
    for index in range(3):
        state, _ = step(state, _batch(seed=index))
        expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, expected, state.params)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    options = steps.StepOptions(num_classes=10, ema_decay=decay)

    @jit_fast
    def evaluate_both(state, batch):
        return tuple(
            evaluation.eval_step(state, batch, options, use_ema=use_ema) for use_ema in (1, 0)
        )

    ema_sums, plain = evaluate_both(state, {**_batch(), "mask": jnp.ones(32)})
    assert int(ema_sums["count"]) == int(plain["count"]) == 32
    assert float(ema_sums["loss_sum"]) != float(plain["loss_sum"])


def test_shard_map_step_takes_its_batch_norm_from_the_model_and_checks_it():
    """Sync batch norm is the model's `batch_norm_axis`; a model that disagrees with the step's
    mode is refused while tracing instead of silently computing the other mode. (Their numbers
    are the 8-device probe's.)"""
    mesh, options = parallel.data_mesh(1), steps.StepOptions(num_classes=10)

    def state_with(axis):
        state = _state("batch", layer_options=LayerOptions(batch_norm_axis=axis))
        return parallel.replicate(state, mesh)

    batch = parallel.shard_batch(_batch(8), mesh)
    for axis, mode in ((parallel.DATA_AXIS, "sync"), (None, "ghost")):
        step = jax.jit(make_shard_map_train_step(mesh, options=options, batch_norm=mode))
        _, metrics = jax.eval_shape(step, state_with(axis), batch)  # accepted
        assert metrics["loss_sum"].shape == (), mode
        other = None if axis else parallel.DATA_AXIS
        with pytest.raises(ValueError, match=f"batch_norm={mode!r} needs a model built with"):
            step.lower(state_with(other), batch)


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
