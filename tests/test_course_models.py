"""The course's model-side features: every family with the learned activation, the locally
connected layer and LeNet-5 without weight sharing, the dense baselines and AlexNet's two
towers and pooling switches; sizes pinned by hand."""

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
from cnnjax.models.inventory import count_macs, param_count
from cnnjax.models.layers import LayerOptions
from cnnjax.models.locally_connected import LocallyConnected2D
from cnnjax.models.registry import get_spec

PLAIN = LayerOptions().plain()


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
