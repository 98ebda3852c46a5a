"""Evaluation beyond top-1: exact sums on known logits, and `evaluate_workdir` on a trained run."""

import functools
import glob
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax.data import load_split
from cnnjax.errors import UserError
from cnnjax.inspect.evaluation_report import evaluate_workdir, format_evaluation
from cnnjax.train.evaluation import eval_step, summarize_evaluation
from cnnjax.train.state import TrainState
from cnnjax.train.steps import StepOptions

NUM_CLASSES, FEATURES, NUM_BINS, TOP_K = 6, 3, 15, 3
FASHION_MNIST_NAMES = (
    "T-shirt/top|Trouser|Pullover|Dress|Coat|Sandal|Shirt|Sneaker|Bag|Ankle boot".split("|")
)


class _Linear(nn.Module):
    """Logits = x @ kernel + bias on the last axis: per example [B, D] or per pixel [B, H, W, D]."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        return nn.Dense(NUM_CLASSES)(x)


def _state() -> TrainState:
    rng = np.random.default_rng(0)
    # Large weights spread the confidences over many calibration bins.
    params = {
        "Dense_0": {
            "kernel": jnp.asarray(2.0 * rng.normal(size=(FEATURES, NUM_CLASSES)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=NUM_CLASSES), jnp.float32),
        }
    }
    return TrainState.create(
        apply_fn=_Linear().apply,
        params=params,
        tx=optax.sgd(0.1),
        batch_stats={},
        key=jax.random.key_data(jax.random.key(0)),
    )


def _batch(shape=(12,), padding=2, seed=1) -> dict:
    """Labels of `shape`; the last `padding` examples are padding with NaN images (they must
    count for nothing). Class 5 never occurs."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(*shape, FEATURES)).astype(np.float32)
    image[-padding:] = np.nan
    mask = (np.arange(shape[0]) < shape[0] - padding).astype(np.float32)
    label = rng.integers(0, NUM_CLASSES - 1, shape).astype(np.int32)
    return {"image": image, "label": label, "mask": mask}


def _reference(state, batch) -> dict:
    """The metrics of `batch` computed with numpy from the model's logits."""
    logits = np.asarray(state.apply_fn({"params": state.params}, batch["image"], train=False))
    keep = np.broadcast_to(
        batch["mask"].reshape(-1, *[1] * (batch["label"].ndim - 1)), batch["label"].shape
    ).ravel()
    logits = logits.reshape(-1, NUM_CLASSES)[keep > 0].astype(np.float64)
    labels = batch["label"].ravel()[keep > 0]
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    predictions = logits.argmax(1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    top_k = (np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K] == labels[:, None]).any(1)
    confidence, hit = np.exp(log_probs.max(1)), predictions == labels
    bins = np.digitize(confidence, np.linspace(0, 1, NUM_BINS + 1)[1:-1])
    ece = sum(
        (bins == b).mean() * abs(hit[bins == b].mean() - confidence[bins == b].mean())
        for b in np.unique(bins)
    )
    return {
        "count": len(labels),
        "confusion": confusion,
        "top_1_accuracy": hit.mean(),
        "top_3_accuracy": top_k.mean(),
        "loss": -log_probs[np.arange(len(labels)), labels].mean(),
        "ece": ece,
        "bins": len(np.unique(bins)),
    }


STEP = jax.jit(
    functools.partial(eval_step, options=StepOptions(num_classes=NUM_CLASSES), top_k=TOP_K)
)


