"""The course's model-side features: pooling with padding and ceil mode, grouped convolutions,
parametrized and learned activations, the locally connected layer, the dense baselines and
AlexNet's two towers; sizes pinned by hand."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import ClosedJaxpr, Jaxpr
from model_sizes import SMALL, filled_variables

from cnnjax import models
from cnnjax.errors import UserError
from cnnjax.models.inventory import count_macs, layer_macs, param_count
from cnnjax.models.layers import ConvBlock, LayerOptions, get_activation, pool
from cnnjax.models.locally_connected import LocallyConnected2D
from cnnjax.models.registry import get_spec

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


# One variant per family, small ones.
FAMILY_VARIANTS = (
    *("alexnet", "c3d_small", "cifar_convnet", "convnet1d", "dilated_context", "fast_convnet"),
    *("googlenet", "inception_v3", "lenet5", "mlp", "resnet18", "resnet20", "unet_small"),
    *("vgg11", "wrn16_8"),
)


def _primitives(jaxpr, found: set[str]) -> set[str]:
    """Names of the primitives of `jaxpr` and of every jaxpr nested in it (jit, custom_jvp)."""
    for eqn in jaxpr.eqns:
        found.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, ClosedJaxpr):
                    _primitives(sub.jaxpr, found)
                elif isinstance(sub, Jaxpr):
                    _primitives(sub, found)
    return found


def test_every_family_takes_the_learned_activation_everywhere():
    """Every family with activation="prelu" at its small size (traced, nothing computed): it
    makes PReLU slopes, and its forward pass has no `max` left, the primitive of ReLU (which
    LeNet-5 with "relu" shows): no layer hard-codes its activation."""
    families = {get_spec(name).family for name in models.list_models()}
    assert {get_spec(name).family for name in FAMILY_VARIANTS} == families

    def primitives_and_slopes(name, activation):
        shape, options = SMALL[name]
        model = models.create(name, **{**options, "activation": activation})
        x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
        variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
        jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, x)
        leaves = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
        slopes = [leaf for path, leaf in leaves if path[-1].key == "slope"]
        return _primitives(jaxpr.jaxpr, set()), slopes

    assert "max" in primitives_and_slopes("lenet5", "relu")[0]
    for name in FAMILY_VARIANTS:
        primitives, slopes = primitives_and_slopes(name, "prelu")
        assert slopes and "max" not in primitives, name


def test_activation_statistics_read_learned_and_parametrized_activations():
    """cnnjax.inspect.activations: with PReLU the activation layers are the PReLU modules'
    outputs (their slopes are parameters), equal at slope 0.25 to leaky_relu:0.25 applied by
    name to the same normalization outputs; the statistics take both names."""
    from cnnjax.inspect import activations as act

    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    values, stats, paths = {}, {}, {}
    for activation in ("prelu", "leaky_relu:0.25"):
        model = models.create("lenet5", activation=activation)
        variables = filled_variables(model, x.shape)
        layers = act.activation_layers(act.trace_calls(model, variables, x), activation)
        paths[activation] = [la.path for la in layers]
        values[activation] = act.capture_activations(model, variables, x, layers)
        stats[activation] = act.activation_statistics(values[activation], activation=activation)
    assert paths["prelu"] == ["ConvBlock_0/PReLU_0", "ConvBlock_1/PReLU_0", "PReLU_0", "PReLU_1"]
    assert list(values["prelu"]) == ["ConvBlock_0", "ConvBlock_1", "Dense_0/act", "Dense_1/act"]
    for name, prelu in values["prelu"].items():
        np.testing.assert_allclose(prelu, values["leaky_relu:0.25"][name], rtol=1e-6, atol=1e-6)
        assert prelu.min() < 0  # negative outputs: a slope was applied, not a ReLU
        ours, theirs = stats["prelu"][name], stats["leaky_relu:0.25"][name]
        assert ours["saturated_fraction"] is theirs["saturated_fraction"] is None
        for key in ("mean", "zero_fraction", "dead_fraction"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (name, key)


@pytest.fixture(scope="module")
def local_and_conv():
    """A LocallyConnected2D (3 -> 4 channels, 3x3, stride 2, padding 1) on [2, 9, 8, 3]
    inputs, parameters of the shapes its init gives, and the nn.Conv with the same
    connectivity and its parameters; values drawn by numpy (an eager init compiles every
    random draw on its own)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 3)), jnp.float32)
    local = LocallyConnected2D(4, 3, strides=2, padding=1)
    conv = nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    shapes = jax.eval_shape(local.init, jax.random.key(0), x)["params"]
    params = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in shapes.items()}
    conv_params = {
        "kernel": rng.standard_normal((3, 3, 3, 4)).astype(np.float32),
        "bias": rng.standard_normal(4).astype(np.float32),
    }
    return x, local, params, conv, conv_params


