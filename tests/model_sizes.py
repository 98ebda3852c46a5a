"""A small input shape and size options for every registered variant, shared by the tests.

`SMALL[name] = (input shape of one example, options for models.create)`: small enough that the
default suite stays fast on 2 CPU cores, big enough for every downsampling stage of the net.
Test files import it as `from model_sizes import SMALL`: pytest puts this rootless test folder
(it has no __init__.py) on sys.path, both for `pytest tests/` and for a single file.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models
from cnnjax.models.registry import get_spec

# XLA:CPU's compilation dominates the tests that run whole nets (seconds per train step of a deep
# net on 2 cores): without its backend optimizations it compiles such steps about twice as fast,
# its older loop emitters save up to half of the rest (GoogLeNet's), and steps this small still
# run at once.
_NO_OPTIMIZATIONS = {"xla_backend_optimization_level": 0}
_LOOP_EMITTERS = {"xla_cpu_use_fusion_emitters": False}


def _quick_compile() -> dict:
    """`_NO_OPTIMIZATIONS`, with `_LOOP_EMITTERS` where this XLA still has them: newer XLA:CPU
    (jaxlib 0.12) deleted its loop emitters and the option with them, and rejects an unknown
    compile option ("No such compile option"). Checked by compiling a scalar addition."""
    options = {**_NO_OPTIMIZATIONS, **_LOOP_EMITTERS}
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(np.float32(0)).compile()
    except jax.errors.JaxRuntimeError as error:
        if "No such compile option" not in str(error):
            raise
        return dict(_NO_OPTIMIZATIONS)
    return options


QUICK_COMPILE = _quick_compile()
jit_fast = functools.partial(jax.jit, compiler_options=QUICK_COMPILE)

SMALL = {
    "alexnet": ((64, 64, 3), {"hidden_units": 64}),
    "alexnet_paper": ((67, 67, 3), {"hidden_units": 64}),
    "alexnet_twotower": ((67, 67, 3), {"hidden_units": 64}),
    "c3d": ((4, 16, 16, 3), {"hidden_units": 32, "stages": ((8,), (16,))}),
    "c3d_small": ((4, 16, 16, 1), {}),
    "cifar_convnet": ((32, 32, 3), {}),
    "convnet1d": ((28, 28), {}),
    "dilated_context": ((16, 16, 1), {"features": 8}),
    "fast_convnet": ((28, 28, 1), {}),
    "googlenet": ((32, 32, 3), {"num_classes": 10}),
    "inception_v3": ((75, 75, 3), {"num_classes": 10}),
    "lenet5": ((28, 28, 1), {}),
    "lenet5_local": ((28, 28, 1), {}),
    "logistic": ((8, 8, 1), {}),
    "mlp": ((8, 8, 1), {"hidden_sizes": (16,)}),
    "unet": ((16, 16, 1), {"base_features": 4, "depth": 2}),
    "unet_small": ((16, 16, 1), {}),
}
for _name in models.list_models():
    if _name.startswith("vgg"):
        SMALL[_name] = ((32, 32, 3), {"width_divisor": 16})
    elif get_spec(_name).family.__name__ == "ResNet":
        SMALL[_name] = ((32, 32, 3), {"width": 4, "num_classes": 10})
    elif get_spec(_name).family.__name__ in ("CifarResNet", "WideResNet"):
        SMALL[_name] = ((16, 16, 3), {})


def filled_variables(model, input_shape: tuple[int, ...], seed: int = 0) -> dict:
    """Variables of the shapes `model.init` gives for inputs of `input_shape` (batch included),
    filled on the host: kernels N(0, 1 / fan-in), scales and running variances 1, PReLU slopes
    their initial 0.25, everything else 0. Traced with `jax.eval_shape`, never compiled: Flax's
    `init` compiles one random draw per parameter shape (seconds per model on 2 CPU cores), and
    the tests only need well-scaled values."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            if str(path[-2].key).startswith("LocallyConnected2D"):
                fan_in = leaf.shape[-2]  # [out_h, out_w, fan-in, F]: a kernel per position
            return rng.standard_normal(leaf.shape).astype(np.float32) / np.sqrt(fan_in)
        fill_value = {"scale": 1.0, "var": 1.0, "slope": 0.25}.get(name, 0.0)
        return np.full(leaf.shape, fill_value, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)
