"""Top-activating examples per unit (cnnjax/inspect/top_activations.py): equal to a brute-force
sort, however batched; a hand-built detector finds its planted pattern; exact receptive boxes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.errors import UserError
from cnnjax.inspect import activations as act
from cnnjax.inspect.top_activations import default_layers, top_activations

NUM_IMAGES = 37  # batches of 8 and 16 both end with a partial, padded batch


@pytest.fixture(scope="module")
def lenet():
    model = models.create("lenet5", num_classes=10, normalization="batch")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((NUM_IMAGES, 28, 28, 1)).astype(np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images[:1])

    # Random values in place of the initializers (faster to build), positive variances.
    def fill(path, leaf):
        values = rng.standard_normal(leaf.shape)
        values = 0.5 + np.abs(values) if path[-1].key == "var" else 0.5 * values
        return jnp.asarray(values, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    calls = act.trace_calls(model, variables, images[:1])
    layers = {la.name: la for la in act.activation_layers(calls, "relu")}
    chosen = [layers["ConvBlock_1"], layers["Dense_0/act"], "ConvBlock_0/Conv_0"]
    return model, variables, images, chosen


def _batches(images, size):
    return [images[i : i + size] for i in range(0, len(images), size)]


def _brute_force(values: np.ndarray, k: int):
    """[N, U] -> indices and values [U, k] by a stable sort of all examples at once."""
    order = np.argsort(-values, axis=0, kind="stable")[:k]
    return order.T, np.take_along_axis(values, order, axis=0).T


def test_top_activations_equal_a_brute_force_sort_however_batched(lenet):
    model, variables, images, chosen = lenet
    k = 5
    top = top_activations(model, variables, _batches(images, 8), chosen, k=k)
    assert list(top) == ["ConvBlock_1", "Dense_0/act", "ConvBlock_0/Conv_0"]
    every = act.capture(
        model,
        variables,
        images,
        filter=act.paths_filter([chosen[0].path, chosen[1].path, "ConvBlock_0/Conv_0"]),
    )
    post = act.post_activations(every, chosen[:2])
    outputs = {**post, "ConvBlock_0/Conv_0": np.asarray(every["ConvBlock_0/Conv_0"])}
    for name, output in outputs.items():
        flat = output.reshape(NUM_IMAGES, -1, output.shape[-1])  # [N, positions, U]
        indices, values = _brute_force(flat.max(axis=1), k)
        got = top[name]
        assert got.num_examples == NUM_IMAGES and got.indices.shape == (output.shape[-1], k)
        np.testing.assert_array_equal(got.indices, indices)
        np.testing.assert_allclose(got.values, values, rtol=1e-5, atol=1e-6)
        if output.ndim == 2:
            assert got.positions is None and got.boxes is None
            continue
        # Where each unit peaked: the argmax over positions of the same example.
        peaks = flat.argmax(axis=1)  # [N, U]
        expected = np.take_along_axis(peaks, indices.T, axis=0).T  # [U, k]
        spatial = output.shape[1:-1]
        np.testing.assert_array_equal(
            got.positions, np.stack(np.unravel_index(expected, spatial), axis=-1)
        )
    # LeNet's second conv block: field 14 x 14 at jump 2, the first unit centered at 4.5 (5x5
    # conv padded by 2, 2x2 pool, 5x5 conv): unit (i, j) sees rows 2i - 2 ... 2i + 11.
    conv = top["ConvBlock_1"]
    rows = conv.positions[..., 0]
    np.testing.assert_array_equal(conv.boxes[..., 0, 0], np.clip(2 * rows - 2, 0, 27))
    np.testing.assert_array_equal(conv.boxes[..., 0, 1], np.clip(2 * rows + 11, 0, 27))
    # The first conv: 5 x 5 fields centered on the unit's own pixel (padding 2).
    first = top["ConvBlock_0/Conv_0"]
    np.testing.assert_array_equal(first.boxes[..., 0], np.clip(first.positions - 2, 0, 27))
    np.testing.assert_array_equal(first.boxes[..., 1], np.clip(first.positions + 2, 0, 27))

    # Batched differently (and capped to fewer examples): the same as sorting those at once.
    again = top_activations(model, variables, _batches(images, 16), chosen, k=k)
    for name in top:
        np.testing.assert_array_equal(again[name].indices, top[name].indices)
        np.testing.assert_array_equal(again[name].values, top[name].values)
    capped = top_activations(
        model, variables, _batches(images, 16), chosen[1:2], k=3, max_examples=20
    )["Dense_0/act"]
    assert capped.num_examples == 20
    np.testing.assert_array_equal(capped.indices, _brute_force(post["Dense_0/act"][:20], 3)[0])


class Detector(nn.Module):
    """A 3x3 "plus" detector (channel 0) and its negation (channel 1), then a dense layer."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        x = nn.relu(nn.Conv(2, (3, 3), padding="VALID", use_bias=False)(x))
        return nn.Dense(2, use_bias=False)(x.max(axis=(1, 2)))