def test_locally_connected_layer_is_a_convolution_without_weight_sharing(local_and_conv):
    """Its kernel [out_h, out_w, kh * kw * C_in, F] and bias [out_h, out_w, F], Keras' layout;
    out_h = (9 + 2 - 3) // 2 + 1 = 5, out_w = (8 + 2 - 3) // 2 + 1 = 4, so
    5 * 4 * (3 * 3 * 3 * 4 + 4) = 2,240 parameters. With the conv kernel at every position it is
    the convolution."""
    x, local, params, conv, conv_params = local_and_conv
    assert params["kernel"].shape == (5, 4, 27, 4) and params["bias"].shape == (5, 4, 4)
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == 5 * 4 * (27 * 4 + 4) == 2_240
    tied = {
        "kernel": jnp.broadcast_to(conv_params["kernel"].reshape(27, 4), (5, 4, 27, 4)),
        "bias": jnp.broadcast_to(conv_params["bias"], (5, 4, 4)),
    }
    np.testing.assert_allclose(
        local.apply({"params": tied}, x), conv.apply({"params": conv_params}, x), atol=1e-5
    )


def test_locally_connected_gradients(local_and_conv):
    """Tied kernels: the gradient of the convolution's shared kernel is the sum over positions
    of the local kernels' gradients. Untied: the gradient matches float64 finite differences."""
    x, local, params, conv, conv_params = local_and_conv
    target = jax.random.normal(jax.random.key(3), (2, 5, 4, 4))
    tied = {"kernel": jnp.broadcast_to(conv_params["kernel"].reshape(27, 4), (5, 4, 27, 4))}
    tied["bias"] = jnp.broadcast_to(conv_params["bias"], (5, 4, 4))
    local_grad = jax.grad(lambda p: (local.apply({"params": p}, x) * target).sum())(tied)
    conv_grad = jax.grad(lambda p: (conv.apply({"params": p}, x) * target).sum())(conv_params)
    np.testing.assert_allclose(
        local_grad["kernel"].sum(axis=(0, 1)), conv_grad["kernel"].reshape(27, 4), atol=1e-4
    )
    np.testing.assert_allclose(local_grad["bias"].sum(axis=(0, 1)), conv_grad["bias"], atol=1e-4)
    with jax.enable_x64(True):
        from jax.test_util import check_grads

        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        x64 = np.asarray(x, np.float64)
        loss = jax.jit(lambda p, x: (jnp.tanh(local.apply({"params": p}, x)) * target).sum())
        check_grads(loss, (p64, x64), order=1, modes=["rev"])


def test_lenet5_without_weight_sharing_is_one_switch():
    """LeNet-5 with locally connected C1 and C3 (32x32 input):
    C1: 28*28*(5*5*1*6) + 28*28*6 = 117,600 + 4,704 = 122,304 (instead of 156);
    C3: 10*10*(5*5*6*16) + 10*10*16 = 240,000 + 1,600 = 241,600 (instead of 2,416);
    F5, F6, output: 48,120 + 10,164 + 850 as before: 423,038 in all. The same products are
    taken, so the MACs stay LeNet-5's 416,520."""
    expected = 122_304 + 241_600 + 48_120 + 10_164 + 850
    # The recipe's batch norm drops C1's and C3's biases and adds a scale and a shift per
    # channel of its 4 normalized layers.
    recipe_expected = expected - 28 * 28 * 6 - 10 * 10 * 16 + 2 * (6 + 16 + 120 + 84)
    assert param_count("lenet5_local") == param_count("lenet5", locally_connected=True)
    assert param_count("lenet5_local") == expected == 423_038
    assert count_macs(models.create("lenet5_local"), (32, 32, 1)) == 416_520
    with pytest.raises(UserError, match="c3_table and locally_connected"):
        param_count("lenet5", locally_connected=True, c3_table=True)

    from cnnjax.config_loader import load_config
    from cnnjax.train.run import build_model

    config = load_config(
        "configs/lenet5_fashion_mnist.py", ["--config.model.options.locally_connected=True"]
    )
    model = build_model(config, num_classes=10)
    assert model.locally_connected is True
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 28, 28, 1))
    )
    assert sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["params"])) == recipe_expected
    assert recipe_expected == 417_186


