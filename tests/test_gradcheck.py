"""Gradient checks: the training loss's gradient against float64 finite differences.

One variant of every model family passes at the small sizes of tests/model_sizes.py (batch 2,
in training mode: batch norm on batch statistics, dropout, auxiliary heads); a net whose
activation has a deliberately wrong backward pass fails with the error that its factor implies;
a layer that computes in float32 is found and named; and `cnnjax gradcheck` exits 1 on a wrong
gradient and 0 on the default recipe.
"""

import functools
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import RECIPE, run_cnnjax
from model_sizes import SMALL, filled_variables

from cnnjax import models
from cnnjax.errors import UserError
from cnnjax.inspect.gradcheck import TOLERANCE, check_gradients, gradcheck_from_config
from cnnjax.models.registry import get_spec

# One variant per family class, with the options under test. Batch norm (most families' default)
# is set for LeNet-5 and the ResNets; GoogLeNet and Inception v3 run without it: at these inputs
# their last stages are 1x1, where batch norm over 2 values makes the loss too curved for finite
# differences to reach the tolerance (relative errors near 1e-5 at the best step).
CHECKS = {
    "LeNet5": ("lenet5", {"normalization": "batch", "dropout_rate": 0.5}),
    "MLP": ("mlp", {"normalization": "batch", "dropout_rate": 0.5, "activation": "prelu"}),
    # Depth 8 (one basic block a stage, both option-A shortcuts): this check took 9 s of CPU at
    # ResNet-20's depth, 5 s at 8, most of it compiling the float64 gradient.
    "CifarResNet": ("resnet20", {"normalization": "batch", "depth": 8}),
    "CifarConvNet": ("cifar_convnet", {}),
    "FastConvNet": ("fast_convnet", {"normalization": "batch", "dropout_rate": 0.5}),
    "ConvNet1D": ("convnet1d", {}),
    "DilatedContextNet": ("dilated_context", {}),  # per-pixel labels
    "C3D": ("c3d_small", {}),
    "VGG": ("vgg11", {"dropout_rate": 0.5}),
    "ResNet": ("resnet18", {"normalization": "batch"}),
    "AlexNet": ("alexnet", {}),
    "UNet": ("unet_small", {}),
    "WideResNet": ("wrn28_2", {}),
    "GoogLeNet": ("googlenet", {"aux_logits": True, "normalization": "none"}),
    "InceptionV3": ("inception_v3", {"aux_logits": True, "normalization": "none"}),
}
# 20 s to 2.5 min each on 2 cores (compiling the float64 gradient): run with `-m slow`.
SLOW = {"ResNet", "AlexNet", "UNet", "WideResNet", "GoogLeNet", "InceptionV3"}


def _batch(name: str, num_classes: int, size: int = 2) -> dict:
    shape = SMALL[name][0]
    rng = np.random.default_rng(1)
    per_pixel = get_spec(name).task == "segmentation"
    label_shape = (size, *shape[:2]) if per_pixel else (size,)  # [B, H, W] or [B]
    return {
        "image": rng.standard_normal((size, *shape)).astype(np.float32),
        "label": rng.integers(0, num_classes, label_shape).astype(np.int32),
    }


def test_every_family_has_a_gradient_check():
    families = {get_spec(name).family.__name__ for name in models.list_models()}
    assert sorted(families) == sorted(CHECKS)
    assert all(get_spec(name).family.__name__ == family for family, (name, _) in CHECKS.items())


@pytest.mark.parametrize(
    "family",
    [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in sorted(CHECKS)],
)
def test_gradient_matches_finite_differences(family, record_property):
    name, extra = CHECKS[family]
    model = models.create(name, **{**SMALL[name][1], **extra})
    batch = _batch(name, model.num_classes)
    result = check_gradients(
        model,
        filled_variables(model, batch["image"].shape),
        batch,
        num_classes=model.num_classes,
        num_directions=2,
        num_coordinates=4,
    )
    print(f"{name} {extra}\n{result.format()}")
    record_property("max_relative_error", result.max_relative_error)
    assert result.narrow_ops == ()  # the whole forward and backward pass ran in float64
    assert [row.kind for row in result.rows] == ["direction"] * 2 + ["coordinate"] * 4
    assert result.max_relative_error < TOLERANCE and result.passed


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def miscalibrated_tanh(x, factor):
    """tanh whose backward pass multiplies the true derivative by `factor`."""
    return jnp.tanh(x)


def _tanh_forward(x, factor):
    y = jnp.tanh(x)
    return y, y


def _tanh_backward(factor, y, g):
    return (factor * g * (1.0 - y * y),)


miscalibrated_tanh.defvjp(_tanh_forward, _tanh_backward)


class TwoLayerNet(nn.Module):
    """Dense -> tanh with a `factor` x gradient -> dense; `first_dtype` sets the first layer's
    computation dtype (None: that of its inputs)."""

    factor: float = 1.0
    first_dtype: jnp.dtype | None = None
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = x.reshape(x.shape[0], -1)  # [B, H * W * C]
        x = nn.Dense(8, dtype=self.first_dtype)(x)
        return nn.Dense(self.num_classes)(miscalibrated_tanh(x, self.factor))


def _check_two_layer_net(**fields):
    model = TwoLayerNet(**fields)
    images = np.random.default_rng(0).standard_normal((2, 4, 4, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), images, train=False)
    batch = {"image": images, "label": np.array([0, 2], np.int32)}
    return check_gradients(model, variables, batch, num_classes=3)


