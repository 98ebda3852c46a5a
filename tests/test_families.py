"""Every registered model: published sizes, and forward/backward/training at a small input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_sizes import SMALL, filled_variables, jit_fast

from cnnjax import models
from cnnjax.models.dilated import CONTEXT_DILATIONS, receptive_fields
from cnnjax.models.inventory import count_macs, param_count
from cnnjax.models.registry import get_spec
from cnnjax.train.steps import StepOptions, training_loss

# Published parameter counts (torchvision's for AlexNet and VGG-16; the papers' for the rest).
PARAMS = {
    "alexnet": 61_100_840,
    # Krizhevsky et al.'s net on one device, and with its two towers (tests/test_course_models.py
    # adds these up layer by layer).
    "alexnet_paper": 62_378_344,
    "alexnet_twotower": 60_965_224,
    "vgg16": 138_357_544,
    "cifar_convnet": 22_466,
    "lenet5": 61_706,
    "lenet5_local": 423_038,  # without weight sharing in C1 and C3
    "logistic": 7_850,  # softmax regression on 28x28x1
    "mlp": 636_010,  # the course's 784-800-10
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    # torchvision's wide ResNets: bottleneck inner widths doubled (width_per_group=128).
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
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
GMACS = {
    "alexnet": 0.714,
    "vgg16": 15.47,
    "resnet50": 4.09,
    "wide_resnet50_2": 11.4,
    "c3d": 38.5,
    "inception_v3": 5.71,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_published_parameter_counts(name):
    assert param_count(name) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(GMACS))
def test_published_macs_within_2_percent(name):
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


def _setup(name, batch_size=4, **extra):
    shape, options = SMALL[name]
    model = models.create(name, **{**options, **extra})
    x = jax.random.normal(jax.random.key(0), (batch_size, *shape))
    return model, filled_variables(model, x.shape), x


# Except for UNet: compiled with model_sizes.QUICK_COMPILE (level 0, with either emitter), XLA:CPU's
# step computed NaN losses from the third step on (the fully optimized program trains; measured
# with jaxlib 0.10).
FULLY_OPTIMIZED = {"unet", "unet_small"}

# One variant of each family takes real training steps in the default run; GoogLeNet and
# Inception v3 with their auxiliary heads. ResNet-20 trains the basic block (ResNet-18's, with
# its option-A shortcut), ResNet-50 the bottleneck, the stem and the projection shortcuts. The
# other variants repeat the same blocks deeper or wider (VGG-16 is VGG-11 with more layers,
# ResNet-152 is ResNet-50 with more blocks), compile for 4-60 s each, and train with `-m slow`;
# the published counts or `test_every_variant_traces_a_training_forward_pass` still trace each
# of them in the default run.
TRAINED = {
    "alexnet": {},
    "c3d_small": {},
    "cifar_convnet": {},
    "convnet1d": {},
    "dilated_context": {},
    "fast_convnet": {},
    "googlenet": {"aux_logits": True},
    "inception_v3": {"aux_logits": True},
    "lenet5": {},
    "mlp": {},
    "resnet20": {},
    "resnet50": {},
    "unet_small": {},
    "vgg11_bn": {},
    "wrn16_8": {},
}
TRAIN_STEPS = 4
AUX_HEADS = {"googlenet": 2, "inception_v3": 1}
# The two deepest nets train without a second, evaluation program and on batches of 2 (their
# steps took about half a second each at 4 on 2 cores); both together cut their two tests from
# 51 to 41 s of CPU. Their evaluation passes run in tests/test_inception.py, and batch norm's
# evaluation path, shared by every family, runs here in the others.
TRAINING_ONLY = {"googlenet", "inception_v3"}
BATCH_SIZE = {"googlenet": 2, "inception_v3": 2}


def _variants():
    return [n if n in TRAINED else pytest.param(n, marks=pytest.mark.slow) for n in sorted(SMALL)]


def test_every_family_trains_in_the_default_run():
    families = {get_spec(name).family for name in models.list_models()}
    assert {get_spec(name).family for name in TRAINED} == families


def _make_step(model, tx: optax.GradientTransformation, num_classes: int, jit=jit_fast):
    """A jitted optimizer step on the training objective (`steps.training_loss`: cross-entropy plus
    0.3 x that of any auxiliary logits), with its loss, logits, and per top-level module the
    largest |gradient|. One fixed dropout key makes the objective the same function at every
    step, so that a few steps on one batch must lower it."""
    options = StepOptions(num_classes=num_classes)

    @jit
    def step(params, batch_stats, opt_state, batch):
        (loss, (logits, _, batch_stats)), grads = jax.value_and_grad(training_loss, has_aux=True)(
            params, batch_stats, model.apply, batch, jax.random.key(2), options
        )
        changes, opt_state = tx.update(grads, opt_state, params)
        # Reduced here: checking each of some 300 gradient arrays outside jit costs seconds.
        grad_max = {
            module: jnp.stack([jnp.abs(g).max() for g in jax.tree.leaves(tree)]).max()
            for module, tree in grads.items()
        }
        metrics = {"loss": loss, "logits": logits, "grad_max": grad_max}
        return optax.apply_updates(params, changes), batch_stats, opt_state, metrics

    return step


@pytest.mark.parametrize("name", _variants())
def test_forward_backward_and_a_few_steps_lower_the_loss(name):
    model, variables, x = _setup(name, BATCH_SIZE.get(name, 4), **TRAINED.get(name, {}))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    segmentation = get_spec(name).task == "segmentation"
    label_shape = (len(x), *x.shape[1:3]) if segmentation else (len(x),)
    labels = jax.random.randint(jax.random.key(3), label_shape, 0, model.num_classes)
    # Momentum SGD: Adam's per-array updates add about a fifth to the compilation of a deep net.
    tx = optax.sgd(0.01, momentum=0.9)
    step = _make_step(
        model, tx, model.num_classes, jax.jit if name in FULLY_OPTIMIZED else jit_fast
    )
    opt_state = jit_fast(tx.init)(params)  # one compilation, not one per parameter shape

    new_params, new_stats, opt_state, first = step(
        params, batch_stats, opt_state, {"image": x, "label": labels}
    )
    # Checked in numpy: an eager jnp operation compiles once per shape (GoogLeNet has some 60
    # shapes of batch statistics).
    train_logits = np.asarray(first["logits"])
    assert train_logits.shape == (*label_shape, model.num_classes)
    assert np.isfinite(train_logits).all() and train_logits.std() > 0
    if name not in TRAINING_ONLY:
        forward = jit_fast(functools.partial(model.apply, train=False))
        eval_logits = np.asarray(forward(variables, x))
        assert eval_logits.shape == train_logits.shape
        assert np.isfinite(eval_logits).all() and eval_logits.std() > 0
        if batch_stats:  # batch statistics instead of running ones: training gives other logits
            assert np.abs(train_logits - eval_logits).max() > 1e-3
    # Every top-level module (auxiliary heads included: they feed only their own losses) gets
    # a finite, nonzero gradient: no branch is cut off from the loss.
    grad_max = {module: float(value) for module, value in first["grad_max"].items()}
    assert set(grad_max) == set(params)
    assert all(np.isfinite(v) and v > 0 for v in grad_max.values()), grad_max
    heads = [module for module in params if module.startswith(("AuxClassifier", "InceptionAux"))]
    assert len(heads) == AUX_HEADS.get(name, 0)
    if batch_stats:
        changed = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), new_stats, batch_stats)
        assert max(jax.tree.leaves(changed)) > 0  # the running statistics were updated
    losses = [float(first["loss"])]
    for _ in range(TRAIN_STEPS):  # call k reports the loss after k updates
        new_params, new_stats, opt_state, metrics = step(
            new_params, new_stats, opt_state, {"image": x, "label": labels}
        )
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_every_variant_traces_a_training_forward_pass():
    """The variants that train only with `-m slow` and whose published counts above do not
    trace them already, traced in training mode (shapes only, nothing compiled) at their small
    setting: logits of the label shape plus classes, and batch statistics where they have any."""
    for name in sorted(set(SMALL) - set(TRAINED) - set(PARAMS)):
        shape, options = SMALL[name]
        model = models.create(name, **options)
        x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
        variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
        apply = functools.partial(
            model.apply, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"]
        )
        logits, updates = jax.eval_shape(apply, variables, x)
        per_pixel = get_spec(name).task == "segmentation"
        assert logits.shape == (2, *(shape[:2] if per_pixel else ()), model.num_classes), name
        assert jax.tree.structure(updates) == jax.tree.structure(
            {"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {}
        ), name


def _forward(model, variables, x, *, train: bool, dropout_key=None) -> jax.Array:
    """The logits of one compiled forward pass (in training mode with batch statistics, and
    with dropout where `dropout_key` is given)."""

    @jit_fast
    def forward(variables, x):
        rngs = {"dropout": dropout_key} if dropout_key is not None else {}
        logits, _ = model.apply(variables, x, train=train, rngs=rngs, mutable=["batch_stats"])
        return logits

    return forward(variables, x)


@pytest.mark.parametrize(
    "name", ["cifar_convnet", "convnet1d", "unet_small", "alexnet", "resnet18", "wrn16_8"]
)
def test_train_and_eval_differ_only_through_dropout_or_batch_norm(name):
    model, variables, x = _setup(name, normalization="none", dropout_rate=0.0)
    train = _forward(model, variables, x, train=True, dropout_key=jax.random.key(0))
    np.testing.assert_allclose(train, _forward(model, variables, x, train=False), rtol=1e-5)
    model, variables, x = _setup(name, normalization="none", dropout_rate=0.5)
    train = _forward(model, variables, x, train=True, dropout_key=jax.random.key(0))
    assert float(jnp.abs(train - _forward(model, variables, x, train=False)).max()) > 1e-4
    model, variables, x = _setup(name, normalization="batch", dropout_rate=0.0)
    train = _forward(model, variables, x, train=True)
    assert float(jnp.abs(train - _forward(model, variables, x, train=False)).max()) > 1e-4


@pytest.mark.parametrize("normalization", ["layer", "instance", "group"])
@pytest.mark.parametrize("name", ["cifar_convnet", "unet_small", "c3d_small", "convnet1d"])
def test_normalizations_and_activations_are_arguments(name, normalization):
    model, variables, x = _setup(name, normalization=normalization, activation="tanh")
    assert bool(jnp.isfinite(_forward(model, variables, x, train=False)).all())


def test_option_a_shortcut_is_parameter_free_and_pads_with_zeros():
    from cnnjax.models.resnet import BasicBlock

    block = BasicBlock(4, 2, "identity", "none", shortcut="zero_pad")
    x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
    # Shapes only (the shortcut reads no parameter): an eager init compiles each random draw.
    variables = jax.eval_shape(functools.partial(block.init, train=False), jax.random.key(0), x)
    assert set(variables["params"]) == {"ConvBlock_0", "ConvBlock_1"}  # no projection
    shortcut = block.bind(variables)._shortcut(x, False)
    np.testing.assert_array_equal(shortcut[..., :2], x[:, ::2, ::2])
    np.testing.assert_array_equal(shortcut[..., 2:], 0.0)


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
    new_state, _ = jax.jit(functools.partial(train_step, options=StepOptions(num_classes=3)))(
        state, batch
    )

    def expected_loss(params):
        x = batch["image"].reshape(2, -1)
        dense = lambda p: x @ p["kernel"] + p["bias"]  # noqa: E731
        main = cross_entropy(dense(params["main"]), batch["label"], num_classes=3).mean()
        aux = cross_entropy(dense(params["aux"]), batch["label"], num_classes=3).mean()
        return main + AUX_LOSS_WEIGHT * aux

    grads = jax.jit(jax.grad(expected_loss))(state.params)
    for layer in ("main", "aux"):  # SGD with rate 1: new = old - grad
        np.testing.assert_allclose(
            new_state.params[layer]["kernel"],
            state.params[layer]["kernel"] - grads[layer]["kernel"],
            rtol=1e-5,
            atol=1e-6,
        )
    assert AUX_LOSS_WEIGHT == 0.3
