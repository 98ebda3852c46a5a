"""Models: the course's hand-computed convolution, LeNet-5's size, the registry's errors."""

import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_sizes import filled_variables, jit_fast

from cnnjax import models
from cnnjax.errors import UserError
from cnnjax.models.layers import ConvBlock, LayerOptions, Normalization, pool

IMAGE = [[0, 1, 0, 1], [0, 1, 0, 1], [1, 1, 1, 1], [0, -2, 0, -2]]
VERTICAL = [[-0.5, 1, -0.5]] * 3
HORIZONTAL = [[-0.5, -0.5, -0.5], [1, 1, 1], [-0.5, -0.5, -0.5]]


def test_course_convolution_exercise_through_conv_block_and_pool():
    block = ConvBlock(features=2, kernel_size=3, activation="identity")
    x = jnp.asarray(IMAGE, jnp.float32)[None, :, :, None]  # [1, 4, 4, 1]
    kernel = jnp.stack([jnp.asarray(VERTICAL), jnp.asarray(HORIZONTAL)], axis=-1)[:, :, None, :]
    params = {"Conv_0": {"kernel": kernel, "bias": jnp.zeros(2)}}
    out = block.apply({"params": params}, x, train=False)  # [1, 2, 2, 2]
    np.testing.assert_allclose(out[0, :, :, 0], [[2, -2], [-1, 1]])
    np.testing.assert_allclose(out[0, :, :, 1], [[-1, -0.5], [3.5, 4]])
    for options in (LayerOptions(), LayerOptions().plain()):
        pooled = {k: pool(out, k, 2, 2, layer_options=options)[0, 0, 0] for k in ("max", "average")}
        np.testing.assert_allclose(pooled["max"], [2, 4])
        np.testing.assert_allclose(pooled["average"], [0, 1.5])


@pytest.mark.parametrize("kind", ["max", "average"])
def test_reshape_pooling_equals_reduce_window(kind):
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    reference = (nn.max_pool if kind == "max" else nn.avg_pool)(x, (2, 2), strides=(2, 2))
    fast = LayerOptions(reshape_pooling=True)
    np.testing.assert_allclose(pool(x, kind, 2, 2, layer_options=fast), reference, rtol=1e-6)
    # Overlapping windows (AlexNet's 3x3 stride 2) fall back to reduce_window.
    reference = (nn.max_pool if kind == "max" else nn.avg_pool)(x, (3, 3), strides=(2, 2))
    np.testing.assert_allclose(pool(x, kind, 3, 2, layer_options=fast), reference, rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 32, 32, 1), (1, 28, 28, 1)])
def test_lenet5_has_61706_parameters(shape):
    model = models.create("lenet5")
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    assert sum(leaf.size for leaf in jax.tree.leaves(variables["params"])) == 61_706


def test_lenet5_initial_loss_is_near_ln10():
    from cnnjax.train.steps import cross_entropy

    model = models.create("lenet5")
    # The initializers' own values, from one compiled program (op by op, every random draw of
    # a shape compiles on its own).
    variables = jit_fast(
        lambda: model.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)), train=False)
    )()
    images = jax.random.normal(jax.random.key(1), (256, 28, 28, 1))
    labels = jax.random.randint(jax.random.key(2), (256,), 0, 10)

    @jit_fast
    def initial_loss(variables, images, labels):
        logits = model.apply(variables, images, train=False)
        return cross_entropy(logits, labels, num_classes=10).mean()

    assert abs(float(initial_loss(variables, images, labels)) - math.log(10)) < 0.1


@pytest.mark.parametrize("normalization", ["none", "batch", "layer", "instance", "group"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu"])
def test_lenet5_switches_give_finite_logits(normalization, activation):
    model = models.create(
        "lenet5", normalization=normalization, activation=activation, pooling="average"
    )
    variables = filled_variables(model, (2, 28, 28, 1))
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    logits, _ = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"]
    )
    assert logits.shape == (2, 10) and bool(jnp.isfinite(logits).all())
    assert ("batch_stats" in variables) == (normalization == "batch")


def test_dropout_acts_only_in_training():
    model = models.create("lenet5", dropout_rate=0.5)
    variables = filled_variables(model, (4, 28, 28, 1))
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    eval_a = model.apply(variables, x, train=False)
    eval_b = model.apply(variables, x, train=False)
    train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    train_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(eval_a, eval_b)
    assert float(jnp.abs(train_a - train_b).max()) > 1e-3


def test_group_norm_uses_a_divisor_of_narrow_channel_counts():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 6))
    variables = Normalization("group", num_groups=32).init(jax.random.key(0), x, train=True)
    y = Normalization("group", num_groups=32).apply(variables, x, train=True)
    # 6 channels -> 6 groups of one channel: each channel of each example is standardized.
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0, atol=1e-5)


