"""The space-to-depth convolution (cnnjax/models/conv_lowering.py) computes lax's convolution:
same outputs within float32 rounding, same weight gradients exactly, same input gradients
within rounding; convolutions it does not suit go to lax untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnjax import models
from cnnjax.models import conv_lowering
from cnnjax.models.layers import LayerOptions

NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _both(shape, kernel, padding, strides=(1, 1), dilation=(1, 1), seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel), jnp.float32)

    def plain(x, w):
        return lax.conv_general_dilated(
            x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC
        )

    def lowered(x, w):
        return conv_lowering.convolution(
            x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC
        )

    cotangent = jnp.asarray(rng.normal(size=plain(x, w).shape), jnp.float32)
    results = []
    for fn in (plain, lowered):
        y, pullback = jax.vjp(jax.jit(fn), x, w)
        results.append((y, *pullback(cotangent)))
    return results


def _relative(a, b) -> float:
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


@pytest.mark.parametrize(
    "shape, kernel, padding",
    [
        ((4, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2))),  # LeNet-5's first layer
        ((4, 14, 14, 6), (5, 5, 6, 16), "VALID"),  # its second
        ((3, 32, 32, 3), (3, 3, 3, 16), "SAME"),  # a CIFAR stem
        ((2, 13, 11, 2), (4, 3, 2, 5), ((0, 2), (1, 0))),  # odd sizes, even and uneven kernel
        ((2, 10, 10, 1), (7, 7, 1, 3), ((3, 3), (3, 3))),
        ((2, 9, 9, 1), (3, 3, 1, 4), ((4, 3), (0, 0))),  # padding >= kernel: plain input grad
    ],
)
def test_block_form_gives_the_convolution_and_its_gradients(shape, kernel, padding):
    (y, dx, dw), (y_fast, dx_fast, dw_fast) = _both(shape, kernel, padding)
    assert y_fast.shape == y.shape
    assert _relative(y_fast, y) < 1e-6
    assert _relative(dx_fast, dx) < 1e-6
    np.testing.assert_array_equal(dw_fast, dw)  # the weight gradient is the plain one


@pytest.mark.parametrize(
    "shape, kernel, strides, dilation",
    [
        ((2, 16, 16, 16), (3, 3, 16, 16), (1, 1), (1, 1)),  # many channels: plain was faster
        ((2, 16, 16, 3), (3, 3, 3, 16), (2, 2), (1, 1)),  # strided
        ((2, 16, 16, 1), (3, 3, 1, 8), (1, 1), (2, 2)),  # dilated ("SAME" pads for 5x5)
        ((2, 16, 16, 1), (1, 1, 1, 4), (1, 1), (1, 1)),  # 1x1
    ],
)
def test_other_convolutions_are_lax_untouched(shape, kernel, strides, dilation):
    (y, dx, dw), (y_fast, dx_fast, dw_fast) = _both(shape, kernel, "SAME", strides, dilation)
    for fast, plain in ((y_fast, y), (dx_fast, dx), (dw_fast, dw)):
        np.testing.assert_array_equal(fast, plain)


def test_the_rule_takes_lenet5_and_the_stem_and_leaves_wide_layers():
    assert conv_lowering._blocks_pay(5, 5, 1, 6) and conv_lowering._blocks_pay(5, 5, 16, 6)
    assert conv_lowering._blocks_pay(3, 3, 3, 16) and conv_lowering._blocks_pay(3, 3, 8, 8)
    assert not conv_lowering._blocks_pay(3, 3, 16, 16) and not conv_lowering._blocks_pay(
        3, 3, 8, 16
    )


def test_conv_block_takes_the_block_form_only_with_block_convolutions_on():
    """The wiring: LeNet-5's first layer (5x5, 1 -> 6) becomes a 3x3 convolution of 4 -> 24
    channels inside a custom VJP; with `block_convolutions` off the model traces lax's
    convolution."""
    model = models.create("lenet5")
    x = jnp.zeros((2, 28, 28, 1), jnp.float32)
    # Shapes suffice for a jaxpr (an eager init compiles every random draw).
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)

    def traced(block_convolutions: bool) -> str:
        options = LayerOptions(block_convolutions=block_convolutions)
        clone = model.clone(layer_options=options)
        return str(jax.make_jaxpr(lambda v: clone.apply(v, x, train=False))(variables))

    fast, plain = traced(True), traced(False)
    assert "custom_vjp_call" in fast and "f32[3,3,4,24]" in fast
    assert "custom_vjp_call" not in plain and "f32[3,3,4,24]" not in plain
