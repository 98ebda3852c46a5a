"""What `cnnjax models` lists: each variant's parameter count at its default input shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnnjax.models.registry import create, default_input_shape, list_models


def param_count(name: str, **options) -> int:
    """Parameters of variant `name` at its default input shape, without allocating them."""
    model = create(name, **options)
    dummy = jax.ShapeDtypeStruct((1, *default_input_shape(name)), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
    return int(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])))


def describe_models() -> list[dict]:
    """One dict per registered variant: name, params, input_shape."""
    return [
        {"name": n, "params": param_count(n), "input_shape": list(default_input_shape(n))}
        for n in list_models()
    ]
