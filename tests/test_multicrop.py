"""Multi-crop testing (cnnjax/inspect/multicrop.py): the views, the averaged softmax against numpy,
the streaming views against the evaluation transform, and `cnnjax eval --crops` on a run."""

import dataclasses
import functools
import io
import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import PIL.Image
import pytest

from cnnjax.data.image_decoding import eval_transform
from cnnjax.data.image_sources import ImageFolderSource
from cnnjax.data.imagenet import eval_image_batches
from cnnjax.data.normalization import Normalization
from cnnjax.errors import UserError
from cnnjax.inspect.evaluation_report import compute_sums, load_for_evaluation
from cnnjax.inspect.multicrop import (
    encoded_views,
    evaluate_multicrop,
    format_multicrop,
    padded_views,
    streaming_view_batches,
)
from cnnjax.train.evaluation import (
    eval_step,
    multi_view_eval_step,
    summarize_evaluation,
    view_log_probs,
)
from cnnjax.train.state import TrainState
from cnnjax.train.steps import StepOptions

NUM_CLASSES = 4
OPTIONS = StepOptions(num_classes=NUM_CLASSES, normalization=Normalization.unit_range(1))


class _Flat(nn.Module):
    """Logits = flattened image @ kernel + bias: every pixel position has its own weights."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


def _state(pixels: int = 16) -> TrainState:
    rng = np.random.default_rng(0)
    params = {
        "Dense_0": {
            "kernel": jnp.asarray(3.0 * rng.normal(size=(pixels, NUM_CLASSES)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=NUM_CLASSES), jnp.float32),
        }
    }
    return TrainState.create(
        apply_fn=_Flat().apply,
        params=params,
        tx=optax.sgd(0.1),
        batch_stats={},
        key=jax.random.key_data(jax.random.key(0)),
    )


def _numpy_probabilities(state, views: np.ndarray) -> np.ndarray:
    """The softmax of the model over each of the [B, V, H, W, 1] views, by numpy in float64."""
    params = state.params["Dense_0"]
    scale = np.float64(OPTIONS.normalization.scale[0])
    flat = views.reshape(*views.shape[:2], -1).astype(np.float64) * scale
    logits = flat @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"])
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)  # [B, V, K]


def _hand_cut(image: np.ndarray, padding: int) -> list[np.ndarray]:
    """The 10 views of one [H, W, C] image, cut by hand: centre, 4 corners, then their mirrors."""
    p, (h, w) = padding, image.shape[:2]
    padded = np.zeros((h + 2 * p, w + 2 * p, image.shape[2]), image.dtype)
    padded[p : p + h, p : p + w] = image
    corners = [(p, p), (0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p)]
    views = [padded[y : y + h, x : x + w] for y, x in corners]
    return views + [view[:, ::-1] for view in views]


def test_ten_views_average_the_softmax_of_the_hand_cut_crops():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 4, 4, 1), dtype=np.uint8)
    views = padded_views(images, padding=1, crops=10)  # [2, 10, 4, 4, 1]
    expected_views = np.stack([_hand_cut(image, 1) for image in images])
    np.testing.assert_array_equal(views, expected_views)
    assert not np.array_equal(views[:, 1], views[:, 0])  # the corners really moved
    state = _state()
    probabilities = _numpy_probabilities(state, expected_views).mean(1)  # [2, K]
    log_probs = jax.jit(functools.partial(view_log_probs, options=OPTIONS))(state, views)
    np.testing.assert_allclose(np.exp(log_probs), probabilities, rtol=2e-6, atol=1e-7)
    # The sums: loss is the NLL of the averaged probability, top-1 its argmax.
    labels = np.array([0, 3], np.int32)
    batch = {"image": views, "label": labels, "mask": np.ones(2, np.float32)}
    sums = jax.jit(functools.partial(multi_view_eval_step, options=OPTIONS))(state, batch)
    expected_loss = -np.log(probabilities[np.arange(2), labels]).sum()
    assert float(sums["loss_sum"]) == pytest.approx(expected_loss, rel=1e-5)
    assert int(sums["top_1_correct"]) == int((probabilities.argmax(1) == labels).sum())
    assert int(sums["count"]) == 2


def test_five_and_two_views_are_the_crops_and_the_mirrored_centre():
    images = np.arange(2 * 3 * 3 * 2, dtype=np.uint8).reshape(2, 3, 3, 2)
    hand = np.stack([_hand_cut(image, 2) for image in images])
    np.testing.assert_array_equal(padded_views(images, 2, 5), hand[:, :5])
    np.testing.assert_array_equal(padded_views(images, 2, 2), hand[:, [0, 5]])
    np.testing.assert_array_equal(padded_views(images, 2, 1)[:, 0], images)  # centre = image


def _evaluation_batch(seed: int) -> dict:
    """6 random 4x4 uint8 images with labels, the last row padding (mask 0)."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, 6).astype(np.int32),
        "mask": np.array([1, 1, 1, 1, 1, 0], np.float32),
    }


