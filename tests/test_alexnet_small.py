"""A small AlexNet (experiments/alexnet_design): the width factor and the input padding, with
sizes computed by hand; the full nets unchanged; the recipe's ablation switches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import load_config, models
from cnnjax.errors import UserError
from cnnjax.models.alexnet import LocalResponseNorm
from cnnjax.models.inventory import count_macs, param_count
from cnnjax.models.layers import LayerOptions
from tests.conftest import ROOT

PLAIN = LayerOptions().plain()
# The study's net: the paper's layout at a quarter of its filters, 512-unit dense layers, on
# 112x112 grey images (Fashion-MNIST upscaled 4x) padded to 131.
SMALL = {"width_multiplier": 0.25, "hidden_units": 512, "num_classes": 10, "input_size": 131}


def _variables(model, shape):
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _params(model, shape) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(_variables(model, shape)["params"]))


def test_the_small_alexnet_has_a_quarter_of_the_filters():
    """Filters 96-256-384-384-256 x 0.25 = 24-64-96-96-64 on 1 input channel: conv1
    11*11*1*24 + 24 = 2,928; conv2 5*5*24*64 + 64 = 38,464; conv3 3*3*64*96 + 96 = 55,392;
    conv4 3*3*96*96 + 96 = 83,040; conv5 3*3*96*64 + 64 = 55,360; fc6 (6*6*64)*512 + 512 =
    1,180,160; fc7 512*512 + 512 = 262,656; fc8 512*10 + 10 = 5,130: 1,683,130 in all.
    MACs on 131x131 (maps 31, 15, 7, 7, 7): 31^2*24*121 + 15^2*64*600 + 7^2*96*576
    + 7^2*96*864 + 7^2*64*864 + 2304*512 + 512*512 + 512*10 = 22,360,920."""
    model = models.create("alexnet_paper", layer_options=PLAIN, **SMALL)
    assert _params(model, (112, 112, 1)) == 1_683_130
    macs = 2_790_744 + 8_640_000 + 2_709_504 + 4_064_256 + 2_709_504 + 1_179_648 + 262_144 + 5_120
    assert count_macs(model, (112, 112, 1)) == macs == 22_360_920


def test_width_one_is_the_full_net_and_groups_stay_even():
    """The default factor leaves the published sizes; with two towers a factor rounds each
    width to a multiple of 2 (0.3: 96 -> 28.8 -> 28, 256 -> 76.8 -> 76, 384 -> 115.2 -> 116)."""
    assert param_count("alexnet", width_multiplier=1.0) == 61_100_840
    assert param_count("alexnet_twotower") == 60_965_224
    model = models.create("alexnet_twotower", width_multiplier=0.3, hidden_units=8)
    kernels = [
        leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(_variables(model, (67, 67, 3)))[0]
        if "ConvBlock" in jax.tree_util.keystr(path) and leaf.ndim == 4
    ]
    # [kh, kw, input channels per group, filters]: conv2, conv4, conv5 read half the maps.
    assert [k[2:] for k in kernels] == [(3, 28), (14, 76), (76, 116), (58, 116), (58, 76)]


def _pooled_sizes(input_size: int, window: int) -> list[int]:
    model = models.create(
        "alexnet_paper",
        layer_options=PLAIN,
        pool_window=window,
        pool_stride=2,
        **{**SMALL, "input_size": input_size},
    )
    x = jnp.zeros((1, 112, 112, 1))
    variables = _variables(model, (112, 112, 1))
    jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, x)
    return [
        eqn.outvars[0].aval.shape[1]
        for eqn in jaxpr.jaxpr.eqns
        if eqn.primitive.name == "reduce_window_max"
    ]


def test_padding_to_131_gives_both_poolings_the_same_maps():
    """As the paper's 227 (55 -> 27 -> 13 -> 6 either way), 131 = 4 * 31 + 7 keeps every map
    odd at the three pooling points: 31 -> 15 -> 7 -> 3 with 3x3 or 2x2 stride-2 pooling. The
    unpadded 112 gives conv1 maps of 26 and then different sizes (12 -> 5 -> 2 vs 13 -> 6 -> 3)."""
    assert _pooled_sizes(131, 3) == _pooled_sizes(131, 2) == [15, 7, 3]
    assert _pooled_sizes(0, 3) == [12, 5, 2]
    assert _pooled_sizes(0, 2) == [13, 6, 3]


def test_padding_is_zeros_around_the_image():
    """input_size pads evenly (an odd pixel at the end): 112 -> 131 adds 9 rows above, 10
    below; an input as large as input_size is untouched."""
    model = models.create("alexnet_paper", **SMALL)
    x = jnp.ones((1, 112, 112, 1))
    assert model._padded(x).shape == (1, 131, 131, 1)
    padded = model._padded(x)[0, :, :, 0]
    assert float(padded.sum()) == 112 * 112
    assert float(padded[9:121, 9:121].sum()) == 112 * 112
    assert model._padded(jnp.ones((1, 131, 131, 1))).shape == (1, 131, 131, 1)


def test_lrn_alpha_rescaled_for_inputs_divided_by_c():
    """LRN_alpha(c * a) = c * LRN_{c^2 alpha}(a): the paper's 1e-4 on 0-255 pixels acts on
    standardized pixels (those divided by c = 90) as alpha = 1e-4 * 90^2 = 0.81. With window
    sums of order one, the paper's alpha is a near-constant division by k^beta = 2^0.75."""
    a = np.random.default_rng(0).uniform(0.0, 3.0, (2, 3, 3, 8)).astype(np.float32)
    c = 90.0

    @jax.jit  # one compilation rather than one per operation
    def outputs(a):
        def lrn(alpha, x):
            return LocalResponseNorm(alpha=alpha).apply({}, x)

        return lrn(1e-4, c * a), lrn(0.81, a), lrn(1e-4, a)

    paper, rescaled, unscaled = map(np.asarray, outputs(a))
    np.testing.assert_allclose(paper, c * rescaled, rtol=1e-5)
    np.testing.assert_allclose(unscaled, a / 2**0.75, rtol=3e-3)
    assert np.abs(rescaled / (a / 2**0.75) - 1).max() > 0.5  # normalizes: far from a constant


def test_a_width_factor_that_is_not_positive_says_what_to_use():
    model = models.create("alexnet", width_multiplier=0.0, hidden_units=8)
    with pytest.raises(UserError, match="width_multiplier=0.0: use a positive factor"):
        _variables(model, (64, 64, 3))


def test_the_recipe_declares_the_ablation_switches_at_the_nets_defaults():
    """configs/alexnet_cifar10.py names the switches a sweep sets; their values build the same
    nets as before (LRN only in the paper's net): at 227x227x3 and 1000 classes, the paper's
    convolutions 3,747,200 and dense layers of 1024 units 9216*1024 + 1024 + 1024*1024 + 1024
    + 1024*1000 + 1000 = 11,512,808, 15,260,008 in all."""
    recipe = f"{ROOT}/configs/alexnet_cifar10.py"
    common, paper = load_config(recipe), load_config(f"{recipe}:paper")
    assert common.model.options.to_dict() == {
        "hidden_units": 1024,
        "lrn": False,
        "lrn_alpha": 1e-4,
        "pool_window": 3,
        "pool_stride": 2,
        "width_multiplier": 1.0,
        "input_size": 0,
    }
    assert paper.model.options.lrn is True
    recipe_net = param_count("alexnet_paper", **paper.model.options.to_dict())
    assert recipe_net == param_count("alexnet_paper", hidden_units=1024) == 15_260_008