def test_group_with_a_count_normalizes_over_that_many_channel_groups():
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 4, 4, 8))) * 3 + 1
    layer = Normalization("group:2")
    y = np.asarray(layer.apply(layer.init(jax.random.key(0), x, train=True), x, train=True))
    # Two groups of 4 channels, each standardized over its positions and channels together.
    groups = x.reshape(2, 4, 4, 2, 4)
    mean = groups.mean(axis=(1, 2, 4), keepdims=True)
    std = np.sqrt(groups.var(axis=(1, 2, 4), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ((groups - mean) / std).reshape(x.shape), atol=1e-5)
    # group:3 on 8 channels: the largest divisor of 8 up to 3, so 2 groups.
    three = Normalization("group:3")
    y3 = three.apply(three.init(jax.random.key(0), x, train=True), x, train=True)
    np.testing.assert_array_equal(np.asarray(y3), y)
    for bad in ("group:0", "group:x", "group:"):
        with pytest.raises(UserError, match=f"normalization '{bad}': give a whole number"):
            Normalization(bad).init(jax.random.key(0), x, train=True)


@pytest.mark.parametrize("kind", ["group", "instance"])
def test_group_norm_gradient_stays_float32_accurate_for_offset_inputs(kind):
    """Channels whose mean is 100x their spread: mean(x^2) - mean^2 would cancel in float32."""
    x = 100.0 + np.random.default_rng(0).normal(size=(2, 4, 4, 8))
    target = np.random.default_rng(1).normal(size=x.shape)
    layer = Normalization(kind, num_groups=4)
    variables = layer.init(jax.random.key(0), x.astype(np.float32), train=True)

    def loss(inputs):
        return (layer.apply(variables, inputs, train=True) * target.astype(inputs.dtype)).sum()

    gradient = np.asarray(jax.jit(jax.grad(loss))(x.astype(np.float32)))
    with jax.enable_x64(True):
        reference = np.asarray(jax.jit(jax.grad(loss))(x))
    assert np.abs(gradient - reference).max() < 1e-4 * np.abs(reference).max()


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown model 'lenet7': choose one of .*lenet5"):
        models.create("lenet7")


def test_unknown_option_lists_the_family_options():
    with pytest.raises(UserError, match=r"no option depth: its options are activation"):
        models.create("lenet5", depth=3)


def test_unknown_activation_and_normalization_fail_clearly():
    x = jnp.zeros((1, 28, 28, 1))
    with pytest.raises(UserError, match="unknown activation 'relu6'"):
        models.create("lenet5", activation="relu6").init(jax.random.key(0), x, train=False)
    with pytest.raises(UserError, match="unknown normalization 'batchnorm'.*, group, group:<G>"):
        models.create("lenet5", normalization="batchnorm").init(jax.random.key(0), x, train=False)


def test_inventory_lists_lenet5_with_its_count(monkeypatch):
    from cnnjax.models import inventory

    # Two variants, not all 35: tracing every model twice took 15 s, and the counts of all of
    # them are pinned by tests/test_families.py and tests/test_summary.py.
    monkeypatch.setattr(inventory, "list_models", lambda: ["lenet5", "resnet20"])
    rows = {row["name"]: row for row in inventory.describe_models()}
    assert list(rows) == ["lenet5", "resnet20"] and rows["resnet20"]["params"] == 269_722
    assert rows["lenet5"] == {
        "name": "lenet5",
        "params": 61_706,
        "macs": 416_520,
        "input_shape": [32, 32, 1],
    }


def test_local_response_norm_matches_the_papers_formula():
    from cnnjax.models.alexnet import LocalResponseNorm

    x = jnp.arange(1.0, 8.0).reshape(1, 1, 1, 7)  # 7 channels
    y = LocalResponseNorm(size=5, alpha=0.1, beta=0.75, k=2.0).apply({}, x)
    for c in range(7):
        window = x[0, 0, 0, max(0, c - 2) : c + 3]
        expected = x[0, 0, 0, c] / (2.0 + 0.1 * float((window**2).sum())) ** 0.75
        np.testing.assert_allclose(float(y[0, 0, 0, c]), expected, rtol=1e-6)


def test_adaptive_average_pool_bins_like_pytorch():
    from cnnjax.models.layers import adaptive_avg_pool

    x = jnp.arange(5.0).reshape(1, 5, 1, 1).repeat(5, axis=2)  # rows 0..4
    options = LayerOptions()
    y = adaptive_avg_pool(x, 3, layer_options=options)  # bins rows [0,2), [1,4), [3,5)
    np.testing.assert_allclose(y[0, :, 0, 0], [0.5, 2.0, 3.5])
    np.testing.assert_array_equal(adaptive_avg_pool(x, 5, layer_options=options), x)


# One variant per family (and per block kind: basic and bottleneck ResNets), with the heads
# that run only in training, at small sizes: every module must get the model's layer options.
FAMILY_VARIANTS = {
    "lenet5": ((28, 28, 1), {"normalization": "batch", "c3_table": True}),
    "mlp": ((8, 8, 1), {"normalization": "batch", "hidden_sizes": (8, 4)}),
    "alexnet_paper": ((67, 67, 3), {"hidden_units": 8}),
    "vgg11_bn": ((32, 32, 3), {"width_divisor": 16, "hidden_units": 64}),
    "cifar_convnet": ((32, 32, 3), {}),
    "fast_convnet": ((28, 28, 1), {"hidden_units": 8}),
    "dilated_context": ((16, 16, 1), {"features": 4, "dilations": (1, 2)}),
    "unet_small": ((16, 16, 1), {"base_features": 4, "depth": 2}),
    "convnet1d": ((28, 28), {"widths": (4, 8)}),
    "c3d_small": ((4, 16, 16, 1), {}),
    "resnet18": ((32, 32, 3), {"width": 4, "stage_sizes": (1, 1, 1, 1)}),
    "resnet50": ((32, 32, 3), {"width": 4, "stage_sizes": (1, 1, 1, 1)}),
    "resnet20": ((16, 16, 3), {"shortcut": "projection"}),
    "wrn16_8": ((16, 16, 3), {"widen_factor": 1}),
    "googlenet": ((32, 32, 3), {"num_classes": 10, "aux_logits": True}),
    "inception_v3": ((75, 75, 3), {"num_classes": 10, "aux_logits": True}),
}


def _layer_options_seen(model, shape) -> list[tuple[str, LayerOptions]]:
    """(module type, its layer options) of every module with options that `model.init` calls,
    traced only. The pools take the options as a required argument: one left without them
    fails here."""
    seen = []

    def record(next_fun, args, kwargs, context):
        options = getattr(context.module, "layer_options", None)
        if options is not None:
            seen.append((type(context.module).__name__, options))
        return next_fun(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), x, train=False)

    jax.eval_shape(init, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    return seen


def test_every_family_passes_its_layer_options_to_every_layer():
    from cnnjax.models.registry import get_spec

    families = {get_spec(name).family for name in models.list_models()}
    assert families == {get_spec(name).family for name in FAMILY_VARIANTS}
    options = LayerOptions(
        block_convolutions=False,
        reshape_pooling=False,
        batch_norm_axis="devices",
        frozen_batch_norm=True,
    )
    for name, (shape, extra) in FAMILY_VARIANTS.items():
        seen = _layer_options_seen(models.create(name, layer_options=options, **extra), shape)
        assert {"Normalization"} <= {kind for kind, _ in seen}, name
        assert {o for _, o in seen} == {options}, name


def test_models_read_no_hidden_switches():
    """What a model computes is its fields: no context variables or environment reads, which
    `jax.jit` would not see."""
    folder = os.path.dirname(models.__file__)
    for filename in sorted(os.listdir(folder)):
        if filename.endswith(".py"):
            with open(os.path.join(folder, filename)) as f:
                text = f.read()
            assert "contextvars" not in text and "os.environ" not in text, filename
            assert "getenv" not in text, filename


@pytest.mark.parametrize("normalization", ["batch", "group"])
def test_zero_init_residual_starts_every_block_as_the_identity(normalization):
    from cnnjax.models.resnet import Bottleneck

    block = Bottleneck(4, 1, "relu", normalization, zero_init_residual=True)
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 16))
    variables = jax.jit(block.init, static_argnames="train")(jax.random.key(1), x, train=False)
    scales = {
        name: float(np.abs(leaf).max())
        for name, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
        if "scale" in jax.tree_util.keystr(name)
    }
    assert sorted(scales.values()) == [0.0, 1.0, 1.0]  # only the third (last) normalization
    np.testing.assert_array_equal(block.apply(variables, x, train=False), jax.nn.relu(x))


