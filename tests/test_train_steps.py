"""Pure steps, optimizers and schedules: numbers, not only shapes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.config_base import get_base_config
from cnnjax.errors import UserError
from cnnjax.train.loop import make_steps
from cnnjax.train.optim import decay_mask, make_optimizer, make_schedule
from cnnjax.train.state import create_train_state


def _batch(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(size, 28, 28, 1)).astype(np.float32),
        "label": rng.integers(0, 10, size).astype(np.int32),
        "mask": np.ones(size, np.float32),
    }


def _state(normalization="none", dropout_rate=0.0, learning_rate=1e-3, name="adam"):
    optimizer = get_base_config().optimizer
    optimizer.name, optimizer.learning_rate = name, learning_rate
    tx = make_optimizer(optimizer, steps_per_epoch=10, total_steps=100)
    model = models.create("lenet5", normalization=normalization, dropout_rate=dropout_rate)
    return create_train_state(model, tx, input_shape=(28, 28, 1), seed=0)


def test_train_step_compiles_once_and_overfits_a_batch():
    train_fn, eval_fn, _ = make_steps(num_classes=10, label_smoothing=0.0)
    state, batch = _state(normalization="batch", dropout_rate=0.1), _batch()
    initial = eval_fn(state, batch)
    for _ in range(60):
        state, metrics = train_fn(state, batch)
    final = eval_fn(state, batch)
    assert train_fn._cache_size() == 1  # no retracing across steps
    assert int(state.step) == 60
    assert float(final["loss_sum"]) < 0.1 * float(initial["loss_sum"])
    assert float(final["correct"]) == 32.0


def test_batch_stats_update_in_training_only():
    train_fn, eval_fn, _ = make_steps(num_classes=10, label_smoothing=0.0)
    state = _state(normalization="batch")
    before = jax.tree.map(np.array, state.batch_stats)
    eval_fn(state, _batch())
    np.testing.assert_array_equal(jax.tree.leaves(before)[0], jax.tree.leaves(state.batch_stats)[0])
    state, _ = train_fn(state, _batch())
    assert not np.array_equal(jax.tree.leaves(before)[0], jax.tree.leaves(state.batch_stats)[0])


def test_eval_step_counts_only_unmasked_examples():
    _, eval_fn, _ = make_steps(num_classes=10, label_smoothing=0.0)
    state, batch = _state(), _batch(8)
    full = eval_fn(state, batch)
    # A copy: on CPU, jit may read the numpy buffer in place after returning.
    batch["mask"] = np.concatenate([np.ones(4, np.float32), np.zeros(4, np.float32)])
    half = eval_fn(state, batch)
    first_half = eval_fn(state, {k: v[:4] for k, v in batch.items()})
    assert float(half["count"]) == 4.0
    np.testing.assert_allclose(float(half["loss_sum"]), float(first_half["loss_sum"]), rtol=1e-6)
    assert float(full["count"]) == 8.0


def test_step_randomness_is_a_function_of_the_step():
    train_fn, _, _ = make_steps(num_classes=10, label_smoothing=0.0)
    a, _ = train_fn(_state(dropout_rate=0.5), _batch())
    b, _ = train_fn(_state(dropout_rate=0.5), _batch())
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_weight_decay_skips_biases_and_norm_scales():
    params = {
        "Conv_0": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)},
        "BatchNorm_0": {"scale": jnp.ones(2)},
    }
    assert decay_mask(params) == {
        "Conv_0": {"kernel": True, "bias": False},
        "BatchNorm_0": {"scale": False},
    }
    config = get_base_config().optimizer
    config.name, config.learning_rate, config.weight_decay = "sgd", 0.1, 0.5
    tx = make_optimizer(config, steps_per_epoch=1, total_steps=1)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # SGD with coupled decay: update = -lr * wd * w on kernels, nothing elsewhere.
    np.testing.assert_allclose(updates["Conv_0"]["kernel"], -0.05)
    np.testing.assert_allclose(updates["Conv_0"]["bias"], 0.0)
    np.testing.assert_allclose(updates["BatchNorm_0"]["scale"], 0.0)


LEARNING_RATES = {
    "sgd": 0.05,
    "momentum": 0.02,
    "nesterov": 0.02,
    "adam": 1e-3,
    "adamw": 1e-3,
    "rmsprop": 1e-3,
}


@pytest.mark.parametrize("name", sorted(LEARNING_RATES))
def test_every_optimizer_lowers_the_loss(name):
    train_fn, eval_fn, _ = make_steps(num_classes=10, label_smoothing=0.0)
    state, batch = _state(name=name, learning_rate=LEARNING_RATES[name]), _batch()
    initial = float(eval_fn(state, batch)["loss_sum"])
    for _ in range(15):
        state, _ = train_fn(state, batch)
    assert float(eval_fn(state, batch)["loss_sum"]) < 0.8 * initial


def test_schedules_hit_their_defining_values():
    config = ml_collections.ConfigDict(get_base_config().optimizer.to_dict())
    config.learning_rate, config.warmup_epochs = 0.1, 1.0
    config.schedule = "warmup_cosine"
    schedule = make_schedule(config, steps_per_epoch=10, total_steps=110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(10)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(60)), 0.05, rtol=1e-5)  # half-way through decay
    config.schedule, config.decay_epochs, config.warmup_epochs = "step", (2, 4), 0.0
    schedule = make_schedule(config, steps_per_epoch=10, total_steps=60)
    np.testing.assert_allclose(
        [float(schedule(s)) for s in (19, 20, 40)], [0.1, 0.01, 0.001], rtol=1e-6
    )


def test_label_smoothing_changes_the_target():
    from cnnjax.train.steps import cross_entropy

    logits = jnp.array([[10.0, 0.0]])
    hard = cross_entropy(logits, jnp.array([0]), num_classes=2)
    smooth = cross_entropy(logits, jnp.array([0]), num_classes=2, label_smoothing=0.2)
    expected = -(0.9 * jax.nn.log_softmax(logits)[0, 0] + 0.1 * jax.nn.log_softmax(logits)[0, 1])
    np.testing.assert_allclose(float(smooth[0]), float(expected), rtol=1e-6)
    assert float(smooth[0]) > float(hard[0])
    assert optax is not None


def test_unknown_optimizer_fails_clearly():
    config = get_base_config().optimizer
    config.name = "lion"
    with pytest.raises(UserError, match="unknown optimizer 'lion': choose one of sgd"):
        make_optimizer(config, steps_per_epoch=1, total_steps=1)
