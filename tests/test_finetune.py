"""Fine-tuning: class subsets, loading another run's weights, freezing, per-group learning rates,
frozen batch norm, and the command line end to end."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import RECIPE

from cnnjax import load_config, models, train_and_evaluate
from cnnjax.data.sources import Split
from cnnjax.data.subsets import select_classes
from cnnjax.errors import UserError
from cnnjax.models.layers import LayerOptions
from cnnjax.train import finetune, steps
from cnnjax.train.checkpoints import RunCheckpoints
from cnnjax.train.state import create_train_state


def _finetune_config(**values) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {"freeze": "", "lr_multipliers": "", "reinit": "", "batch_norm": "update"}
    )
    config.update(values)
    return config


def test_select_classes_relabels_in_the_given_order_and_keeps_the_first_n_per_class():
    labels = np.array([0, 1, 2, 3, 1, 3, 3, 0, 1], np.int32)
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)
    split = Split(images, labels, num_classes=4)
    picked = select_classes(split, "3,1")
    assert picked.num_classes == 2
    np.testing.assert_array_equal(picked.images.ravel(), [1, 3, 4, 5, 6, 8])
    np.testing.assert_array_equal(picked.labels, [1, 0, 1, 0, 0, 1])  # 3 -> 0, 1 -> 1
    first_two = select_classes(split, "3,1", examples_per_class=2)
    np.testing.assert_array_equal(first_two.images.ravel(), [1, 3, 4, 5])
    every_class_one_each = select_classes(split, "", examples_per_class=1)
    np.testing.assert_array_equal(every_class_one_each.images.ravel(), [0, 1, 2, 3])
    assert select_classes(split, "") is split
    for bad in ("1,1", "4", "a,b"):
        with pytest.raises(UserError, match="data.classes"):
            select_classes(split, bad)


def _lenet_state(tx, seed=0, normalization="batch", num_classes=10, frozen_batch_norm=False):
    model = models.create(
        "lenet5",
        num_classes=num_classes,
        normalization=normalization,
        layer_options=LayerOptions(frozen_batch_norm=frozen_batch_norm),
    )
    return create_train_state(model, tx, input_shape=(28, 28, 1), seed=seed)


def test_frozen_groups_do_not_move_and_multiplied_groups_move_by_the_factor():
    config = _finetune_config(freeze="ConvBlock_0", lr_multipliers="Dense_2=0.1;Dense=0")
    tx = finetune.wrap_optimizer(optax.sgd(1.0), config)
    state = _lenet_state(tx, normalization="none")
    labels = finetune.group_labels(state.params, config)
    assert labels["ConvBlock_0"]["Conv_0"]["kernel"] == "frozen"
    assert labels["Dense_2"]["kernel"] == "x0.1"  # the first matching pattern wins
    assert labels["Dense_0"]["kernel"] == "frozen"  # factor 0 freezes
    assert labels["ConvBlock_1"]["Conv_0"]["kernel"] == "base"
    grads = jax.tree.map(jnp.ones_like, state.params)
    # One program (op by op, each update of a parameter shape compiles on its own).
    new = jax.jit(lambda state, grads: state.apply_gradients(grads=grads))(state, grads)
    old, new = jax.device_get((state.params, new.params))
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), old, new)
    assert moved["ConvBlock_0"]["Conv_0"]["kernel"] == 0.0
    assert moved["Dense_0"]["kernel"] == 0.0
    assert moved["ConvBlock_1"]["Conv_0"]["kernel"] == pytest.approx(1.0)
    assert moved["Dense_2"]["kernel"] == pytest.approx(0.1)
    with pytest.raises(UserError, match="lr_multipliers"):
        finetune.parse_lr_multipliers("Dense=fast")
    with pytest.raises(UserError, match="regular expression"):
        finetune.group_labels(state.params, _finetune_config(freeze="Conv("))


def test_merge_keeps_fresh_heads_where_shapes_differ_or_reinit_matches():
    saved = jax.device_get(_lenet_state(optax.sgd(0.1), seed=1, num_classes=10).params)
    fresh = jax.device_get(_lenet_state(optax.sgd(0.1), seed=2, num_classes=5).params)
    merged, kept = finetune.merge_pretrained(fresh, saved, None)
    assert kept == ["Dense_2/bias", "Dense_2/kernel"]  # 84x5 here, 84x10 in the saved run
    np.testing.assert_array_equal(merged["Dense_1"]["kernel"], saved["Dense_1"]["kernel"])
    np.testing.assert_array_equal(merged["Dense_2"]["kernel"], fresh["Dense_2"]["kernel"])
    merged, kept = finetune.merge_pretrained(fresh, saved, finetune._compile("Dense_1", "reinit"))
    assert "Dense_1/kernel" in kept
    np.testing.assert_array_equal(merged["Dense_1"]["kernel"], fresh["Dense_1"]["kernel"])


def test_an_rgb_kernel_loads_into_a_gray_input_as_the_sum_of_its_channels():
    """A gray image is R = G = B, on which the RGB kernel acts as its channels' sum."""
    saved = {"Conv_0": {"kernel": np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)}}
    fresh = {"Conv_0": {"kernel": np.zeros((2, 2, 1, 4), np.float32)}}
    merged, kept = finetune.merge_pretrained(fresh, saved, None)
    assert kept == []
    expected = saved["Conv_0"]["kernel"].sum(axis=2, keepdims=True)
    np.testing.assert_array_equal(merged["Conv_0"]["kernel"], expected)
    gray = np.random.default_rng(0).standard_normal((1, 5, 5, 1)).astype(np.float32)
    rgb_out = jax.lax.conv_general_dilated(
        np.repeat(gray, 3, axis=-1),
        saved["Conv_0"]["kernel"],
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    gray_out = jax.lax.conv_general_dilated(
        gray,
        merged["Conv_0"]["kernel"],
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(gray_out, rgb_out, rtol=1e-5, atol=1e-4)
    # Another channel count (e.g. 2) is not a gray image: the fresh kernel stays.
    two = {"Conv_0": {"kernel": np.zeros((2, 2, 2, 4), np.float32)}}
    assert finetune.merge_pretrained(two, saved, None)[1] == ["Conv_0/kernel"]


def test_frozen_batch_norm_uses_and_keeps_the_running_statistics():
    frozen = _lenet_state(optax.sgd(0.1), frozen_batch_norm=True)
    # Running statistics unlike any batch's, so that using them is visible in the logits.
    frozen = frozen.replace(
        batch_stats=jax.tree.map(lambda s: np.asarray(s) + 0.5, frozen.batch_stats)
    )
    # The same weights in a model whose batch norm trains as usual.
    state = frozen.replace(apply_fn=_lenet_state(optax.sgd(0.1)).apply_fn)
    batch = {
        "image": jax.random.normal(jax.random.key(0), (8, 28, 28, 1)),
        "label": jnp.arange(8) % 10,
    }
    options = steps.StepOptions(num_classes=10)

    def step(s, b):
        return steps.gradients(s, s.params, s.batch_stats, b, jax.random.key(1), options)

    step = jax.jit(step)  # one jit: the models differ, so each state traces its own
    _, logits, _, new_stats = step(frozen, batch)
    for old, new in zip(
        jax.tree.leaves(state.batch_stats), jax.tree.leaves(new_stats), strict=True
    ):
        np.testing.assert_array_equal(old, new)
    inference = jax.jit(functools.partial(state.apply_fn, train=False))(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"]
    )
    np.testing.assert_allclose(logits, inference, atol=1e-5)
    _, training_logits, _, updated = step(state, batch)
    assert float(jnp.abs(training_logits - inference).max()) > 1e-2  # unfrozen: batch statistics


def _saved_params(workdir):
    checkpoints = RunCheckpoints(workdir, keep_best=1)
    try:
        return jax.device_get(checkpoints.restore_as_saved(checkpoints.latest_step()))
    finally:
        checkpoints.close()


def test_finetune_end_to_end(tmp_path, data_dir, capsys):
    """Pretraining on 5 classes, then fine-tuning on the 5 others from its weights, with the
    settings `cnnjax train --config.init_from=... --config.finetune.*` gives (load_config)."""
    pretrained, tuned = str(tmp_path / "pretrain"), str(tmp_path / "finetune")

    def config(**overrides):
        common = {"data.data_dir": data_dir, "train.epochs": 1, "data.eval_split": "test[:200]"}
        return load_config(f"{RECIPE}:smoke", {**common, **overrides})

    # 5 classes x 40 examples, batch 20: 10 steps.
    train_and_evaluate(
        config(
            **{
                "data.classes": "1,3,5,8,9",
                "data.train_examples_per_class": 40,
                "data.batch_size": 20,
            }
        ),
        pretrained,
    )
    finetune_overrides = {
        "data.classes": "0,2,4,6,7",
        "data.train_examples_per_class": 20,
        "data.batch_size": 20,
        "init_from": pretrained,
        "finetune.reinit": "Dense_2",
        "finetune.freeze": "ConvBlock",
        "finetune.lr_multipliers": "Dense_[01]=0.1",
        "finetune.batch_norm": "frozen",
    }
    capsys.readouterr()
    results = train_and_evaluate(config(**finetune_overrides), tuned).results
    assert "14 of 16 parameter arrays loaded; fresh: Dense_2/bias, Dense_2/kernel" in (
        capsys.readouterr().out
    )
    assert results["steps"] == 5  # 5 classes x 20 examples / batch 20, one epoch
    with open(os.path.join(tuned, "results.json")) as f:
        assert json.load(f)["steps"] == 5
    before, after = _saved_params(pretrained), _saved_params(tuned)
    conv = before["params"]["ConvBlock_1"]["Conv_0"]["kernel"]
    np.testing.assert_array_equal(after["params"]["ConvBlock_1"]["Conv_0"]["kernel"], conv)
    for old, new in zip(
        jax.tree.leaves(before["batch_stats"]), jax.tree.leaves(after["batch_stats"]), strict=True
    ):
        np.testing.assert_array_equal(old, new)  # frozen batch norm
    dense = np.abs(after["params"]["Dense_1"]["kernel"] - before["params"]["Dense_1"]["kernel"])
    assert 0 < dense.max() < 2e-3  # 5 Adam steps at a tenth of 2e-3
    # A workdir without checkpoints is refused, naming the key.
    with pytest.raises(UserError, match="holds no checkpoints"):
        train_and_evaluate(config(**{"init_from": str(tmp_path)}), str(tmp_path / "other"))
