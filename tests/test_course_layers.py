"""The course's layer-side features: pooling with padding and ceil mode (against PyTorch and by
hand), grouped convolutions, and the parametrized and learned activations (leaky_relu:SLOPE,
prelu)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_sizes import filled_variables

from cnnjax import models
from cnnjax.errors import UserError
from cnnjax.models.inventory import layer_macs, param_count
from cnnjax.models.layers import ConvBlock, LayerOptions, get_activation, pool

FAST, PLAIN = LayerOptions(), LayerOptions().plain()


def _nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x.transpose(0, 2, 3, 1))  # torch's [B, C, H, W] -> [B, H, W, C]


# (height, width, window, stride, padding, ceil_mode): windows hanging over the edge, ones
# that PyTorch drops for starting in the right padding, and the exact tilings.
TORCH_CASES = [
    (7, 7, 2, 2, 0, True),
    (7, 9, 3, 2, 1, True),
    (3, 3, 2, 2, 1, True),  # the third window would start in the padding: dropped
    (6, 6, 3, 3, 1, True),
    (8, 8, 2, 2, 0, False),
    (9, 7, 3, 2, 1, False),
    (5, 8, 3, 1, 1, True),
]


@pytest.mark.parametrize("h, w, window, stride, padding, ceil_mode", TORCH_CASES)
def test_pooling_equals_torch(h, w, window, stride, padding, ceil_mode):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(h * w + window).standard_normal((2, 3, h, w)).astype(np.float32)
    args = (window, stride, padding)
    expected = {
        "max": torch.nn.functional.max_pool2d(torch.from_numpy(x), *args, ceil_mode=ceil_mode),
        "average": torch.nn.functional.avg_pool2d(torch.from_numpy(x), *args, ceil_mode=ceil_mode),
    }
    for kind, reference in expected.items():
        reference = reference.numpy().transpose(0, 2, 3, 1)
        for options in (FAST, PLAIN):
            got = pool(
                _nhwc(x),
                kind,
                window,
                stride,
                padding=padding,
                ceil_mode=ceil_mode,
                layer_options=options,
            )
            assert got.shape == reference.shape
            np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)


def test_average_pooling_divisors_by_hand():
    """x = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], 2x2 windows at stride 2.

    ceil_mode, no padding: windows {1, 2, 4, 5}, {3, 6}, {7, 8}, {9}, each divided by the pixels
    it holds: 3, 4.5, 7.5, 9. Padding 1 and ceil_mode: the windows start at -1 and 1; a third
    (at 3) would start in the right padding and is dropped, so 2x2 outputs, each window inside
    the padded input and divided by 4, padding included: 1/4, (2 + 3)/4, (4 + 7)/4,
    (5 + 6 + 8 + 9)/4."""
    x = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    for options in (FAST, PLAIN):
        ceil = pool(x, "average", 2, 2, ceil_mode=True, layer_options=options)
        np.testing.assert_allclose(ceil[0, :, :, 0], [[3, 4.5], [7.5, 9]])
        padded = pool(x, "average", 2, 2, padding=1, ceil_mode=True, layer_options=options)
        np.testing.assert_allclose(padded[0, :, :, 0], [[0.25, 1.25], [2.75, 7]])
        # Max pooling pads with -inf: on negative inputs a padded window is never 0.
        maxed = pool(-x, "max", 3, 1, padding=1, layer_options=options)
        np.testing.assert_array_equal(maxed[0, :, :, 0], [[-1, -1, -2], [-1, -1, -2], [-4, -4, -5]])


def test_reshape_pooling_only_where_it_is_exact():
    """The reshape form is taken for unpadded windows that tile the input, and only there."""

    def uses_reduce_window(shape, **kwargs) -> bool:
        fn = functools.partial(pool, kind="max", window=2, stride=2, layer_options=FAST, **kwargs)
        text = jax.jit(fn).lower(jnp.zeros(shape)).as_text()
        return "reduce_window" in text

    assert not uses_reduce_window((1, 8, 8, 1))
    assert not uses_reduce_window((1, 8, 8, 1), ceil_mode=True)  # rounding up changes nothing
    assert not uses_reduce_window((1, 8, 8, 1), padding="SAME")  # no padding needed
    assert uses_reduce_window((1, 7, 8, 1), ceil_mode=True)
    assert uses_reduce_window((1, 8, 8, 1), padding=1)


def test_bad_pool_padding_is_one_user_error():
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(UserError, match=r"pool padding 2: use VALID, SAME or an int from 0 to"):
        pool(x, "max", 2, 2, padding=2, layer_options=FAST)
    with pytest.raises(UserError, match="SAME already does"):
        pool(x, "max", 2, 2, padding="SAME", ceil_mode=True, layer_options=FAST)


@pytest.mark.parametrize("options", [FAST, PLAIN], ids=["block_convolutions", "plain"])
def test_grouped_conv_block_equals_lax_with_groups(options):
    """4 -> 6 channels in 2 groups, 3x3: few enough channels that the block form would be
    taken without groups; grouped, the block equals lax's grouped convolution."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    block = ConvBlock(6, 3, 1, 1, "identity", "none", layer_options=options, feature_group_count=2)
    variables = block.init(jax.random.key(1), x, train=False)
    kernel = variables["params"]["Conv_0"]["kernel"]
    assert kernel.shape == (3, 3, 2, 6)  # each output reads only its group's 2 inputs
    out = block.apply(variables, x, train=False)
    expected = jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=2,
    )
    np.testing.assert_allclose(out, expected + variables["params"]["Conv_0"]["bias"], atol=1e-6)
    # The first 3 outputs read only inputs 0-1: the other inputs do not move them.
    moved = block.apply(variables, x.at[..., 2:].set(0.0), train=False)
    np.testing.assert_allclose(moved[..., :3], out[..., :3], atol=1e-6)
    # MACs: 6x6 positions x 6 outputs x 3x3 kernel x 4 / 2 inputs each.
    conv = nn.Conv(6, (3, 3), padding=1, feature_group_count=2)
    assert layer_macs(conv, (x[:1],), out[:1]) == 6 * 6 * 6 * 9 * 2


