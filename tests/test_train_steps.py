"""Pure steps, optimizers and schedules: numbers, not only shapes."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from model_sizes import jit_fast

from cnnjax import models
from cnnjax.config_base import get_base_config
from cnnjax.errors import UserError
from cnnjax.train import steps
from cnnjax.train.optim import decay_mask, make_optimizer, make_schedule
from cnnjax.train.run import make_steps
from cnnjax.train.state import create_train_state

OPTIONS = steps.StepOptions(num_classes=10)


@pytest.fixture(scope="module")
def compiled():
    """The jitted steps of `make_steps`, shared by the module: a state of the same model and
    optimizer (`_state` reuses them) traces and compiles once for all the tests."""
    return make_steps(OPTIONS)


def _batch(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(size, 28, 28, 1)).astype(np.float32),
        "label": rng.integers(0, 10, size).astype(np.int32),
        "mask": np.ones(size, np.float32),
    }


@functools.cache
def _initial(normalization: str, dropout_rate: float):
    """LeNet-5's initial state (seed 0), initialized once per model."""
    model = models.create("lenet5", normalization=normalization, dropout_rate=dropout_rate)
    return create_train_state(model, _optimizer("adam", 1e-3), input_shape=(28, 28, 1), seed=0)


@functools.cache
def _optimizer(name: str, learning_rate: float):
    # One object per choice: the optimizer is a static part of the state for `jax.jit`.
    optimizer = get_base_config().optimizer
    optimizer.name, optimizer.learning_rate = name, learning_rate
    return make_optimizer(optimizer, steps_per_epoch=10, total_steps=100)


@functools.cache
def _template(normalization, dropout_rate, name, learning_rate):
    initial, tx = _initial(normalization, dropout_rate), _optimizer(name, learning_rate)
    return initial.replace(tx=tx, opt_state=tx.init(initial.params))


def _state(normalization="none", dropout_rate=0.0, learning_rate=1e-3, name="adam"):
    """A fresh copy (the train step donates its state) of the initial state."""
    return jax.tree.map(jnp.copy, _template(normalization, dropout_rate, name, learning_rate))


def test_train_step_compiles_once_and_overfits_a_batch(compiled):
    state, batch = _state(normalization="batch", dropout_rate=0.1), _batch()
    initial = compiled.evaluate(state, batch)
    state, _ = compiled.train(state, batch)
    traced = compiled.train._cache_size()
    for _ in range(59):
        state, metrics = compiled.train(state, batch)
    final = compiled.evaluate(state, batch)
    assert compiled.train._cache_size() == traced  # no retracing across steps
    assert int(state.step) == 60
    assert float(final["loss_sum"]) < 0.1 * float(initial["loss_sum"])
    assert int(final["top_1_correct"]) == 32


def test_batch_stats_update_in_training_only(compiled):
    state = _state(normalization="batch", dropout_rate=0.1)
    before = jax.tree.map(np.array, state.batch_stats)
    compiled.evaluate(state, _batch())
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(state.batch_stats), strict=True):
        np.testing.assert_array_equal(old, new)
    state, _ = compiled.train(state, _batch())
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(state.batch_stats), strict=True):
        assert not np.array_equal(old, new)


def test_eval_step_counts_only_unmasked_examples(compiled):
    state, batch = _state(), _batch(8)
    full = compiled.evaluate(state, batch)
    # A copy: on CPU, jit may read the numpy buffer in place after returning.
    batch["mask"] = np.concatenate([np.ones(4, np.float32), np.zeros(4, np.float32)])
    half = compiled.evaluate(state, batch)
    first_half = compiled.evaluate(state, {k: v[:4] for k, v in batch.items()})
    assert int(half["count"]) == 4 and int(full["count"]) == 8
    np.testing.assert_allclose(float(half["loss_sum"]), float(first_half["loss_sum"]), rtol=1e-6)
    assert float(full["loss_sum"]) > float(half["loss_sum"]) + 1.0  # the masked half counted


