"""Invariance evaluation: the image transforms (cnnjax/data/perturbations.py) against numpy, flat
curves for an exactly invariant model, and `cnnjax eval --shift/--rotate/...` on a run."""

import csv
import functools
import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax.data.normalization import Normalization
from cnnjax.data.perturbations import (
    permute_pixels,
    pixel_permutation,
    rotate_images,
    scale_images,
    shift_images,
)
from cnnjax.errors import UserError
from cnnjax.inspect.evaluation_report import compute_sums, load_for_evaluation
from cnnjax.inspect.invariance import (
    evaluate_invariance,
    format_invariance,
    invariance_curves,
    parse_values,
    perturbation,
)
from cnnjax.train.evaluation import eval_step, evaluation_sums, map_images, summarize_evaluation
from cnnjax.train.state import TrainState
from cnnjax.train.steps import StepOptions

NUM_CLASSES, SIZE = 3, 8
# Integer pixel values as the model's inputs: sums of them in float32 are exact in any order.
OPTIONS = StepOptions(
    num_classes=NUM_CLASSES, normalization=Normalization(scale=(1.0,), offset=(0.0,))
)


def _images(count: int = 12) -> np.ndarray:
    """uint8 [count, 8, 8, 1] with content only in the central 4x4: inside the frame under
    shifts of up to 2 pixels."""
    rng = np.random.default_rng(0)
    images = np.zeros((count, SIZE, SIZE, 1), np.uint8)
    images[:, 2:6, 2:6] = rng.integers(0, 256, (count, 4, 4, 1))
    return images


def test_identities_are_bitwise_and_dtype_and_shape_are_kept():
    images = np.random.default_rng(1).integers(0, 256, (3, 5, 6, 2), dtype=np.uint8)
    for result in (shift_images(images, 0, 0), rotate_images(images, 0), scale_images(images, 1)):
        assert result.dtype == np.uint8 and result is not images
        np.testing.assert_array_equal(result, images)
    assert rotate_images(images, 17).shape == scale_images(images, 1.3).shape == images.shape


@pytest.mark.parametrize("size", [6, 7])
def test_rotations_by_right_angles_are_np_rot90(size):
    images = np.random.default_rng(2).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    for turns in (1, 2, 3):
        expected = np.rot90(images, turns, axes=(1, 2))  # counter-clockwise as displayed
        np.testing.assert_array_equal(rotate_images(images, 90 * turns), expected)


def test_shift_moves_content_and_fills_zeros():
    image = np.arange(1, 13, dtype=np.uint8).reshape(1, 3, 4, 1)
    moved = shift_images(image, 1, -2)[0, :, :, 0]  # one down, two left
    np.testing.assert_array_equal(moved, [[0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0]])
    assert not shift_images(image, 0, 4).any()  # everything left the frame
    clips = np.random.default_rng(3).integers(0, 256, (2, 3, 5, 5, 1), dtype=np.uint8)
    frames = [shift_images(clips[:, t], -1, 2) for t in range(3)]
    np.testing.assert_array_equal(shift_images(clips, -1, 2), np.stack(frames, axis=1))


def test_scale_samples_about_the_centre():
    image = np.arange(25, dtype=np.uint8).reshape(1, 5, 5, 1) * 10
    # Zoom out by 2: output pixel p samples input 2 + 2 (p - 2): p = 1, 2, 3 -> 0, 2, 4.
    expected = np.zeros((5, 5), np.uint8)
    expected[1:4, 1:4] = image[0, ::2, ::2, 0]
    np.testing.assert_array_equal(scale_images(image, 0.5)[0, :, :, 0], expected)
    # Zoom in by 2: samples at 1, 1.5, 2, 2.5, 3 each way (whole numbers here: no rounding).
    grid = np.array([1, 1.5, 2, 2.5, 3])
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    expected = 10 * (5 * rows + cols)  # the image is 10 * (5 r + c): bilinear is exact
    np.testing.assert_array_equal(scale_images(image, 2.0)[0, :, :, 0], expected)


