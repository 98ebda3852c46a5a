"""float16 training's dynamic loss scaling: an overflowing step is skipped and halves the scale,
finite steps follow float32 and double the scale after the period."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.config_base import get_base_config
from cnnjax.errors import UserError
from cnnjax.train import steps
from cnnjax.train.config_checks import validate_config
from cnnjax.train.run import state_extras
from cnnjax.train.state import create_train_state

FLOAT16 = steps.StepOptions(num_classes=10, compute_dtype="float16", loss_scale_period=2)
FLOAT32 = steps.StepOptions(num_classes=10)
# Default compiler options: XLA:CPU's quicker level 0 (tests/model_sizes.py) rounds differently.
float16_step = jax.jit(functools.partial(steps.train_step, options=FLOAT16))
float32_step = jax.jit(functools.partial(steps.train_step, options=FLOAT32))


@functools.cache
def _initial(loss_scale):
    # Batch norm: its running statistics must also stay unchanged by a skipped step.
    model = models.create("lenet5", normalization="batch")
    return create_train_state(
        model, optax.sgd(0.05, 0.9), input_shape=(28, 28, 1), seed=0, loss_scale=loss_scale
    )


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(32, 28, 28, 1)).astype(np.float32),
        "label": rng.integers(0, 10, 32).astype(np.int32),
    }


def _copy(state):
    return jax.tree.map(jnp.copy, state)


def test_an_overflowing_step_changes_nothing_but_the_step_and_halves_the_scale():
    # The logits' gradient is scale / 32 x (softmax - one-hot): 2**40 / 32 overflows float16.
    before = _copy(_initial(2.0**40))
    after, metrics = float16_step(_copy(before), _batch())
    for name in ("params", "opt_state", "batch_stats"):
        for old, new in zip(
            jax.tree.leaves(getattr(before, name)),
            jax.tree.leaves(getattr(after, name)),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
    assert int(after.step) == 1
    assert float(after.loss_scale["scale"]) == 2.0**39
    assert int(after.loss_scale["good_steps"]) == 0
    assert float(metrics["skipped_steps"]) == 1.0
    assert float(metrics["nonfinite_steps"]) == 0.0  # skipped, not diverged
    assert np.isfinite(float(metrics["loss_sum"]))


def _update(state, step):
    start = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)])
    state, metrics = step(_copy(state), _batch(0))
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)]) - start, state


def _cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_finite_steps_follow_float32_and_double_the_scale_after_the_period():
    update32, _ = _update(_initial(None), float32_step)
    update16, state16 = _update(_initial(2.0**14), float16_step)
    assert (float(state16.loss_scale["scale"]), int(state16.loss_scale["good_steps"])) == (2**14, 1)
    assert _cosine(update16, update32) > 0.998  # float16's rounding only
    state16, metrics = float16_step(state16, _batch(1))  # the second finite step: the period is 2
    assert float(metrics["skipped_steps"]) == 0.0
    assert (float(state16.loss_scale["scale"]), int(state16.loss_scale["good_steps"])) == (2**15, 0)


def test_the_config_turns_loss_scaling_on_for_float16_only_and_checks_it():
    config = get_base_config()
    assert state_extras(config) == {"ema": False, "loss_scale": None}
    config.train.compute_dtype = "bfloat16"
    assert state_extras(config)["loss_scale"] is None
    config.train.compute_dtype = "float16"
    assert state_extras(config)["loss_scale"] == 2.0**15
    config.train.loss_scale_initial = 0.5
    with pytest.raises(UserError, match=r"^train.loss_scale_initial=0.5: use a power of 2"):
        validate_config(config)
