"""uint8 batches to the device: the steps normalize them there, as the host pipelines did."""

import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest
from conftest import RECIPE

from cnnjax import load_config, train_and_evaluate
from cnnjax.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from cnnjax.data.inputs import make_input
from cnnjax.data.normalization import Normalization, model_inputs
from cnnjax.models import create
from cnnjax.train import evaluation, loop, steps
from cnnjax.train.state import create_train_state

# Fashion-MNIST-like statistics of x / 255, as channel_stats gives them (float32).
MEAN, STD = np.float32([0.2860406]), np.float32([0.3530242])


def _images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_device_normalization_equals_the_host_one_to_float32_rounding():
    x = _images((16, 8, 8, 1))
    # The float32 formula the host pipeline applied before (cnnjax/data/pipeline.py).
    host = (x.astype(np.float32) * np.float32(1 / 255) - MEAN) / STD
    exact = (x / 255.0 - MEAN.astype(np.float64)) / STD.astype(np.float64)
    device = np.asarray(jax.jit(Normalization.standardize(MEAN, STD))(x))
    assert device.dtype == np.float32
    np.testing.assert_allclose(device, host, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(device, exact, rtol=1e-6, atol=1e-6)
    # ImageNet's fixed statistics (the streaming inputs), and x / 255 (normalize=False).
    rgb = _images((4, 5, 5, 3), seed=1)
    imagenet = (rgb / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    got = np.asarray(jax.jit(Normalization.standardize(IMAGENET_MEAN, IMAGENET_STD))(rgb))
    np.testing.assert_allclose(got, imagenet, rtol=1e-6, atol=1e-6)
    unit = np.asarray(jax.jit(Normalization.unit_range(3))(rgb))
    np.testing.assert_allclose(unit, rgb / 255.0, rtol=1e-6)


def test_steps_on_uint8_equal_steps_on_host_normalized_floats():
    normalization = Normalization.standardize(MEAN, STD)
    images = _images((8, 28, 28, 1), seed=2)
    labels = np.arange(8, dtype=np.int32) % 10
    floats = (images.astype(np.float32) * np.float32(1 / 255) - MEAN) / STD
    model = create("lenet5", num_classes=10, activation="relu", normalization="batch")
    state = create_train_state(model, optax.sgd(0.1), input_shape=(28, 28, 1), seed=0)
    on_device = steps.StepOptions(num_classes=10, normalization=normalization)
    on_host = steps.StepOptions(num_classes=10)
    mask = np.ones(8, np.float32)
    evaluate = functools.partial(evaluation.eval_step, state)
    a = jax.jit(evaluate, static_argnums=1)(
        {"image": images, "label": labels, "mask": mask}, on_device
    )
    b = jax.jit(evaluate, static_argnums=1)(
        {"image": floats, "label": labels, "mask": mask}, on_host
    )
    np.testing.assert_allclose(a["loss_sum"], b["loss_sum"], rtol=1e-5)
    train = jax.jit(steps.train_step, static_argnums=2)
    new_a, _ = train(state, {"image": images, "label": labels}, on_device)
    new_b, _ = train(state, {"image": floats, "label": labels}, on_host)
    for x, y in zip(jax.tree.leaves(new_a.params), jax.tree.leaves(new_b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 images need a Normalization"):
        model_inputs(images, None)


def test_the_training_loop_hands_uint8_to_the_steps(tmp_path, data_dir, monkeypatch):
    """A run's train and evaluation steps receive uint8 images (a quarter of float32's bytes to
    copy to the device) with the input's normalization in their options, and results.json
    counts the examples the process read."""
    overrides = {
        "data.data_dir": data_dir,
        "data.train_split": "train[:512]",
        "data.eval_split": "test[:300]",
        "data.eval_batch_size": 200,
        "train.steps": 3,
    }
    config = load_config(f"{RECIPE}:smoke", overrides)
    data = make_input(config)
    assert data.normalization == Normalization.standardize(data.mean, data.std)
    seen, make_steps = [], loop.make_steps

    def recording_make_steps(options, **kwargs):
        assert options.normalization == data.normalization
        compiled = make_steps(options, **kwargs)

        def train(state, batch):
            seen.append(("train", batch["image"].dtype))
            return compiled.train(state, batch)

        def evaluate(state, batch):
            seen.append(("eval", batch["image"].dtype))
            return compiled.evaluate(state, batch)

        return dataclasses.replace(compiled, train=train, evaluate=evaluate)

    monkeypatch.setattr(loop, "make_steps", recording_make_steps)
    outcome = train_and_evaluate(config, str(tmp_path / "run"), data=data)
    assert [kind for kind, _ in seen] == ["train"] * 3 + ["eval"] * 2
    assert {dtype for _, dtype in seen} == {np.dtype(np.uint8)}
    # 3 steps and the 2 batches that the transfer to the device keeps in flight; the 300 test
    # examples once.
    assert outcome.results["examples_decoded_per_process"] == [{"train": 5 * 128, "eval": 300}]
