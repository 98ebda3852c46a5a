"""Every registered model: published sizes, and forward/backward/training at a small input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_sizes import SMALL

from cnnjax import models
from cnnjax.models.dilated import CONTEXT_DILATIONS, receptive_fields
from cnnjax.models.inventory import count_macs, param_count
from cnnjax.models.registry import get_spec

# Published parameter counts (torchvision's for AlexNet and VGG-16; the papers' for the rest).
PARAMS = {
    "alexnet": 61_100_840,
    "vgg16": 138_357_544,
    "cifar_convnet": 22_466,
    "lenet5": 61_706,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    # CIFAR ResNets with option-A shortcuts: the paper's 0.27M, 0.46M, 0.66M, 0.85M, 1.7M.
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    # Wide ResNets: the paper's 36.5M and 8.9M.
    "wrn28_10": 36_479_194,
    "wrn40_4": 8_949_210,
    "googlenet": 6_624_904,  # torchvision's count (its "5x5" branch has 3x3 kernels)
    "inception_v3": 23_834_568,  # torchvision's, without the auxiliary classifier
}
# Published multiply-accumulates at 224x224 (torchvision's GFLOPS column counts MACs).
GMACS = {"alexnet": 0.714, "vgg16": 15.47, "resnet50": 4.09, "c3d": 38.5, "inception_v3": 5.71}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_published_parameter_counts(name):
    assert param_count(name) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(GMACS))
def test_published_macs_within_2_percent(name):
    if name not in models.list_models():
        pytest.skip(f"{name} is not registered")
    macs = count_macs(models.create(name), models.default_input_shape(name)) / 1e9
    assert abs(macs - GMACS[name]) / GMACS[name] < 0.02, macs


def test_lenet5_macs_by_hand():
    # conv1 28*28*6*25 + conv2 10*10*16*150 + fc 400*120 + 120*84 + 84*10
    assert count_macs(models.create("lenet5"), (32, 32, 1)) == 416_520


def test_lenet5_connection_table_has_the_papers_1516_c3_parameters():
    assert param_count("lenet5", c3_table=True) == 61_706 - 2_416 + 1_516


def test_context_module_receptive_fields():
    assert receptive_fields(CONTEXT_DILATIONS) == [3, 5, 9, 17, 33, 65, 67]


def test_every_registered_model_has_a_small_test_setting():
    assert sorted(set(models.list_models()) - set(SMALL)) == []


def _setup(name, **extra):
    shape, options = SMALL[name]
    model = models.create(name, **{**options, **extra})
    x = jax.random.normal(jax.random.key(0), (4, *shape))
    variables = model.init(jax.random.key(1), x, train=False)
    return model, variables, x


def _loss(model, params, state, x, labels, num_classes):
    logits, updates = model.apply(
        {"params": params, **state},
        x,
        train=True,
        rngs={"dropout": jax.random.key(2)},
        mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, updates)


# The default run trains one variant of each block structure; deeper or wider repeats of the same
# blocks (compiling for 10-20 s each) run with `-m slow`.
SLOW_VARIANTS = {
    "resnet34",
    "resnet101",
    "resnet152",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "wrn28_2",
    "wrn28_10",
    "wrn40_4",
    "vgg13",
    "vgg13_bn",
    "vgg19",
    "vgg19_bn",
    "vgg11_bn",
    "vgg16",
    "unet",
    "c3d",
    "alexnet_paper",
}


def _variants():
    return [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW_VARIANTS else n for n in sorted(SMALL)
    ]


@pytest.mark.parametrize("name", _variants())
def test_forward_backward_and_a_few_steps_lower_the_loss(name):
    model, variables, x = _setup(name)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    segmentation = get_spec(name).task == "segmentation"
    num_classes = model.num_classes
    label_shape = (4, *x.shape[1:3]) if segmentation else (4,)
    labels = jax.random.randint(jax.random.key(3), label_shape, 0, num_classes)
    grad_fn = jax.value_and_grad(
        lambda p, s: _loss(model, p, s, x, labels, num_classes), has_aux=True
    )
    tx = optax.adam(1e-3)

    @jax.jit
    def step(params, state, opt_state):
        (loss, (logits, updates)), grads = grad_fn(params, state)
        steps, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, steps), {**state, **updates}, opt_state, loss, grads

    opt_state = tx.init(params)
    logits = model.apply(variables, x, train=False)
    expected = (*label_shape, num_classes)
    assert logits.shape == expected and bool(jnp.isfinite(logits).all())
    params, state, opt_state, loss0, grads = step(params, state, opt_state)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    for _ in range(6):
        params, state, opt_state, loss, _ = step(params, state, opt_state)
    assert float(loss) < float(loss0)


@pytest.mark.parametrize(
    "name", ["cifar_convnet", "convnet1d", "unet_small", "alexnet", "resnet18", "wrn16_8"]
)
def test_train_and_eval_differ_only_through_dropout_or_batch_norm(name):
    model, variables, x = _setup(name, normalization="none", dropout_rate=0.0)
    train = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_allclose(train, model.apply(variables, x, train=False), rtol=1e-5)
    model, variables, x = _setup(name, normalization="none", dropout_rate=0.5)
    train = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    assert float(jnp.abs(train - model.apply(variables, x, train=False)).max()) > 1e-4
    model, variables, x = _setup(name, normalization="batch", dropout_rate=0.0)
    train, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert float(jnp.abs(train - model.apply(variables, x, train=False)).max()) > 1e-4


@pytest.mark.parametrize("normalization", ["layer", "instance", "group"])
@pytest.mark.parametrize("name", ["cifar_convnet", "unet_small", "c3d_small", "convnet1d"])
def test_normalizations_and_activations_are_arguments(name, normalization):
    model, variables, x = _setup(name, normalization=normalization, activation="tanh")
    assert bool(jnp.isfinite(model.apply(variables, x, train=False)).all())


def test_option_a_shortcut_is_parameter_free_and_pads_with_zeros():
    from cnnjax.models.resnet import BasicBlock

    block = BasicBlock(4, 2, "identity", "none", shortcut="zero_pad")
    x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
    variables = block.init(jax.random.key(0), x, train=False)
    assert set(variables["params"]) == {"ConvBlock_0", "ConvBlock_1"}  # no projection
    shortcut = block.bind(variables)._shortcut(x, False)
    np.testing.assert_array_equal(shortcut[..., :2], x[:, ::2, ::2])
    np.testing.assert_array_equal(shortcut[..., 2:], 0.0)


def test_googlenet_variants_and_auxiliary_logits():
    assert param_count("googlenet", paper_5x5=True) == 7_005_832
    assert param_count("googlenet", aux_logits=True) == 13_004_888  # torchvision's, with aux
    model = models.create("googlenet", num_classes=10, aux_logits=True)
    x = jnp.ones((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    _, sown = jax.eval_shape(
        lambda v: model.apply(
            v,
            x,
            train=True,
            rngs={"dropout": jax.random.key(1)},
            mutable=["batch_stats", "intermediates"],
        ),
        variables,
    )
    assert [a.shape for a in sown["intermediates"]["aux_logits"]] == [(2, 10), (2, 10)]
    _, sown = jax.eval_shape(
        lambda v: model.apply(v, x, train=False, mutable=["intermediates"]), variables
    )
    assert "aux_logits" not in sown.get("intermediates", {})  # evaluation: main logits only


def test_train_step_adds_the_auxiliary_loss_with_weight_0_3():
    import flax.linen as nn

    from cnnjax.train.state import create_train_state
    from cnnjax.train.steps import AUX_LOSS_WEIGHT, cross_entropy, train_step

    class TinyWithAux(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            x = x.reshape(x.shape[0], -1)
            aux = nn.Dense(3, name="aux")(x)  # built at init (train=False) too, like GoogLeNet's
            if train:
                self.sow("intermediates", "aux_logits", aux)
            return nn.Dense(3, name="main")(x)

    batch = {"image": jnp.linspace(-1, 1, 8).reshape(2, 2, 2, 1), "label": jnp.array([0, 2])}
    state = create_train_state(TinyWithAux(), optax.sgd(1.0), input_shape=(2, 2, 1), seed=0)
    new_state, _ = train_step(state, batch, num_classes=3)

    def expected_loss(params):
        x = batch["image"].reshape(2, -1)
        dense = lambda p: x @ p["kernel"] + p["bias"]  # noqa: E731
        main = cross_entropy(dense(params["main"]), batch["label"], num_classes=3).mean()
        aux = cross_entropy(dense(params["aux"]), batch["label"], num_classes=3).mean()
        return main + AUX_LOSS_WEIGHT * aux

    grads = jax.grad(expected_loss)(state.params)
    for layer in ("main", "aux"):  # SGD with rate 1: new = old - grad
        np.testing.assert_allclose(
            new_state.params[layer]["kernel"],
            state.params[layer]["kernel"] - grads[layer]["kernel"],
            rtol=1e-5,
            atol=1e-6,
        )
    assert AUX_LOSS_WEIGHT == 0.3
