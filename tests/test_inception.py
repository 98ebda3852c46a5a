"""GoogLeNet and Inception v3: pinned parameter counts, auxiliary heads, other layer choices.

Counts come from `jax.eval_shape` of `init`, so nothing is allocated. Forward passes use small
inputs (GoogLeNet 64x64; Inception v3 75x75, the least its grid reductions allow) and variables
filled by `filled_variables` instead of `model.init`. Training with the auxiliary heads (their
losses reach every head, the loss falls) is tests/test_families.py's
`test_forward_backward_and_a_few_steps_lower_the_loss[googlenet / inception_v3]`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_sizes import filled_variables, jit_fast

from cnnjax import models
from cnnjax.models.googlenet import INCEPTION_3, INCEPTION_4, INCEPTION_5
from cnnjax.models.inventory import param_count

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