def test_zero_init_residual_is_in_the_resnet50_recipe_and_keeps_the_parameter_count():
    from cnnjax.config_loader import load_config

    config = load_config("configs/resnet50_imagenet.py")
    assert config.model.options.zero_init_residual is True
    counts = []
    for zero in (False, True):
        model = models.create("resnet50", zero_init_residual=zero)
        shapes = jax.eval_shape(
            functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 64, 64, 3))
        )
        counts.append(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"])))
    assert counts == [25_557_032, 25_557_032]


def test_conv_block_batch_norm_uses_its_epsilon():
    epsilon = 0.25  # large, so that 1e-5 in its place would show
    block = ConvBlock(2, 1, activation="identity", normalization="batch", norm_epsilon=epsilon)
    x = np.arange(1.0, 9.0, dtype=np.float32).reshape(1, 2, 2, 2)  # [1, 2, 2, 2]
    kernel = np.array([[1.0, 0.5], [0.0, 2.0]], np.float32)  # [C_in, C_out]
    mean, var = np.array([1.0, -2.0]), np.array([0.5, 3.0])
    scale, bias = np.array([2.0, 0.5]), np.array([0.1, -1.0])
    norm = {"BatchNorm_0": {"scale": scale, "bias": bias}}
    variables = {
        "params": {"Conv_0": {"kernel": kernel[None, None]}, "Normalization_0": norm},
        "batch_stats": {"Normalization_0": {"BatchNorm_0": {"mean": mean, "var": var}}},
    }
    out = block.apply(jax.tree.map(jnp.float32, variables), x, train=False)
    expected = (x @ kernel - mean) / np.sqrt(var + epsilon) * scale + bias
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kind, axes", [("layer", (3,)), ("instance", (1, 2)), ("group", (1, 2, 3))]
)
def test_layer_instance_and_group_norms_use_their_epsilon(kind, axes):
    epsilon = 0.25
    layer = Normalization(kind, num_groups=1, epsilon=epsilon)  # group: one group of all channels
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype(np.float32)
    variables = layer.init(jax.random.key(0), x, train=False)  # scale 1, bias 0
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    expected = (x - mean) / np.sqrt(var + epsilon)
    np.testing.assert_allclose(layer.apply(variables, x, train=False), expected, atol=1e-5)


