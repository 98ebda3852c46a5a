"""GoogLeNet and Inception v3: pinned parameter counts, auxiliary heads, other layer choices,
and the options torchvision's weights need (`transform_input`, `batch_norm_epsilon`).

Counts come from `jax.eval_shape` of `init`, so nothing is allocated. Forward passes use small
inputs (GoogLeNet 64x64; Inception v3 75x75, the least its grid reductions allow) and variables
filled by `filled_variables` instead of `model.init`. Training with the auxiliary heads (their
losses reach every head, the loss falls) is tests/test_families.py's
`test_forward_backward_and_a_few_steps_lower_the_loss[googlenet / inception_v3]`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_sizes import filled_variables, jit_fast

from cnnjax import models
from cnnjax.errors import UserError
from cnnjax.models.googlenet import INCEPTION_3, INCEPTION_4, INCEPTION_5
from cnnjax.models.inventory import param_count
from cnnjax.models.layers import ConvBlock

SMALL_SIZE = {"googlenet": 64, "inception_v3": 75}
NUM_CLASSES = 10
AUX_HEADS = ("AuxClassifier", "InceptionAux")  # the heads' submodule names, with _0, _1
AUX_HEAD_COUNT = {"googlenet": 2, "inception_v3": 1}


@pytest.mark.parametrize(
    "name, options, expected",
    [
        # The defaults' counts (torchvision's 6,624,904 and 23,834,568) are pinned in
        # tests/test_families.py with every other family's.
        ("googlenet", {"paper_5x5": True}, 7_005_832),
        ("googlenet", {"aux_logits": True}, 13_004_888),  # torchvision's, heads included
        ("inception_v3", {"aux_logits": True}, 27_161_264),  # torchvision's documented count
    ],
)
def test_parameter_counts_match_the_reference(name, options, expected):
    assert param_count(name, **options) == expected


def test_count_differences_by_hand():
    # A true 5x5 kernel adds 25 - 9 = 16 weights per (reduce, 5x5) channel pair of Table 1.
    pairs = sum(row[3] * row[4] for row in INCEPTION_3 + INCEPTION_4 + INCEPTION_5)
    assert 7_005_832 - 6_624_904 == 16 * pairs == 380_928
    # GoogLeNet's heads on 4a (512 channels) and 4d (528): conv 1x1 128 + batch norm, then
    # dense 4*4*128 -> 1024 and 1024 -> 1000.
    heads = sum(c * 128 + 2 * 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000 for c in (512, 528))
    assert 13_004_888 - 6_624_904 == heads
    # Inception v3's head on the 17x17x768 grid: conv 1x1 128 + BN, conv 5x5 768 + BN, dense.
    head = 768 * 128 + 2 * 128 + 25 * 128 * 768 + 2 * 768 + 768 * 1000 + 1000
    assert 27_161_264 - 23_834_568 == head == 3_326_696


def _batch(name: str, batch_size: int = 4) -> tuple[jax.Array, jax.Array]:
    size = SMALL_SIZE[name]
    images = jax.random.normal(jax.random.key(1), (batch_size, size, size, 3))  # [B, H, W, 3]
    labels = jax.random.randint(jax.random.key(2), (batch_size,), 0, NUM_CLASSES)  # [B]
    return images, labels


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_auxiliary_logits_are_sown_exactly_when_asked_and_in_training(name):
    heads = AUX_HEAD_COUNT[name]
    images = jax.ShapeDtypeStruct((2, SMALL_SIZE[name], SMALL_SIZE[name], 3), jnp.float32)
    for aux_logits in (False, True):
        model = models.create(name, num_classes=NUM_CLASSES, aux_logits=aux_logits)
        # Shapes only, through jax.eval_shape: nothing is compiled or allocated.
        init = functools.partial(model.init, jax.random.key(0), train=False)
        variables = jax.eval_shape(init, images)
        head_params = [key for key in variables["params"] if key.startswith(AUX_HEADS)]
        assert len(head_params) == (heads if aux_logits else 0)
        # Without heads, training alone: it sows nothing, so evaluation (which sows nothing
        # even with heads, below) need not be traced too (a second per trace of Inception v3).
        for train in (False, True) if aux_logits else (True,):
            apply = functools.partial(
                model.apply,
                train=train,
                rngs={"dropout": jax.random.key(1)},
                mutable=["batch_stats", "intermediates"],
            )
            logits, updates = jax.eval_shape(apply, variables, images)
            assert logits.shape == (2, NUM_CLASSES)  # the output is the main logits, always
            sown = updates.get("intermediates", {}).get("aux_logits", ())
            assert len(sown) == (heads if aux_logits and train else 0)
            assert all(aux.shape == (2, NUM_CLASSES) for aux in sown)


@pytest.mark.parametrize(
    "name, normalization, activation",
    # One other choice per net (each forward pass compiles for seconds): the layer and
    # instance norms take the same Normalization path in every family, and
    # tests/test_families.py runs them in four other families.
    [("googlenet", "none", "tanh"), ("inception_v3", "group", "gelu")],
)
def test_other_normalizations_and_activations_run(name, normalization, activation):
    model = models.create(
        name,
        num_classes=NUM_CLASSES,
        normalization=normalization,
        activation=activation,
        dropout_rate=0.0,
    )
    images, _ = _batch(name, batch_size=2)
    variables = filled_variables(model, images.shape)
    assert "batch_stats" not in variables  # only batch norm keeps running statistics
    forward = jit_fast(model.apply, static_argnames="train")
    eval_logits = forward(variables, images, train=False)
    assert eval_logits.shape == (2, NUM_CLASSES) and bool(jnp.isfinite(eval_logits).all())
    assert float(eval_logits.std()) > 0  # the activations did not collapse to a constant
    if normalization == "none":  # no batch norm, no dropout: training computes the same logits
        train_logits = forward(variables, images, train=True)
        np.testing.assert_allclose(train_logits, eval_logits, rtol=1e-5, atol=1e-6)


# The torchvision options on small inputs: GoogLeNet at 32x32, the least its five stride-2
# stages take.
TORCHVISION_SIZE = {"googlenet": 32, "inception_v3": 75}
# ImageNet's statistics, written out here as torchvision's `_transform_input` writes them.
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def test_models_repeat_the_pipelines_imagenet_statistics():
    from cnnjax.data import imagenet
    from cnnjax.models import layers

    assert (layers.IMAGENET_MEAN, layers.IMAGENET_STD) == (
        imagenet.IMAGENET_MEAN,
        imagenet.IMAGENET_STD,
    )
    assert np.allclose(layers.IMAGENET_MEAN, MEAN) and np.allclose(layers.IMAGENET_STD, STD)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_transform_input_restandardizes_imagenet_inputs_to_half_range(name):
    size = TORCHVISION_SIZE[name]
    plain = models.create(name, num_classes=NUM_CLASSES, dropout_rate=0.0)
    variables = filled_variables(plain, (2, size, size, 3))
    pixels = np.random.default_rng(0).uniform(size=(2, size, size, 3))  # in [0, 1]
    images = ((pixels - MEAN) / STD).astype(np.float32)  # as the ImageNet pipeline gives them
    by_hand = (images * (STD / 0.5) + (MEAN - 0.5) / 0.5).astype(np.float32)
    np.testing.assert_allclose(by_hand, (pixels - 0.5) / 0.5, atol=1e-5)
    transformed = plain.clone(transform_input=True)

    @jit_fast  # one program (each compilation of a net takes seconds)
    def logits(variables, images, by_hand):
        on = transformed.apply(variables, images, train=False)
        # Evaluation mode: each example's logits are its own, so one batch serves both inputs.
        off = plain.apply(variables, jnp.concatenate([by_hand, images]), train=False)
        return on, off[: len(images)], off[len(images) :]

    on, off_by_hand, off = (np.asarray(a) for a in logits(variables, images, by_hand))
    np.testing.assert_allclose(on, off_by_hand, rtol=1e-4, atol=1e-5 * np.abs(on).max())
    assert np.abs(on - off).max() > 0.1 * np.abs(on).max()  # the transform is not the identity


def test_transform_input_needs_rgb_inputs():
    model = models.create("googlenet", num_classes=NUM_CLASSES, transform_input=True)
    gray = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
    with pytest.raises(UserError, match="these have 1 channels: set transform_input=False"):
        jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), gray)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_batch_norm_epsilon_reaches_every_batch_norm_heads_included(name):
    size = TORCHVISION_SIZE[name]
    model = models.create(name, num_classes=NUM_CLASSES, aux_logits=True, batch_norm_epsilon=1e-3)
    seen = {"ConvBlock": 0, "BatchNorm": []}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, ConvBlock):
            seen["ConvBlock"] += 1
        if isinstance(context.module, nn.BatchNorm):
            seen["BatchNorm"].append(context.module.epsilon)
        return next_fun(*args, **kwargs)

    def init(x):  # in training mode, so that the auxiliary heads run
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), x, train=True)

    jax.eval_shape(init, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))  # traced only
    # GoogLeNet: 57 convolutions and one per head; Inception v3: 94 and two in its head.
    assert seen["ConvBlock"] == {"googlenet": 59, "inception_v3": 96}[name]
    assert seen["BatchNorm"] == [1e-3] * seen["ConvBlock"]


def test_batch_norm_epsilon_changes_the_evaluation_logits():
    size = TORCHVISION_SIZE["googlenet"]
    options = {"num_classes": NUM_CLASSES, "dropout_rate": 0.0}
    default = models.create("googlenet", **options)
    torchvision = default.clone(batch_norm_epsilon=1e-3)
    variables = filled_variables(default, (2, size, size, 3))  # running variances 1
    images = jax.random.normal(jax.random.key(1), (2, size, size, 3))

    @jit_fast  # one program (each compilation of a net takes seconds)
    def logits(variables, images):
        small = default.apply(variables, images, train=False)
        return small, torchvision.apply(variables, images, train=False)

    small, large = (np.asarray(a) for a in logits(variables, images))
    # Each batch norm divides by sqrt(1 + epsilon): about 5e-4 less per layer with 1e-3.
    assert np.abs(small - large).max() > 1e-3 * np.abs(small).max()
    assert np.abs(small - large).max() < 0.1 * np.abs(small).max()
