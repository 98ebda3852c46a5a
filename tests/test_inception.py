"""GoogLeNet and Inception v3: pinned parameter counts, training at small inputs, auxiliary heads.

Counts come from `jax.eval_shape` of `init`, so nothing is allocated. Forward and backward passes
use small inputs (GoogLeNet 64x64; Inception v3 75x75, the least its grid reductions allow) and
variables filled by `_variables` instead of `model.init`: Flax's init compiles one random draw per
parameter array (6-15 s per model on 2 cores), and these tests only need well-scaled values.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import models
from cnnjax.models.googlenet import INCEPTION_3, INCEPTION_4, INCEPTION_5
from cnnjax.models.inventory import param_count

SMALL_SIZE = {"googlenet": 64, "inception_v3": 75}
NUM_CLASSES = 10
AUX_HEADS = ("AuxClassifier", "InceptionAux")  # the heads' submodule names, with _0, _1
AUX_HEAD_COUNT = {"googlenet": 2, "inception_v3": 1}
AUX_WEIGHT = 0.3  # the paper's weight for the auxiliary losses, as in cnnjax/train/steps.py
# XLA:CPU's compilation dominates these tests (10-20 s per train step of ~60 convolutions);
# skipping its backend optimizations about halves that, and a handful of tiny steps run as fast.
jit_fast = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("googlenet", {}, 6_624_904),  # torchvision's GoogLeNet (its "5x5" branch is 3x3)
        ("googlenet", {"paper_5x5": True}, 7_005_832),
        ("googlenet", {"aux_logits": True}, 13_004_888),  # torchvision's, heads included
        ("inception_v3", {}, 23_834_568),  # torchvision's inception_v3(aux_logits=False)
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


def _variables(model, input_shape: tuple[int, ...], seed: int = 0) -> dict:
    """Variables with the shapes `model.init` gives: kernels N(0, 1 / fan_in), scales and
    running variances 1, biases and running means 0."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) / np.sqrt(fan_in))
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape)
        return jnp.zeros(leaf.shape)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _batch(name: str, batch_size: int = 4) -> tuple[jax.Array, jax.Array]:
    size = SMALL_SIZE[name]
    images = jax.random.normal(jax.random.key(1), (batch_size, size, size, 3))  # [B, H, W, 3]
    labels = jax.random.randint(jax.random.key(2), (batch_size,), 0, NUM_CLASSES)  # [B]
    return images, labels


def _make_step(model, tx: optax.GradientTransformation):
    """A jitted Adam step on the main loss plus the weighted auxiliary losses.

    One fixed dropout key makes the objective the same function at every step, so that a few
    steps on one batch must lower it.
    """

    def loss_fn(params, state, images, labels):
        logits, updates = model.apply(
            {"params": params, **state},
            images,
            train=True,
            rngs={"dropout": jax.random.key(3)},
            mutable=["batch_stats", "intermediates"],
        )
        xent = functools.partial(optax.softmax_cross_entropy_with_integer_labels, labels=labels)
        loss = xent(logits).mean()
        for aux in updates.pop("intermediates", {}).get("aux_logits", ()):
            loss += AUX_WEIGHT * xent(aux).mean()
        return loss, (logits, updates)

    @jit_fast
    def step(params, state, opt_state, images, labels):
        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state, images, labels
        )
        changes, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, changes)
        # Reduced here: checking each of some 300 gradient arrays outside jit costs seconds.
        metrics = {
            "loss": loss,
            "logits": logits,  # [B, num_classes]
            "grads_finite": jnp.all(
                jnp.stack([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)])
            ),
            # Auxiliary heads feed only their own losses: any gradient there comes from those.
            "head_grad_max": {
                head: jnp.stack([jnp.abs(g).max() for g in jax.tree.leaves(grads[head])]).max()
                for head in grads
                if head.startswith(AUX_HEADS)
            },
        }
        return params, {**state, **updates}, opt_state, metrics

    return step


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_forward_backward_and_five_adam_steps_lower_the_loss(name):
    # With the auxiliary heads, which contain the default model whole and train through it.
    model = models.create(name, num_classes=NUM_CLASSES, aux_logits=True)
    images, labels = _batch(name)
    variables = _variables(model, images.shape)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}

    eval_logits = jit_fast(lambda v, x: model.apply(v, x, train=False))(variables, images)
    assert eval_logits.shape == (4, NUM_CLASSES) and bool(jnp.isfinite(eval_logits).all())

    tx = optax.adam(1e-3)
    step = _make_step(model, tx)
    opt_state = jit_fast(tx.init)(params)  # one compilation, not one per parameter shape
    params, state, opt_state, first = step(params, state, opt_state, images, labels)
    assert bool(jnp.isfinite(first["loss"])) and bool(first["grads_finite"])
    # Batch statistics instead of running ones, and dropout: training gives other logits.
    assert float(jnp.abs(first["logits"] - eval_logits).max()) > 1e-3
    running_mean = jax.tree.leaves(state["batch_stats"])[0]
    assert float(jnp.abs(running_mean).max()) > 0  # the running statistics were updated
    # The auxiliary losses reach every head (GoogLeNet has two, Inception v3 one).
    assert len(first["head_grad_max"]) == AUX_HEAD_COUNT[name]
    assert all(float(value) > 0 for value in first["head_grad_max"].values())
    for _ in range(5):  # call k reports the loss after k updates: the last, after five
        params, state, opt_state, metrics = step(params, state, opt_state, images, labels)
    loss = metrics["loss"]
    losses = (float(first["loss"]), float(loss))
    assert np.isfinite(losses[1]) and losses[1] < losses[0] - 0.1, losses


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
        for train in (False, True):
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
    [
        ("googlenet", "none", "tanh"),
        ("googlenet", "instance", "leaky_relu"),
        ("inception_v3", "layer", "gelu"),
        ("inception_v3", "group", "sigmoid"),
    ],
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
    variables = _variables(model, images.shape)
    assert "batch_stats" not in variables  # only batch norm keeps running statistics
    forward = jit_fast(model.apply, static_argnames="train")
    eval_logits = forward(variables, images, train=False)
    assert eval_logits.shape == (2, NUM_CLASSES) and bool(jnp.isfinite(eval_logits).all())
    assert float(eval_logits.std()) > 0  # the activations did not collapse to a constant
    if normalization == "none":  # no batch norm, no dropout: training computes the same logits
        train_logits = forward(variables, images, train=True)
        np.testing.assert_allclose(train_logits, eval_logits, rtol=1e-5, atol=1e-6)