def test_permute_pixels_is_one_fixed_invertible_permutation():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (3, 4, 5, 2), dtype=np.uint8)
    images[..., 1] = images[..., 0]  # equal channels stay equal: one permutation for both
    permuted = permute_pixels(images, 7)
    assert not np.array_equal(permuted, images)
    np.testing.assert_array_equal(permuted[..., 0], permuted[..., 1])
    np.testing.assert_array_equal(  # the same values, moved
        np.sort(permuted.reshape(3, -1), axis=1), np.sort(images.reshape(3, -1), axis=1)
    )
    np.testing.assert_array_equal(permuted, permute_pixels(images, 7))  # same seed, same
    np.testing.assert_array_equal(permuted[1:], permute_pixels(images[1:], 7))  # per image
    assert not np.array_equal(permuted, permute_pixels(images, 8))
    np.testing.assert_array_equal(permute_pixels(permuted, 7, inverse=True), images)
    order = pixel_permutation(4, 5, 7)
    np.testing.assert_array_equal(permuted[0, :, :, 0].ravel(), images[0, :, :, 0].ravel()[order])


def test_sequences_shift_along_their_steps():
    sequences = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)  # [B, L, F]
    moved = perturbation("shift", 2, spatial_dims=1, direction="right")(sequences)
    expected = np.zeros_like(sequences)
    expected[:, 2:] = sequences[:, :3]
    np.testing.assert_array_equal(moved, expected)


class _SumPool(nn.Module):
    """Logits from the sum of all input values: exactly invariant to moving the content."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        return nn.Dense(NUM_CLASSES)(x.sum(axis=(1, 2)) / 1000.0)


class _Flat(nn.Module):
    """Logits from the flattened image: each position has its own weights."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1) / 1000.0)


def _state(module: nn.Module) -> TrainState:
    params = module.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1)), train=False)["params"]
    return TrainState.create(
        apply_fn=module.apply,
        params=params,
        tx=optax.sgd(0.1),
        batch_stats={},
        key=jax.random.key_data(jax.random.key(0)),
    )


STEP = jax.jit(functools.partial(eval_step, options=OPTIONS))


def _evaluator(state, images: np.ndarray, labels: np.ndarray):
    """`evaluate(transform)` over `images` in batches of 5 (the last padded)."""

    def batches(rows=None):
        for start in range(0, len(images), 5):
            part, real = images[start : start + 5], len(labels[start : start + 5])
            pad = 5 - real
            yield {
                "image": np.concatenate([part, np.zeros((pad, *part.shape[1:]), np.uint8)]),
                "label": np.concatenate([labels[start : start + 5], np.zeros(pad, np.int32)]),
                "mask": (np.arange(5) < real).astype(np.float32),
            }

    def evaluate(transform):
        return evaluation_sums(
            STEP, state, map_images(batches, transform) if transform else batches
        )

    return evaluate


def _predictions(state, images: np.ndarray) -> np.ndarray:
    logits = state.apply_fn({"params": state.params}, images.astype(np.float32), train=False)
    return np.asarray(logits.argmax(-1), np.int32)


def test_an_invariant_model_has_exactly_flat_curves():
    images, state = _images(), _state(_SumPool())
    labels = np.random.default_rng(5).integers(0, NUM_CLASSES, len(images)).astype(np.int32)
    curves = invariance_curves(
        _evaluator(state, images, labels),
        shifts=(0, 1, 2),
        rotations=(0, 90, 180),
        permutation_seeds=(0, 1),
    )
    baseline = curves["baseline"]
    assert baseline["n"] == 12 and 0 < baseline["accuracy"] < 1
    for kind in ("shift", "rotate", "permute_pixels"):
        for row in curves[kind]:
            assert (row["accuracy"], row["loss"], row["n"]) == (
                baseline["accuracy"],
                baseline["loss"],
                12,
            ), (kind, row["value"])
            for direction in row.get("directions", {}).values():
                assert direction == baseline
    assert list(curves["shift"][1]["directions"]) == ["right", "left", "down", "up"]