def test_groups_that_do_not_divide_the_channels_fail_clearly():
    block = ConvBlock(6, 3, feature_group_count=4)
    with pytest.raises(UserError, match=r"4 convolution groups must divide the input \(6\)"):
        block.init(jax.random.key(0), jnp.zeros((1, 5, 5, 6)), train=False)


def test_leaky_relu_slope_is_part_of_the_name_and_validated():
    x = jnp.array([-2.0, -0.5, 0.0, 3.0])
    np.testing.assert_allclose(get_activation("leaky_relu:0.2")(x), [-0.4, -0.1, 0.0, 3.0])
    np.testing.assert_allclose(get_activation("leaky_relu")(x), [-0.02, -0.005, 0.0, 3.0])
    for bad in ("leaky_relu:1", "leaky_relu:-0.1", "leaky_relu:abc", "leaky_relu:nan"):
        with pytest.raises(UserError, match=r"negative slope must be a number in \[0, 1\)"):
            get_activation(bad)


def test_model_config_checks_accept_the_new_names_and_reject_bad_ones():
    from cnnjax.config_base import get_base_config
    from cnnjax.models.config_checks import validate_model_config

    config = get_base_config()
    for name in ("prelu", "leaky_relu:0.2"):
        config.model.activation = name
        validate_model_config(config)
    config.model.activation = "leaky_relu:2"
    with pytest.raises(UserError, match="'leaky_relu:2': the negative slope"):
        validate_model_config(config)


def test_prelu_learns_one_slope_per_channel_per_layer():
    """PReLU's slopes start at 0.25, where it equals leaky_relu:0.25 exactly, and get a nonzero
    gradient. LeNet-5 with it has one slope per channel of its four activated layers:
    6 + 16 + 120 + 84 = 226 more parameters than its 61,706."""
    model = models.create("lenet5", activation="prelu")
    variables = filled_variables(model, (2, 28, 28, 1))
    params = variables["params"]
    slopes = {
        jax.tree_util.keystr(path): leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if path[-1].key == "slope"
    }
    assert sorted(slopes.values()) == [(6,), (16,), (84,), (120,)]
    assert param_count("lenet5", activation="prelu") == 61_706 + 6 + 16 + 120 + 84 == 61_932

    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    leaky = models.create("lenet5", activation="leaky_relu:0.25")
    without_slopes = jax.tree.map(lambda a: a, params)
    for block in ("ConvBlock_0", "ConvBlock_1"):
        del without_slopes[block]["PReLU_0"]
    del without_slopes["PReLU_0"], without_slopes["PReLU_1"]
    np.testing.assert_array_equal(
        model.apply(variables, x, train=False),
        leaky.apply({"params": without_slopes}, x, train=False),
    )
    labels = jnp.array([3, 7])

    def loss(params):
        logits = model.apply({"params": params}, x, train=False)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).sum()

    grads = jax.jit(jax.grad(loss))(params)
    for slope_grad in (grads["ConvBlock_0"]["PReLU_0"]["slope"], grads["PReLU_1"]["slope"]):
        assert slope_grad.shape in ((6,), (84,)) and float(jnp.abs(slope_grad).max()) > 0