def test_sums_match_numpy_on_known_logits():
    state, batch = _state(), _batch()
    sums = jax.device_get(STEP(state, batch))
    summary = summarize_evaluation(sums)
    expected = _reference(state, batch)
    assert expected["bins"] >= 4  # the calibration really spans several bins
    np.testing.assert_array_equal(sums["confusion"], expected["confusion"])
    assert summary["count"] == expected["count"] == 10
    assert summary["top_1_accuracy"] == expected["top_1_accuracy"]
    assert summary["top_3_accuracy"] == expected["top_3_accuracy"]
    assert summary["top_k"] == TOP_K
    assert summary["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert summary["ece"] == pytest.approx(expected["ece"], abs=1e-6)
    assert sum(row["count"] for row in summary["calibration"]) == 10
    assert summary["per_class_accuracy"][5] is None  # class 5 has no example: None, not NaN
    assert summary["confusion"] == expected["confusion"].tolist()


def test_sums_of_two_halves_equal_the_sums_of_the_whole():
    state, batch = _state(), _batch()
    whole = jax.device_get(STEP(state, batch))
    halves = [
        jax.device_get(STEP(state, {key: value[rows] for key, value in batch.items()}))
        for rows in (slice(0, 6), slice(6, 12))
    ]
    for key, value in whole.items():
        added = halves[0][key] + halves[1][key]
        if np.issubdtype(value.dtype, np.integer):  # counts: exact
            np.testing.assert_array_equal(added, value, err_msg=key)
        else:
            np.testing.assert_allclose(added, value, rtol=1e-6, atol=1e-6, err_msg=key)


def test_per_pixel_labels_give_the_pixel_confusion_matrix():
    state, batch = _state(), _batch(shape=(3, 4, 5), padding=1, seed=2)
    sums = jax.device_get(STEP(state, batch))
    expected = _reference(state, batch)
    np.testing.assert_array_equal(sums["confusion"], expected["confusion"])
    summary = summarize_evaluation(sums, with_mean_iou=True)
    assert summary["count"] == 2 * 4 * 5
    assert summary["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    confusion = expected["confusion"]
    tp, union = np.diag(confusion), confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    assert summary["mean_iou"] == pytest.approx((tp[union > 0] / union[union > 0]).mean())


@pytest.fixture
def trained(smoke_run) -> str:
    """The session's smoke run (tests/conftest.py): 1,000 test examples in batches of 300."""
    return smoke_run


def test_evaluate_workdir_matches_training_and_writes_files(trained):
    result = evaluate_workdir(trained, "latest")
    with open(os.path.join(trained, "results.json")) as f:
        recorded = json.load(f)
    assert result["count"] == 1000 and result["step"] == recorded["steps"] == 40
    assert result["top_1_accuracy"] == pytest.approx(recorded["test_accuracy"], abs=1e-6)
    assert result["loss"] == pytest.approx(recorded["test_loss"], rel=1e-5)
    confusion = np.array(result["confusion"])
    assert confusion.sum() == 1000
    assert np.trace(confusion) / 1000 == result["top_1_accuracy"]
    assert result["top_5_accuracy"] >= result["top_1_accuracy"]
    assert result["class_names"] == FASHION_MNIST_NAMES
    folder = os.path.join(trained, "eval", "step_40_test_1000")
    for name in ("metrics.json", "confusion.csv", "per_class.csv", "confusion.png"):
        assert os.path.getsize(os.path.join(folder, name)) > 0, name
    with open(os.path.join(folder, "metrics.json")) as f:
        assert json.load(f)["top_1_accuracy"] == result["top_1_accuracy"]
    with open(os.path.join(folder, "confusion.csv")) as f:
        assert f.readline().strip() == "true \\ predicted," + ",".join(FASHION_MNIST_NAMES)
    events = glob.glob(os.path.join(trained, "tensorboard", "eval", "test_1000", "events.*"))
    assert [os.path.basename(e).rsplit(".", 1)[-1] for e in events] == ["step_40"]
    text = format_evaluation(result)
    assert f"top-1 accuracy {result['top_1_accuracy']:.4f}" in text and "worst classes" in text


def test_bad_input_is_a_user_error(trained, tmp_path):
    with pytest.raises(UserError, match="no checkpoint at step 999 in .*: available steps are"):
        evaluate_workdir(trained, "999")
    with pytest.raises(UserError, match="holds no config.json"):
        evaluate_workdir(str(tmp_path))
    with pytest.raises(UserError, match="kept no moving average"):
        evaluate_workdir(trained, use_ema=True)


def test_evaluate_workdir_on_another_split_counts_that_split(trained, data_dir):
    result = evaluate_workdir(trained, "latest", split="test[:250]")
    assert result["split"] == "test[:250]" and result["count"] == 250
    # The rows of the confusion matrix count the true labels of exactly those 250 examples.
    labels = load_split("fashion_mnist", "test[:250]", data_dir=data_dir).labels
    rows = np.array(result["confusion"]).sum(axis=1)
    np.testing.assert_array_equal(rows, np.bincount(labels, minlength=10))
    folder = os.path.join(trained, "eval", "step_40_test_250")
    with open(os.path.join(folder, "metrics.json")) as f:
        assert json.load(f)["count"] == 250
    text = format_evaluation(result)
    assert "fashion_mnist test[:250]: 250 examples" in text
    assert f"top-1 accuracy {result['top_1_accuracy']:.4f}" in text


def test_class_names_follow_a_class_subset():
    from types import SimpleNamespace

    from cnnjax.config_base import get_base_config
    from cnnjax.inspect.evaluation_report import class_names

    config = get_base_config()
    config.data.classes = "9,0,6"
    run = SimpleNamespace(config=config, input=SimpleNamespace(num_classes=3))
    assert class_names(run) == ["Ankle boot", "T-shirt/top", "Shirt"]
    config.data.classes = ""
    run.input.num_classes = 10
    assert class_names(run)[4] == "Coat"
