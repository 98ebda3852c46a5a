"""The train state and its creation: params, batch statistics, optimizer state, step, key."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state


class TrainState(train_state.TrainState):
    """Flax's TrainState plus BatchNorm statistics and the run's base random key.

    `key` holds raw uint32 key data (not a typed key) so that Orbax stores it as a plain array;
    steps derive their randomness from `fold_in(key, step)`, so a resumed run draws exactly the
    numbers an uninterrupted run would.
    """

    batch_stats: Any
    key: jax.Array
    # Exponential moving average of `params` when `train.ema_decay` > 0, else {} (no leaves).
    ema_params: Any = struct.field(default_factory=dict)
    # Dynamic loss scaling of float16 training, else {}: {"scale": float32 [], "good_steps":
    # int32 [] (finite steps since the scale last changed)}; cnnjax/train/steps.py updates it.
    loss_scale: Any = struct.field(default_factory=dict)


def _keys(seed: int) -> tuple[jax.Array, jax.Array]:
    return jax.random.split(jax.random.key(seed))


def _jit_once(function):
    """`jax.jit` for code that runs once per run (initialization): on XLA:CPU with level-1
    backend optimizations, which compile it 1.4-4x faster than the default level and give the
    same bits (tests/test_train_steps.py checks that); other backends keep their defaults."""
    if jax.default_backend() == "cpu":
        return jax.jit(function, compiler_options={"xla_backend_optimization_level": 1})
    return jax.jit(function)


def _variables(model: nn.Module, input_shape: tuple[int, ...], init_key: jax.Array) -> dict:
    return model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)


def initial_loss_scale(scale: float | None) -> dict:
    """The loss-scaling state starting at `scale` (None: no loss scaling, {})."""
    if scale is None:
        return {}
    return {"scale": jnp.asarray(scale, jnp.float32), "good_steps": jnp.zeros((), jnp.int32)}


def _state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    ema: bool,
    loss_scale: float | None,
    variables: dict,
    step_key,
) -> TrainState:
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        key=jax.random.key_data(step_key),
        ema_params=jax.tree.map(jnp.copy, variables["params"]) if ema else {},
        loss_scale=initial_loss_scale(loss_scale),
    )
    # A Python int step would be weakly typed and make the second step compile again.
    return state.replace(step=jnp.zeros((), jnp.int32))


def init_variables(model: nn.Module, *, input_shape: tuple[int, ...], seed: int) -> dict:
    """The variables (params, batch_stats) `model` starts from with `seed`: those of
    `create_train_state`."""
    return _jit_once(functools.partial(_variables, model, input_shape))(_keys(seed)[0])


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    input_shape: tuple[int, ...],
    seed: int,
    ema: bool = False,
    loss_scale: float | None = None,
) -> TrainState:
    """Initializes a TrainState for `model` on inputs of `input_shape` ([H, W, C]).

    The initial parameters depend only on `seed` (through its `init` key); the dropout key is a
    separate purpose-named key, so changing the dropout rate does not change the initialization.
    `ema` keeps an EMA of the weights; `loss_scale` (float16 training) is the initial scale of
    dynamic loss scaling.
    """
    variables = init_variables(model, input_shape=input_shape, seed=seed)
    return train_state_from_variables(
        model, tx, variables, seed=seed, ema=ema, loss_scale=loss_scale
    )


def train_state_from_variables(
    model: nn.Module,
    tx: optax.GradientTransformation,
    variables: dict,
    *,
    seed: int,
    ema: bool = False,
    loss_scale: float | None = None,
) -> TrainState:
    """The TrainState of `create_train_state` around given `variables` (params, batch_stats),
    e.g. imported weights: the optimizer's state and the step key as for `seed`."""
    # One compiled function for the optimizer's state, not one small compilation per array shape.
    initial = functools.partial(_state, model, tx, ema, loss_scale)
    return _jit_once(initial)(variables, _keys(seed)[1])


def abstract_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    input_shape: tuple[int, ...],
    ema: bool = False,
    loss_scale: float | None = None,
) -> TrainState:
    """Shapes and dtypes of the TrainState, without allocating it (a restore target)."""

    def initial_state():
        init_key, step_key = _keys(0)
        variables = _variables(model, input_shape, init_key)
        return _state(model, tx, ema, loss_scale, variables, step_key)

    return jax.eval_shape(initial_state)


def count_params(params) -> int:
    """Number of scalar parameters in a parameter tree."""
    return int(sum(leaf.size for leaf in jax.tree.leaves(params)))