PLUS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.float32)


def test_a_planted_pattern_ranks_first_at_its_place():
    rng = np.random.default_rng(1)
    images = 0.05 * rng.standard_normal((30, 12, 12, 1)).astype(np.float32)
    planted = {4: (1.0, (2, 7)), 11: (0.8, (6, 1)), 23: (0.6, (9, 9))}  # amplitude, top left
    for index, (amplitude, (row, col)) in planted.items():
        images[index, row : row + 3, col : col + 3, 0] += amplitude * PLUS
    kernel = np.stack([PLUS, -PLUS], axis=-1)[:, :, None, :]  # [3, 3, 1, 2]
    variables = {
        "params": {"Conv_0": {"kernel": kernel}, "Dense_0": {"kernel": np.eye(2, dtype="f4")}}
    }
    top = top_activations(Detector(), variables, _batches(images, 7), ["Conv_0", "Dense_0"], k=3)
    detector = top["Conv_0"]
    assert detector.indices[0].tolist() == [4, 11, 23]  # by amplitude
    # The value at the planted place: 5 * amplitude, plus the noise under the plus.
    for rank, (index, (amplitude, (row, col))) in enumerate(planted.items()):
        noise = float((images[index, row : row + 3, col : col + 3, 0] * PLUS).sum())
        assert detector.values[0, rank] == pytest.approx(noise, abs=1e-5)
        assert noise == pytest.approx(5 * amplitude, abs=0.5)
        assert detector.positions[0, rank].tolist() == [row, col]  # VALID: output = top left
        assert detector.boxes[0, rank].tolist() == [[row, row + 2], [col, col + 2]]
    # The negated detector sees only noise: its best is far below the weakest planted plus.
    assert detector.values[1, 0] < 0.5 < 2.5 < detector.values[0, 2]
    # The dense layer on the max-pooled detector: the same ranking, no positions.
    dense = top["Dense_0"]
    assert dense.indices[0].tolist() == [4, 11, 23] and dense.positions is None
    np.testing.assert_allclose(dense.values[0], detector.values[0], rtol=1e-6)


def test_bad_requests():
    variables = {"params": {"Conv_0": {"kernel": np.zeros((3, 3, 1, 2), "f4")},
                            "Dense_0": {"kernel": np.eye(2, dtype="f4")}}}  # fmt: skip
    with pytest.raises(UserError, match="no examples"):
        top_activations(Detector(), variables, [], ["Conv_0"])
    with pytest.raises(UserError, match="at least 1"):
        top_activations(Detector(), variables, [np.zeros((2, 5, 5, 1))], ["Conv_0"], k=0)


def test_default_layers_of_a_net_whose_dense_layers_are_no_activation_layers():
    model = models.create("alexnet", num_classes=10)
    images = jax.ShapeDtypeStruct((1, 67, 67, 3), jnp.float32)
    # Shapes are all it takes: the calls are traced abstractly.
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    calls = act.trace_calls(model, variables, images)
    layers = act.activation_layers(calls, "relu")
    shapes = act.activation_shapes(model, variables, images, layers)
    chosen = default_layers(layers, calls, shapes)
    # The last conv block, then fc6 and fc7 by module path (not fc8, the classifier).
    assert [getattr(la, "name", la) for la in chosen] == ["ConvBlock_4", "Dense_0", "Dense_1"]