def test_one_view_gives_the_sums_of_eval_step_bitwise():
    batch = _evaluation_batch(2)
    images = batch["image"]
    state = _state()
    plain = jax.device_get(jax.jit(functools.partial(eval_step, options=OPTIONS))(state, batch))
    one_view = {**batch, "image": images[:, None]}
    step = jax.jit(functools.partial(multi_view_eval_step, options=OPTIONS))
    viewed = jax.device_get(step(state, one_view))
    assert plain.keys() == viewed.keys()
    for key in plain:
        np.testing.assert_array_equal(plain[key], viewed[key], err_msg=key)


def test_ten_crops_of_a_constant_image_equal_one_crop():
    images = np.full((2, 4, 4, 1), 77, np.uint8)
    state = _state()
    views = padded_views(images, padding=0, crops=10)
    log_probs = jax.jit(functools.partial(view_log_probs, options=OPTIONS))(state, views)
    one = jax.jit(functools.partial(view_log_probs, options=OPTIONS))(state, views[:, :1])
    # One view's "log-probabilities" are its logits: compare the probabilities.
    np.testing.assert_allclose(np.exp(log_probs), jax.nn.softmax(one), rtol=1e-6)
    assert (np.asarray(log_probs).argmax(1) == np.asarray(one).argmax(1)).all()
    # Streaming: every view of a constant image is the evaluation crop, bit for bit.
    data = _png(np.full((30, 40, 3), (10, 200, 90), np.uint8))
    views = encoded_views(data, 10, size=16, resize=20)
    centre = eval_transform(data, size=16, resize=20)
    assert views.shape == (10, 16, 16, 3)
    for view in views:
        np.testing.assert_array_equal(view, centre)


def _png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_streaming_views_are_the_five_crops_of_the_resized_image(fmt):
    rng = np.random.default_rng(3)
    data = _png(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), fmt)  # landscape: 40 wide
    views = encoded_views(data, 10, size=16, resize=20, draft=False)
    # The shorter side (30) to 20, the longer truncated: 26 x 20, as torchvision's Resize.
    resized = np.asarray(
        PIL.Image.open(io.BytesIO(data)).convert("RGB").resize((26, 20), PIL.Image.BILINEAR)
    )
    # Centre (rounded as torchvision's CenterCrop), then FiveCrop's corners; then mirrors.
    corners = [(2, 5), (0, 0), (0, 10), (4, 0), (4, 10)]
    crops = [resized[y : y + 16, x : x + 16] for y, x in corners]
    np.testing.assert_array_equal(views, np.stack(crops + [crop[:, ::-1] for crop in crops]))
    np.testing.assert_array_equal(views[0], eval_transform(data, 16, 20, draft=False))
    # With the reduced JPEG decode (a quarter-scale decode for the large image), still the
    # evaluation crop to the byte.
    large = _png(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8), "JPEG")
    np.testing.assert_array_equal(
        encoded_views(large, 10, size=32, resize=40)[0], eval_transform(large, 32, 40)
    )
    assert not np.array_equal(
        encoded_views(large, 1, size=32, resize=40, draft=False)[0], eval_transform(large, 32, 40)
    )
    np.testing.assert_array_equal(
        encoded_views(data, 1, size=16, resize=20)[0], eval_transform(data, 16, 20)
    )


