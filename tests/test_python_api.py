"""The Python API of the README's "From Python": train, get the parameters, evaluate."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax
from cnnjax.data.inputs import InMemoryInput
from cnnjax.models import registry
from cnnjax.models.lenet import LeNet5


def test_readme_python_training_returns_the_state_and_evaluates_alike(smoke_training):
    outcome = smoke_training.outcome  # cnnjax.train_and_evaluate of the `:smoke` recipe, in-process
    params = outcome.state.params
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == outcome.results["num_params"]
    assert outcome.results["steps"] == 40 and outcome.results["test_accuracy"] > 0.6

    trained = cnnjax.load_trained_run(smoke_training.workdir, "latest")
    assert trained.input.train_split is None  # the training split was not loaded
    # config.json holds the choice the backend made (None, "on the CPU only", by default).
    assert trained.config.model.fast_paths is True
    assert trained.model.layer_options.block_convolutions
    for saved, returned in zip(
        jax.tree.leaves(trained.state), jax.tree.leaves(outcome.state), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(returned))
    metrics = trained.evaluate()
    # One evaluator for the loop and for evaluation: the same examples, the same accuracy.
    assert metrics["count"] == 1000
    assert metrics["top_1_accuracy"] == outcome.results["test_accuracy"]
    assert metrics["loss"] == pytest.approx(outcome.results["test_loss"], rel=1e-6)
    assert metrics["top_5_accuracy"] >= metrics["top_1_accuracy"]


def test_public_names_resolve():
    for name in cnnjax.__all__:
        assert getattr(cnnjax, name) is not None, name
    assert cnnjax.create_model is cnnjax.models.create
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        cnnjax.no_such_name  # noqa: B018


def test_reregistering_the_same_builder_is_idempotent_and_a_clash_fails(monkeypatch):
    # A private copy of the registry: other tests see only the registered variants.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def tiny(**options):
        return cnnjax.create_model("lenet5", **options)

    tiny.__qualname__ = "test_python_api.tiny"
    register = cnnjax.register_model("tiny_api_test", family=LeNet5, input_shape=(32, 32, 1))
    register(tiny)

    def tiny_again(**options):  # a notebook cell run a second time: a new function object
        return tiny(**options)

    tiny_again.__qualname__ = tiny.__qualname__
    register(tiny_again)
    assert "tiny_api_test" in cnnjax.list_models()

    def other(**options):
        return tiny(**options)

    with pytest.raises(ValueError, match="already registered by .*tiny: choose another name"):
        register(other)


class _Linear(nn.Module):
    """A user's own model: logits from the flattened image."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def test_own_model_and_data_train_through_the_same_loop(tmp_path, data_dir):
    config = cnnjax.load_config(
        "configs/lenet5_fashion_mnist.py:smoke",
        [f"data.data_dir={data_dir}", "train.epochs=1", "data.eval_batch_size=500"],
    )
    config.model.name = "my_linear"  # a label only: the model below is used
    data = InMemoryInput(config)
    outcome = cnnjax.train_and_evaluate(config, str(tmp_path / "own"), model=_Linear(), data=data)
    kernel = outcome.state.params["Dense_0"]["kernel"]
    assert kernel.shape == (784, 10)
    assert outcome.results["steps"] == 20 and outcome.results["test_accuracy"] > 0.5
    logits = outcome.model.apply(
        {"params": outcome.state.params}, jnp.zeros((1, 28, 28, 1)), train=False
    )
    assert logits.shape == (1, 10)