def test_dense_baselines_have_the_courses_sizes():
    """Softmax regression 784 x 10 + 10 = 7,850; the 784-800-10 MLP 784 x 800 + 800 + 800 x 10
    + 10 = 636,010; batch norm between dense and activation drops the hidden bias (800) and
    adds a scale and a shift (1,600): 636,810. Any input shape is flattened."""
    assert param_count("logistic") == 784 * 10 + 10 == 7_850
    assert param_count("mlp") == 784 * 800 + 800 + 800 * 10 + 10 == 636_010
    assert param_count("mlp", normalization="batch") == 636_010 - 800 + 1_600
    assert count_macs(models.create("mlp"), (28, 28, 1)) == 784 * 800 + 800 * 10
    model = models.create("logistic", num_classes=3)
    x = jnp.ones((2, 5, 7, 3))
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    assert variables["params"]["Dense_0"]["kernel"].shape == (5 * 7 * 3, 3)


def test_logistic_regression_trains_from_a_run_config():
    """`model.name="logistic"` through the train loop's own model builder (which passes the
    run's activation, normalization and dropout to every family), state and step: the loss
    falls on a repeated batch."""
    import optax

    from cnnjax.config_base import get_base_config
    from cnnjax.models.config_checks import validate_model_config
    from cnnjax.train.run import build_model
    from cnnjax.train.state import create_train_state
    from cnnjax.train.steps import StepOptions, train_step

    config = get_base_config()  # no recipe's family options: those are LeNet-5's
    config.model.name = "logistic"
    validate_model_config(config)
    model = build_model(config, num_classes=10)
    state = create_train_state(model, optax.sgd(0.1), input_shape=(28, 28, 1), seed=0)
    assert sum(leaf.size for leaf in jax.tree.leaves(state.params)) == 7_850
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.standard_normal((16, 28, 28, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
    }
    step = jax.jit(functools.partial(train_step, options=StepOptions(num_classes=10)))
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss_sum"]) / 16)
    assert losses[0] == pytest.approx(math.log(10), abs=0.6) and losses[2] < losses[0], losses


def test_alexnet_two_towers_and_pooling_switches():
    """Krizhevsky et al.'s two-GPU net: conv2, conv4 and conv5 read one tower (half the maps):
    conv1 11*11*3*96 + 96 = 34,944; conv2 5*5*48*256 + 256 = 307,456; conv3 3*3*256*384 + 384
    = 885,120; conv4 3*3*192*384 + 384 = 663,936; conv5 3*3*192*256 + 256 = 442,624;
    fc6 9216*4096 + 4096, fc7 4096*4096 + 4096, fc8 4096*1000 + 1000: 60,965,224 in all.
    MACs: 55^2*96*363 + 27^2*256*1200 + 13^2*384*2304 + 13^2*384*1728 + 13^2*256*1728
    + 9216*4096 + 4096*4096 + 4096*1000 = 724,406,816."""
    assert param_count("alexnet_twotower") == 60_965_224
    assert param_count("alexnet_paper", groups=2) == 60_965_224
    macs = count_macs(models.create("alexnet_twotower"), (227, 227, 3))
    assert macs == 105_415_200 + 223_948_800 + 149_520_384 + 112_140_288 + 74_760_192 + 58_621_952
    assert macs == 724_406_816

    def windows(**options) -> list[tuple[int, ...]]:
        model = models.create("alexnet", hidden_units=8, layer_options=PLAIN, **options)
        x = jnp.zeros((1, 64, 64, 3))
        jaxpr = jax.make_jaxpr(functools.partial(model.init, train=False))(jax.random.key(0), x)
        return [
            eqn.params["window_dimensions"]
            for eqn in jaxpr.jaxpr.eqns
            if eqn.primitive.name == "reduce_window_max"
        ]

    assert windows() == [(1, 3, 3, 1)] * 3  # overlapping (64x64: 15 -> 7, 7 -> 3, 3 -> 1)
    assert windows(pool_window=2, pool_stride=2) == [(1, 2, 2, 1)] * 3


def test_cnnjax_models_lists_the_new_variants(monkeypatch):
    from cnnjax.models import inventory

    new = ["alexnet_twotower", "lenet5_local", "logistic", "mlp"]
    monkeypatch.setattr(inventory, "list_models", lambda: new)
    rows = {
        row["name"]: (row["params"], row["macs"], row["input_shape"])
        for row in inventory.describe_models()
    }
    assert rows == {
        "alexnet_twotower": (60_965_224, 724_406_816, [227, 227, 3]),
        "lenet5_local": (423_038, 416_520, [32, 32, 1]),
        "logistic": (7_850, 7_840, [28, 28, 1]),
        "mlp": (636_010, 635_200, [28, 28, 1]),
    }