def test_a_position_dependent_model_loses_accuracy_as_numpy_says():
    images, state = _images(), _state(_Flat())
    labels = _predictions(state, images)  # accuracy 1 on the images as they are
    curves = invariance_curves(_evaluator(state, images, labels), shifts=(0, 2))
    assert curves["baseline"]["accuracy"] == curves["shift"][0]["accuracy"] == 1.0
    shifted = curves["shift"][1]
    # Each direction against the model's numpy-shifted predictions (np.roll: the content stays
    # inside the frame, so rolling is shifting).
    rolls = {"right": (2, 2), "left": (-2, 2), "down": (2, 1), "up": (-2, 1)}
    expected = {
        name: float((_predictions(state, np.roll(images, step, axis=axis)) == labels).mean())
        for name, (step, axis) in rolls.items()
    }
    assert {name: d["accuracy"] for name, d in shifted["directions"].items()} == expected
    assert shifted["accuracy"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    assert shifted["accuracy"] < 1.0 and shifted["loss"] > curves["baseline"]["loss"]


@pytest.fixture(scope="module")
def trained(smoke_run):
    """The session's smoke run, restored for its first 300 test examples (one batch)."""
    return load_for_evaluation(smoke_run, "latest", split="test[:300]")


def test_a_run_writes_curves_whose_identities_are_cnnjax_eval(trained):
    usual = summarize_evaluation(compute_sums(trained))  # what `cnnjax eval` reports
    result = evaluate_invariance(
        trained,
        shifts=(0, 1),
        rotations=(0, 15),
        scales=(1, 0.9),
        permutation_seeds=(0,),
        checkpoint="latest",
    )
    # Nine evaluations of one image shape: one compilation.
    assert trained.compiled_steps.evaluate._cache_size() == 1
    for kind in ("shift", "rotate", "scale"):
        identity = result[kind][0]
        assert identity["accuracy"] == usual["top_1_accuracy"], kind
        assert identity["loss"] == usual["loss"] and identity["n"] == 300, kind
        assert result[kind][1]["loss"] != usual["loss"], kind  # LeNet is not invariant
    folder = os.path.join(trained.workdir, "eval", "invariance_step_40_test_300")
    for kind in ("shift", "rotate", "scale", "permute_pixels"):
        assert os.path.getsize(os.path.join(folder, f"{kind}.png")) > 0
        with open(os.path.join(folder, f"{kind}.csv")) as f:
            rows = list(csv.DictReader(f))
        assert [float(row["value"]) for row in rows] == [r["value"] for r in result[kind]]
        assert [float(row["accuracy"]) for row in rows] == [r["accuracy"] for r in result[kind]]
        assert [float(row["loss"]) for row in rows] == [r["loss"] for r in result[kind]]
        assert [int(row["n"]) for row in rows] == [300] * len(rows)
    with open(os.path.join(folder, "shift.csv")) as f:
        shift_row = list(csv.DictReader(f))[1]
    assert float(shift_row["accuracy_up"]) == result["shift"][1]["directions"]["up"]["accuracy"]
    with open(os.path.join(folder, "invariance.json")) as f:
        saved = json.load(f)
    assert saved["baseline"] == result["baseline"] and saved["shift"] == result["shift"]
    text = format_invariance(result)
    assert f"{result['rotate'][1]['accuracy']:9.4f}" in text and "permute_pixels" in text


def test_bad_requests_are_one_line(trained):
    with pytest.raises(UserError, match=r"--shift=-1: give pixels >= 0"):
        parse_values(shift=["-1"])
    with pytest.raises(UserError, match=r"--rotate=ten: give numbers"):
        parse_values(rotate=["ten"])
    with pytest.raises(UserError, match=r"--scale=0.0: give factors > 0"):
        parse_values(scale=["0"])
    assert parse_values(shift=["0", "2"], permute_pixels=["5"]) == {
        "shifts": [0, 2],
        "rotations": [],
        "scales": [],
        "permutation_seeds": [5],
    }
    config = trained.config.copy_and_resolve_references()
    config.data.task = "segmentation"
    dense = types.SimpleNamespace(config=config, input_shape=(64, 64, 1))
    with pytest.raises(UserError, match="labels would need the same transform"):
        evaluate_invariance(dense, shifts=(1,))
    config.data.task = "rows"
    sequences = types.SimpleNamespace(config=config, input_shape=(28, 28))
    with pytest.raises(UserError, match=r"--rotate and --scale need 2-D images .* 28x28"):
        evaluate_invariance(sequences, rotations=(10,))