def test_width_per_group_widens_only_the_bottleneck_inside():
    from cnnjax.models.resnet import Bottleneck

    block = Bottleneck(4, 2, "relu", "batch", width_per_group=128)
    x = jnp.zeros((1, 8, 8, 6))
    shapes = jax.eval_shape(functools.partial(block.init, train=False), jax.random.key(0), x)
    kernels = [shapes["params"][f"ConvBlock_{i}"]["Conv_0"]["kernel"].shape for i in range(4)]
    # reduce 6 -> 8 (4 * 128 / 64), 3x3 8 -> 8, expand 8 -> 16 (4 * 4), projection 6 -> 16.
    assert kernels == [(1, 1, 6, 8), (3, 3, 8, 8), (1, 1, 8, 16), (1, 1, 6, 16)]


def test_width_per_group_needs_bottleneck_blocks():
    model = models.create("resnet18", width=4, width_per_group=128)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    with pytest.raises(UserError, match="width_per_group=128 needs bottleneck blocks"):
        jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def test_wide_resnet_names_are_imagenet_resnets_beside_the_cifar_wrns():
    from cnnjax.models.registry import get_spec
    from cnnjax.models.resnet import ResNet, WideResNet

    for name, stages in (("wide_resnet50_2", (3, 4, 6, 3)), ("wide_resnet101_2", (3, 4, 23, 3))):
        model = models.create(name)
        assert get_spec(name).family is ResNet and models.default_input_shape(name) == (224, 224, 3)
        assert (model.stage_sizes, model.bottleneck, model.width_per_group) == (stages, True, 128)
    assert get_spec("wrn28_10").family is WideResNet
    assert models.create("resnet50").width_per_group == 64  # the default stays ResNet-50's
