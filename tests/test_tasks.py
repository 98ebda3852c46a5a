"""Tasks built from images (rows, segmentation, motion) and the dense-prediction metrics."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from cnnjax import load_config, train_and_evaluate
from cnnjax.data import tasks
from cnnjax.data.sources import Split
from cnnjax.errors import UserError
from cnnjax.train import evaluation, steps


def _split(n=50, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 1), np.uint8)
    images[:, 8:20, 10:18] = rng.integers(100, 256, (n, 12, 8, 1))  # a bright block per item
    return Split(images, rng.integers(0, 10, n).astype(np.int32), 10)


def test_rows_are_the_image_rows():
    split = _split()
    rows = tasks.derive("rows", split, seed=0)
    assert rows.images.shape == (50, 28, 28)
    np.testing.assert_array_equal(rows.images[3, 10], split.images[3, 10, :, 0])


def test_segmentation_masks_label_exactly_the_visible_item_pixels():
    split = _split()
    seg = tasks.derive("segmentation", split, seed=0)
    assert seg.images.shape == (50, 64, 64, 1) and seg.labels.shape == (50, 64, 64)
    assert seg.num_classes == 11
    foreground = seg.images[..., 0] > tasks.FOREGROUND_LEVEL
    np.testing.assert_array_equal(foreground, seg.labels > 0)
    # The first item of canvas n is example n: its class appears unless fully covered.
    present = [split.labels[n] + 1 in seg.labels[n] for n in range(50)]
    assert np.mean(present) > 0.8
    again = tasks.derive("segmentation", split, seed=0)
    np.testing.assert_array_equal(again.labels, seg.labels)


def test_motion_clips_move_the_item_in_the_labelled_direction():
    split = _split()
    clips = tasks.derive("motion", split, seed=0)
    assert clips.images.shape == (50, 8, 44, 44, 1) and clips.num_classes == 8
    for n in range(10):
        first, last = (np.argwhere(clips.images[n, t, :, :, 0] > 0).mean(0) for t in (0, 7))
        expected = tasks.DIRECTIONS[clips.labels[n]] * tasks.CLIP_SPEED * 7
        np.testing.assert_allclose(last - first, expected, atol=1e-6)


def test_unknown_task_fails_clearly():
    with pytest.raises(UserError, match="unknown data task 'video'"):
        tasks.derive("video", _split(), seed=0)


def test_mean_iou_from_a_known_confusion_matrix():
    # Class 0: TP 3, FP 1, FN 1 -> 3/5; class 1: TP 2, FP 1, FN 1 -> 2/4; class 2 absent.
    confusion = np.array([[3, 1, 0], [1, 2, 0], [0, 0, 0]], np.float32)
    sums = {"loss_sum": 0.0, "top_1_correct": 5, "count": 7, "confusion": confusion}
    summary = evaluation.loss_and_accuracy(sums, with_mean_iou=True)
    assert summary["accuracy"] == pytest.approx(5 / 7)
    assert summary["mean_iou"] == pytest.approx((3 / 5 + 2 / 4) / 2)


def test_eval_step_counts_pixels_and_builds_the_confusion_matrix():
    logits = jnp.zeros((2, 1, 2, 3)).at[0, 0, 0, 1].set(5).at[0, 0, 1, 2].set(5)
    labels = jnp.array([[[1, 0]], [[2, 2]]])
    # A stand-in state whose "model" returns its input as the logits.
    state = SimpleNamespace(apply_fn=lambda variables, x, train: x, params={}, batch_stats={})
    batch = {"image": logits, "label": labels, "mask": jnp.array([1.0, 0.0])}
    sums = evaluation.eval_step(state, batch, steps.StepOptions(num_classes=3))
    assert int(sums["count"]) == 2  # two pixels of the one real example
    assert int(sums["top_1_correct"]) == 1
    expected = np.zeros((3, 3))
    expected[1, 1] = 1  # pixel (0, 0): true 1, predicted 1
    expected[0, 2] = 1  # pixel (0, 1): true 0, predicted 2
    np.testing.assert_array_equal(np.asarray(sums["confusion"]), expected)
    # Pixel (0, 0): log-softmax of (0, 5, 0) at 1; pixel (0, 1): of (0, 0, 5) at 0.
    expected_loss = np.log(2 + np.exp(5)) - 5 + np.log(2 + np.exp(5))
    assert float(sums["loss_sum"]) == pytest.approx(expected_loss, rel=1e-5)


# Per task recipe: what its results must hold beyond the shared keys.
TASK_RECIPES = {
    "unet_segmentation": "test_mean_iou",
    "convnet1d_rows": None,
    "c3d_motion": None,
}


@pytest.mark.parametrize("recipe", sorted(TASK_RECIPES))
def test_task_recipes_train_end_to_end(tmp_path, data_dir, recipe):
    # One training batch of 64 an epoch and one evaluation batch of 64, not the smoke variant's
    # batches of 128 and 250 (padded): the clips' 3-D convolutions cost about 0.8 s per 64 on 2
    # cores.
    overrides = {
        "data.train_split": "train[:64]",
        "data.batch_size": 64,
        "data.eval_split": "test[:64]",
        "data.eval_batch_size": 64,
    }
    config = load_config(
        f"{ROOT}/configs/{recipe}.py:smoke", {**overrides, "data.data_dir": data_dir}
    )
    results = train_and_evaluate(config, str(tmp_path)).results
    assert results["epochs"] == config.train.epochs and results["steps"] > 0
    assert np.isfinite(results["test_loss"]) and np.isfinite(results["train_loss"])
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert ("test_mean_iou" in results) == (TASK_RECIPES[recipe] == "test_mean_iou")
    if "test_mean_iou" in results:
        assert 0.0 <= results["test_mean_iou"] <= 1.0


def test_model_and_task_must_match(tmp_path, data_dir):
    config = load_config(
        f"{ROOT}/configs/unet_segmentation.py:smoke",
        {"data.data_dir": data_dir, "data.task": "classification"},
    )
    with pytest.raises(UserError, match="model 'unet_small' is for segmentation"):
        train_and_evaluate(config, str(tmp_path))