def test_streaming_view_batches_keep_the_evaluation_batches(tmp_path):
    rng = np.random.default_rng(4)
    for label in ("cat", "dog"):
        os.makedirs(tmp_path / label)
        for index in range(3 if label == "cat" else 2):
            pixels = rng.integers(0, 256, (20 + 3 * index, 24, 3), dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(tmp_path / label / f"{index}.png")
    source = ImageFolderSource(str(tmp_path))
    data = types.SimpleNamespace(
        eval_source=source,
        eval_batch_size=2,
        image_size=12,
        eval_resize=14,
        workers=2,
        jpeg_draft=True,
        interpolation="bilinear",
    )
    viewed = list(streaming_view_batches(data, 5)())
    plain = list(eval_image_batches(source, batch_size=2, image_size=12, resize=14, workers=2))
    assert len(viewed) == len(plain) == 3  # 5 examples in batches of 2: the last is padded
    for views, batch in zip(viewed, plain, strict=True):
        assert views["image"].shape == (2, 5, 12, 12, 3)
        np.testing.assert_array_equal(views["image"][:, 0], batch["image"])
        np.testing.assert_array_equal(views["label"], batch["label"])
        np.testing.assert_array_equal(views["mask"], batch["mask"])
    assert viewed[-1]["mask"].tolist() == [1.0, 0.0]
    assert not viewed[-1]["image"][1].any()  # the padding row stays zeros


def test_eval_mirrored_is_the_two_view_evaluation_of_image_and_mirror():
    """train.eval_mirrored: the evaluation step itself averages each image with its mirror,
    the sums of `multi_view_eval_step` on the hand-stacked views, bitwise."""
    batch = _evaluation_batch(3)
    images = batch["image"]
    state = _state()
    mirrored_options = dataclasses.replace(OPTIONS, eval_mirrored=True)
    mirrored = jax.device_get(
        jax.jit(functools.partial(eval_step, options=mirrored_options))(state, batch)
    )
    views = {**batch, "image": np.stack([images, images[:, :, ::-1]], axis=1)}
    step = jax.jit(functools.partial(multi_view_eval_step, options=OPTIONS))
    expected = jax.device_get(step(state, views))
    for key in expected:
        np.testing.assert_array_equal(mirrored[key], expected[key], err_msg=key)
    plain = jax.device_get(jax.jit(functools.partial(eval_step, options=OPTIONS))(state, batch))
    assert plain["loss_sum"] != mirrored["loss_sum"]  # the flat model is not mirror-symmetric


@pytest.fixture(scope="module")
def trained(smoke_run):
    """The session's smoke run (LeNet-5, trained with flips and no crop padding), restored for
    its first 300 test examples (one batch: a third of the work)."""
    return load_for_evaluation(smoke_run, "latest", split="test[:300]")


def test_one_crop_is_the_usual_evaluation_exactly(trained):
    usual = summarize_evaluation(compute_sums(trained))  # what `cnnjax eval` reports
    one = evaluate_multicrop(trained, 1, checkpoint="latest")
    assert one["one_crop"]["count"] == 300
    for name in ("count", "top_1_accuracy", "top_5_accuracy", "loss", "ece", "mce"):
        assert one["one_crop"][name] == one["multi_crop"][name] == usual[name], name
    assert one["paths"]["metrics.json"].endswith("step_40_test_300_1crop/metrics.json")


def test_ten_crops_at_the_runs_padding_and_at_another(trained):
    own = evaluate_multicrop(trained, 10, checkpoint="latest")  # padding 0: the run's
    assert own["crop_padding"] == 0 and own["mirrored"] and own["trained_with_flips"]
    assert own["views"][0] == "centre" and len(own["views"]) == 10
    assert "coincide" in own["notes"][0] and "coincide" in format_multicrop(own)
    assert own["paths"]["metrics.json"].endswith("step_40_test_300_10crop/metrics.json")
    padded = evaluate_multicrop(trained, 10, crop_padding=2, checkpoint="latest")
    assert trained._multi_view_steps[False]._cache_size() == 1  # one view shape, one compilation
    assert padded["notes"] == [] and padded["multi_crop"]["count"] == 300
    assert padded["one_crop"] == own["one_crop"]
    # Other views, another evaluation (the run trained without crops: it differs).
    assert padded["multi_crop"]["loss"] != own["multi_crop"]["loss"]
    path = padded["paths"]["metrics.json"]
    assert path.endswith(os.path.join("eval", "step_40_test_300_10crop_pad2", "metrics.json"))
    with open(path) as f:
        assert json.load(f)["multi_crop"] == padded["multi_crop"]
    text = format_multicrop(padded)
    assert f"{padded['multi_crop']['top_1_accuracy']:8.4f}" in text and "10 crops" in text


def test_bad_requests_are_one_line(trained):
    with pytest.raises(UserError, match=r"--crops=3: choose 1, 2, 5 or 10"):
        evaluate_multicrop(trained, 3)
    with pytest.raises(UserError, match=r"--crop_padding=-1: give 0 or more"):
        evaluate_multicrop(trained, 10, crop_padding=-1)
    config = trained.config.copy_and_resolve_references()
    config.data.task = "segmentation"
    dense = types.SimpleNamespace(config=config, input_shape=(64, 64, 1), input=trained.input)
    with pytest.raises(UserError, match="multi-crop testing is for classification"):
        evaluate_multicrop(dense, 10)
    config.data.task = "rows"
    rows = types.SimpleNamespace(config=config, input_shape=(28, 28), input=trained.input)
    with pytest.raises(UserError, match="needs images"):
        evaluate_multicrop(rows, 10)