@pytest.mark.parametrize("factor, expected", [(1.5, 1 / 3), (-1.0, 2.0)])
def test_a_wrong_gradient_fails_by_the_error_it_implies(factor, expected):
    result = _check_two_layer_net(factor=factor)
    print(result.format())
    assert not result.passed and result.max_relative_error > 1e-2
    first = [row for row in result.rows if row.name.startswith("Dense_0/")]
    last = [row for row in result.rows if row.name.startswith("Dense_1/")]
    assert first and last  # both layers are sampled
    # Below the activation the gradient is `factor` x the true one: |f - 1| / max(|f|, 1) off.
    for row in first:
        np.testing.assert_allclose(row.relative_error, expected, rtol=1e-4)
        np.testing.assert_allclose(row.analytic, factor * row.numeric, rtol=1e-4)
    assert all(row.relative_error < TOLERANCE for row in last)  # above it, still right
    assert all(row.relative_error > 1e-2 for row in result.rows if row.kind == "direction")
    assert "FAIL" in result.format() and "gradient check FAILED" in result.format()


def test_the_same_net_with_a_true_custom_gradient_passes():
    result = _check_two_layer_net(factor=1.0)
    assert result.passed and result.max_relative_error < 1e-8, result.format()


class ReluNet(nn.Module):
    """Conv (zero-initialized bias) -> ReLU -> dense."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_jitter_moves_the_check_off_kinks_that_exact_zeros_create():
    # A black half-image and zero biases put those ReLUs exactly on their kink: every line
    # through the point bends there, so no finite difference matches the (correct) gradient.
    images = np.random.default_rng(0).standard_normal((2, 6, 6, 1)).astype(np.float32)
    images[:, :, 3:] = 0.0
    variables = ReluNet().init(jax.random.key(0), images, train=False)
    batch = {"image": images, "label": np.array([0, 2], np.int32)}
    check = functools.partial(check_gradients, ReluNet(), variables, batch, num_classes=3)
    on_kinks = check(jitter=0.0)
    assert not on_kinks.passed and on_kinks.max_relative_error > 1e-3, on_kinks.format()
    jittered = check()
    assert jittered.passed and jittered.max_relative_error < 1e-7, jittered.format()


def test_a_layer_computing_in_float32_is_found_and_fails_the_check():
    result = _check_two_layer_net(first_dtype=jnp.float32)
    assert not result.passed
    place = result.narrow_ops[0]  # the first dense layer's line, and its float32 matmul
    assert "test_gradcheck.py" in place and "TwoLayerNet.__call__" in place, place
    assert "dot_general float32" in place
    assert "compute below float64" in result.format()


def test_gradcheck_from_config_refuses_an_empty_batch():
    from configs.lenet5_fashion_mnist import get_config

    with pytest.raises(UserError, match="needs a batch of 1 or more"):
        gradcheck_from_config(get_config(), batch_size=0)


# A recipe that registers its own model: a net whose activation's backward pass is 1.5x too big.
MISCALIBRATED_RECIPE = '''
"""Fashion-MNIST through a net whose tanh has 1.5x its true gradient (for the tests)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.config_base import get_base_config
from cnnjax.models.layers import LayerOptions
from cnnjax.models.registry import list_models, register


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scaled_tanh(x, factor):
    return jnp.tanh(x)


scaled_tanh.defvjp(
    lambda x, factor: (jnp.tanh(x), jnp.tanh(x)),
    lambda factor, y, g: (factor * g * (1.0 - y * y),),
)


class MiscalibratedNet(nn.Module):
    num_classes: int = 10
    activation: str = "tanh"
    normalization: str = "none"
    dropout_rate: float = 0.0
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        return nn.Dense(self.num_classes)(scaled_tanh(x, 1.5))


if "miscalibrated_net" not in list_models():
    register("miscalibrated_net", family=MiscalibratedNet, input_shape=(28, 28, 1))(
        MiscalibratedNet
    )


def get_config(arg=None):
    config = get_base_config()
    config.model.name = "miscalibrated_net"
    config.model.activation = "tanh"
    config.data.name = "fashion_mnist"
    config.data.train_split = "train[:64]"
    config.data.eval_split = "test[:64]"
    return config
'''


def test_cli_exits_1_and_prints_the_failing_rows_for_a_wrong_gradient(tmp_path, data_dir):
    path = tmp_path / "miscalibrated.py"
    path.write_text(textwrap.dedent(MISCALIBRATED_RECIPE))
    result = run_cnnjax("gradcheck", f"--config={path}")
    assert result.returncode == 1, result.stderr[-3000:]
    failing = [line for line in result.stdout.splitlines() if line.endswith("FAIL")]
    assert any(line.startswith("coordinate  Dense_0/") for line in failing), result.stdout
    assert "gradient check FAILED" in result.stdout


def test_cli_passes_the_default_recipe(data_dir):
    # Smaller splits only spare decoding 70,000 PNGs (a minute); model and batch are the recipe's.
    splits = ["--config.data.train_split=train[:512]", "--config.data.eval_split=test[:64]"]
    result = run_cnnjax("gradcheck", f"--config={RECIPE}", "--examples=2", *splits)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The recipe's model as `cnnjax train` initializes it, on its training examples.
    assert "gradient check of lenet5 (62,136 parameters) at its initialization" in result.stdout
    assert "on 2 training examples of fashion_mnist" in result.stdout
    assert "gradient check PASSED" in result.stdout