def test_dropout_key_is_fold_in_of_the_run_key_and_the_step(compiled):
    """Same weights, same batch: the step number alone changes the dropout masks, and the
    step's loss is the training loss under fold_in(fold_in(run key, step), 0) (0: the dropout
    purpose), so a resumed run draws the same masks."""
    state, batch = _state(dropout_rate=0.5), _batch()

    def at_step(step):
        return jax.tree.map(jnp.copy, state.replace(step=jnp.asarray(step, jnp.int32)))

    after_a, first = compiled.train(at_step(0), batch)
    after_b, again = compiled.train(at_step(0), batch)
    _, second = compiled.train(at_step(1), batch)
    jax.tree.map(np.testing.assert_array_equal, after_a.params, after_b.params)
    assert float(first["loss_sum"]) == float(again["loss_sum"])
    assert abs(float(second["loss_sum"]) - float(first["loss_sum"])) > 0.1  # other masks

    @jax.jit
    def loss_sum(key):
        loss, _ = steps.training_loss(
            state.params, state.batch_stats, state.apply_fn, batch, key, OPTIONS
        )
        return loss * len(batch["label"])

    run_key = jax.random.wrap_key_data(state.key)
    for step, metrics in ((0, first), (1, second)):
        key = jax.random.fold_in(jax.random.fold_in(run_key, step), 0)
        np.testing.assert_allclose(float(loss_sum(key)), float(metrics["loss_sum"]), rtol=1e-5)


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


# Each optimizer is another program: compiled with model_sizes.QUICK_COMPILE, about twice as
# fast as with the default optimizations (what an optimizer computes is under test, not XLA).
QUICK_TRAIN_STEP = jit_fast(functools.partial(steps.train_step, options=OPTIONS))


@pytest.mark.parametrize("name", sorted(LEARNING_RATES))
def test_every_optimizer_lowers_the_loss(name):
    # Without dropout or batch norm the training loss of a step is the loss of the weights it
    # starts from: the first and last steps measure it (no evaluation step to compile).
    state, batch = _state(name=name, learning_rate=LEARNING_RATES[name]), _batch()
    state, first = QUICK_TRAIN_STEP(state, batch)
    for _ in range(14):
        state, _ = QUICK_TRAIN_STEP(state, batch)
    _, last = QUICK_TRAIN_STEP(state, batch)
    assert float(last["loss_sum"]) < 0.8 * float(first["loss_sum"])


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
    logits = jnp.array([[10.0, 0.0]])
    hard = steps.cross_entropy(logits, jnp.array([0]), num_classes=2)
    smooth = steps.cross_entropy(logits, jnp.array([0]), num_classes=2, label_smoothing=0.2)
    expected = -(0.9 * jax.nn.log_softmax(logits)[0, 0] + 0.1 * jax.nn.log_softmax(logits)[0, 1])
    np.testing.assert_allclose(float(smooth[0]), float(expected), rtol=1e-6)
    np.testing.assert_allclose(float(hard[0]), -float(jax.nn.log_softmax(logits)[0, 0]), rtol=1e-6)
    assert float(smooth[0]) > float(hard[0])


def test_unknown_optimizer_fails_clearly():
    config = get_base_config().optimizer
    config.name = "lion"
    with pytest.raises(UserError, match="unknown optimizer 'lion': choose one of sgd"):
        make_optimizer(config, steps_per_epoch=1, total_steps=1)


def test_initial_state_has_the_bits_of_a_default_level_compilation():
    """`create_train_state` compiles its initialization with fewer XLA:CPU optimizations (it
    runs once); the parameters, statistics, optimizer state and key must be those that the
    default level computes, or every run's numbers would depend on that choice. (Every family
    draws with Flax's default initializers, as LeNet-5 does; GoogLeNet, U-Net, ResNet-20 and
    ResNet-50 were also found equal when this was written.)"""
    model = models.create("lenet5", normalization="batch")
    tx = _optimizer("adam", 1e-3)
    state = create_train_state(model, tx, input_shape=(28, 28, 1), seed=3, ema=True)
    init_key, step_key = jax.random.split(jax.random.key(3))
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1)), train=False))(init_key)
    expected = {
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "opt_state": jax.jit(tx.init)(variables["params"]),
        "ema_params": variables["params"],
        "key": jax.random.key_data(step_key),
        "step": np.int32(0),
    }
    for field, tree in expected.items():
        leaves = jax.tree.leaves(getattr(state, field))
        assert len(leaves) == len(jax.tree.leaves(tree)) > 0, field
        for got, want in zip(leaves, jax.tree.leaves(tree), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want, err_msg=field)
