"""What `cnnjax models` lists: parameters and multiply-accumulates at the default input shape.

MACs are counted the way the published figures are (torchvision, ptflops, fvcore): one per
weight use in convolutions and dense layers, i.e. output elements x (kernel volume x input
channels / groups) for a convolution (locally connected layers alike: the same products,
with a kernel per position) and inputs x outputs for a dense layer, per example.
Normalization, activation, pooling and additions are not counted.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models.locally_connected import LocallyConnected2D
from cnnjax.models.registry import create, default_input_shape, list_models


def layer_macs(module: nn.Module, args: tuple, output) -> int:
    """Multiply-accumulates of one `__call__` of `module` on `args` that returned `output`.

    Counts one per weight use for nn.Conv, nn.ConvTranspose, LocallyConnected2D and nn.Dense,
    summed over the non-batch dims (per example when the batch is 1); 0 for any other module.
    """
    if isinstance(module, LocallyConnected2D):
        kernel = module.kernel_size
        window = kernel * kernel if isinstance(kernel, int) else math.prod(kernel)
        return math.prod(output.shape[1:]) * window * args[0].shape[-1]
    if isinstance(module, (nn.Conv, nn.ConvTranspose)):
        kernel = module.kernel_size
        kernel = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel,)
        if isinstance(module, nn.ConvTranspose):
            # Each input element is multiplied by the whole kernel once.
            return math.prod(args[0].shape[1:]) * math.prod(kernel) * module.features
        groups = getattr(module, "feature_group_count", 1)
        per_output = math.prod(kernel) * args[0].shape[-1] // groups
        return math.prod(output.shape[1:]) * per_output
    if isinstance(module, nn.Dense):
        return math.prod(output.shape[1:]) * args[0].shape[-1]
    return 0


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of `model` on one example of `input_shape`."""
    total = 0

    def count(next_fun, args, kwargs, context):
        nonlocal total
        output = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            total += layer_macs(context.module, args, output)
        return output

    dummy = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

    def forward(x):
        with nn.intercept_methods(count):
            return model.init(jax.random.key(0), x, train=False)  # init runs the forward pass

    jax.eval_shape(forward, dummy)
    return total


def param_count(name: str, **options) -> int:
    """Parameters of variant `name` at its default input shape, without allocating them."""
    model = create(name, **options)
    dummy = jax.ShapeDtypeStruct((1, *default_input_shape(name)), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
    return int(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])))


def describe_models() -> list[dict]:
    """One dict per registered variant: name, params, macs, input_shape."""
    rows = []
    for name in list_models():
        shape = default_input_shape(name)
        rows.append(
            {
                "name": name,
                "params": param_count(name),
                "macs": count_macs(create(name), shape),
                "input_shape": list(shape),
            }
        )
    return rows
