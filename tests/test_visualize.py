"""cnnjax visualize: captured layer outputs, activation statistics, saliency, filters, figures."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.inspect import activations as act
from cnnjax.models.resnet import CifarResNet

PNG_HEADER = b"\x89PNG\r\n\x1a\n"
LENET_LAYERS = ["ConvBlock_0", "ConvBlock_1", "Dense_0/act", "Dense_1/act"]


def _lenet(normalization: str):
    model = models.create("lenet5", num_classes=10, normalization=normalization)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((3, 28, 28, 1)), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)

    # Random values in place of the initializers (which take long to compile): running means,
    # scales and shifts far from their 0 / 1 starts so that the normalization is not the
    # identity, and positive running variances.
    def fill(path, leaf):
        values = rng.standard_normal(leaf.shape)
        values = 0.5 + np.abs(values) if path[-1].key == "var" else 0.5 * values
        return jnp.asarray(values, leaf.dtype)

    return model, jax.tree_util.tree_map_with_path(fill, shapes), images


@pytest.mark.parametrize("normalization", ["none", "batch"])
def test_captured_first_block_equals_hand_convolution(normalization):
    model, variables, images = _lenet(normalization)
    calls = act.trace_calls(model, variables, images)
    layers = act.activation_layers(calls, "relu")
    assert [la.name for la in layers] == LENET_LAYERS
    captured = act.capture_activations(model, variables, images, layers)["ConvBlock_0"]

    params = variables["params"]["ConvBlock_0"]
    padded = jnp.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))  # LeNet pads 28x28 to 32x32
    y = jax.lax.conv_general_dilated(
        padded,
        params["Conv_0"]["kernel"],
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    if normalization == "none":
        y = y + params["Conv_0"]["bias"]
    else:
        norm = params["Normalization_0"]["BatchNorm_0"]
        stats = variables["batch_stats"]["ConvBlock_0"]["Normalization_0"]["BatchNorm_0"]
        y = (y - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * norm["scale"] + norm["bias"]
    expected = np.maximum(np.asarray(y), 0.0)
    assert captured.shape == (3, 28, 28, 6)
    np.testing.assert_allclose(captured, expected, rtol=1e-5, atol=1e-5)

    raw = act.capture(model, variables, images, filter=act.paths_filter(["ConvBlock_1/Conv_0"]))
    assert list(raw) == ["ConvBlock_1/Conv_0"] and raw["ConvBlock_1/Conv_0"].shape == (
        3,
        10,
        10,
        16,
    )


def test_residual_blocks_capture_the_activation_after_the_sum():
    model = CifarResNet(depth=8, num_classes=10)
    images = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    # Shapes are all it takes: the calls are traced abstractly.
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(1), x, train=False), images)
    calls = act.trace_calls(model, variables, images)
    names = [la.name for la in act.activation_layers(calls, "relu")]
    # Each block's second conv (identity activation, before the sum) is no activation layer.
    assert names == ["ConvBlock_0"] + [
        name for b in range(3) for name in (f"BasicBlock_{b}/ConvBlock_0", f"BasicBlock_{b}")
    ]
    # Call order finds the stem; sorted parameter names (as checkpoints restore) would not.
    assert act.first_conv_path(calls) == "ConvBlock_0/Conv_0"
    restored = dict(sorted(variables["params"].items()))
    assert act._first_kernel_path(restored) == "BasicBlock_0/ConvBlock_0/Conv_0"


def test_statistics_of_constructed_activations():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((4, 5, 5, 8)), 0.0)
    x[..., 2] = 0.0  # two dead channels: zero for every image and position
    x[..., 5] = 0.0
    stats = act.activation_statistics({"layer": x})["layer"]
    assert stats["dead_fraction"] == 2 / 8
    assert stats["zero_fraction"] == np.mean(x == 0)
    assert stats["mean"] == pytest.approx(x.mean(), abs=1e-12)
    assert stats["std"] == pytest.approx(x.std(), abs=1e-12)
    assert stats["saturated_fraction"] is None
    assert sum(stats["histogram"]["counts"]) == np.count_nonzero(x)
    units = x.reshape(-1, 8)[:, [0, 1, 3, 4, 6, 7]]  # the dead channels have no correlation
    off = ~np.eye(6, dtype=bool)
    expected = np.abs(np.corrcoef(units, rowvar=False)[off]).mean()
    assert stats["mean_abs_correlation"] == pytest.approx(expected, abs=1e-12)

    a, b = rng.standard_normal(1000), rng.standard_normal(1000)
    same = act.activation_statistics({"same": np.stack([a, a], 1)})["same"]
    assert same["mean_abs_correlation"] == pytest.approx(1.0, abs=1e-12)
    mixed = np.stack([a, b, a + 0.5 * b, np.zeros(1000)], 1)
    corr = np.corrcoef(mixed[:, :3], rowvar=False)
    expected = np.abs(corr[~np.eye(3, dtype=bool)]).mean()
    got = act.activation_statistics({"m": mixed})["m"]["mean_abs_correlation"]
    assert got == pytest.approx(expected, abs=1e-12)

    tanh = np.tanh(np.array([[0.0, 0.5, 3.0, -3.0]]))  # |tanh(3)| = 0.995: saturated
    assert (
        act.activation_statistics({"t": tanh}, activation="tanh")["t"]["saturated_fraction"] == 0.5
    )
    sigmoid = np.array([[0.005, 0.5, 0.995, 0.2]])
    got = act.activation_statistics({"s": sigmoid}, activation="sigmoid")["s"]
    assert got["saturated_fraction"] == 0.5


class Linear(nn.Module):
    """logits = x . W, per example ([B, K]) or, with `per_pixel`, per pixel ([B, H, W, K])."""

    num_classes: int = 3
    per_pixel: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        inputs = x.shape[-1] if self.per_pixel else x[0].size
        w = self.param("w", nn.initializers.normal(1.0), (inputs, self.num_classes))
        return x @ w if self.per_pixel else x.reshape(len(x), -1) @ w


def test_saliency_of_a_linear_model_is_its_weights():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((2, 4, 5, 3)), jnp.float32)
    w = rng.standard_normal((60, 3)).astype(np.float32)
    model, variables = Linear(), {"params": {"w": w}}
    classes = np.array([2, 0])
    got = np.asarray(act.saliency(model, variables, images, classes))
    expected = np.abs(w[:, classes].T).reshape(2, 4, 5, 3).max(axis=-1)
    np.testing.assert_allclose(got, expected, atol=1e-6)

    # Per-pixel logits: only the center pixel's input moves the center pixel's score.
    w = rng.standard_normal((3, 3)).astype(np.float32)
    model, variables = Linear(per_pixel=True), {"params": {"w": w}}
    got = np.asarray(act.saliency(model, variables, images, classes))
    expected = np.zeros((2, 4, 5))
    expected[:, 2, 2] = np.abs(w[:, classes]).max(axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_first_layer_filters_of_lenet():
    model, variables, images = _lenet("batch")
    params = variables["params"]
    filters = act.first_layer_filters(params)
    assert filters.shape == (6, 5, 5, 1)
    kernel = np.asarray(params["ConvBlock_0"]["Conv_0"]["kernel"])  # [5, 5, 1, 6]
    np.testing.assert_array_equal(filters, kernel.transpose(3, 0, 1, 2))
    calls = act.trace_calls(model, variables, images)
    assert act.first_conv_path(calls) == "ConvBlock_0/Conv_0"


def _assert_png(path: str) -> None:
    with open(path, "rb") as f:
        assert f.read(8) == PNG_HEADER, path
    assert os.path.getsize(path) > 2000, path


def test_visualize_workdir_writes_every_figure(smoke_run, data_dir, monkeypatch):
    from cnnjax.inspect.visualize import format_visualization, visualize_workdir

    monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
    paths = visualize_workdir(smoke_run, "latest", num_images=4)
    figures = ["filters", "filters_init", "activation_stats", "saliency"]
    figures += ["feature_maps_ConvBlock_0", "feature_maps_ConvBlock_1"]
    # The deepest conv activation layer and the hidden dense layers.
    figures += [f"top_activations_{n}" for n in ("ConvBlock_1", "Dense_0-act", "Dense_1-act")]
    assert set(figures) <= set(paths)
    out_dir = os.path.join(smoke_run, "visualize", "step_40")  # smoke: 2 epochs of 20 steps
    for name in figures:
        assert os.path.dirname(paths[name]) == out_dir
        _assert_png(paths[name])
    with open(paths["activation_stats_json"]) as f:
        record = json.load(f)
    assert list(record["layers"]) == LENET_LAYERS
    assert record["step"] == 40 and record["num_images"] == 256
    assert record["layers"]["ConvBlock_1"]["shape"] == [10, 10, 16]
    assert any(name.startswith("events") for name in os.listdir(paths["tensorboard"]))
    listing = format_visualization(paths)
    assert all(path in listing for path in paths.values())
    with open(paths["top_activations_json"]) as f:
        top = json.load(f)
    assert top["step"] == 40 and top["k"] == 9
    assert list(top["layers"]) == ["ConvBlock_1", "Dense_0/act", "Dense_1/act"]
    _check_top_activations(smoke_run, top["layers"])


def _check_top_activations(workdir: str, layers: dict) -> None:
    """The JSON's top 9 per unit equal a stable sort of every test image's values, computed
    here in one batch (visualize scanned batches of 300, the last padded)."""
    from cnnjax.inspect.visualize import _occlusion_fill
    from cnnjax.train.trained_run import load_trained_run

    run = load_trained_run(workdir, "latest")
    batches = list(run.input.eval_batches())
    images = np.concatenate([b["image"][: int(b["mask"].sum())] for b in batches])
    assert len(images) == 1000  # the whole smoke test split was scanned
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    chosen = [la for la in _lenet_layers(run, variables) if la.name in layers]
    values = act.capture_activations(
        run.model, variables, np.asarray(run.input.normalization(images)), chosen
    )
    for name, output in values.items():
        flat = output.reshape(1000, -1, output.shape[-1])  # [N, positions, units]
        order = np.argsort(-flat.max(axis=1), axis=0, kind="stable")[:9].T  # [units, 9]
        saved = layers[name]
        assert saved["num_examples"] == 1000 and len(saved["indices"]) == output.shape[-1]
        np.testing.assert_array_equal(saved["indices"], order)
        best = np.take_along_axis(flat.max(axis=1), order.T, axis=0).T
        np.testing.assert_allclose(saved["values"], best, rtol=1e-5, atol=1e-5)
        assert ("boxes" in saved) == (output.ndim == 4)
    # ConvBlock_1's units see rows and columns 2i - 2 ... 2i + 11 of the 28x28 input at (i, j).
    positions, boxes = (np.asarray(layers["ConvBlock_1"][key]) for key in ("positions", "boxes"))
    np.testing.assert_array_equal(boxes[..., 0], np.clip(2 * positions - 2, 0, 27))
    np.testing.assert_array_equal(boxes[..., 1], np.clip(2 * positions + 11, 0, 27))
    # Occlusion fills with the training mean: 0 in the run's standardized inputs.
    assert np.abs(_occlusion_fill(run)).max() < 1e-6


def _lenet_layers(run, variables) -> list:
    blank = np.zeros((1, *run.input_shape), np.float32)
    return act.activation_layers(act.trace_calls(run.model, variables, blank), "relu")


def test_chosen_layers_and_images_of_the_best_checkpoint(smoke_run, capsys):
    from cnnjax.inspect.visualize import visualize_workdir

    # A module path, and a layer without spatial maps; as strings, as the command line gives them.
    paths = visualize_workdir(
        smoke_run,
        layers="ConvBlock_0/Conv_0,Dense_0/act",
        image_indices="3,5",
        units="0,5",
        top_images=3,
    )
    out_dir = os.path.join(smoke_run, "visualize")  # the best checkpoint: no step_N folder
    maps = os.path.join(out_dir, "feature_maps_ConvBlock_0-Conv_0.png")
    assert paths["feature_maps_ConvBlock_0-Conv_0"] == maps
    _assert_png(maps)
    assert not [name for name in paths if name.startswith("feature_maps_Dense")]
    assert not os.path.exists(os.path.join(out_dir, "feature_maps_Dense_0-act.png"))
    assert "visualize: Dense_0/act has no spatial maps" in capsys.readouterr().out
    assert paths["saliency"] == os.path.join(out_dir, "saliency.png")
    _assert_png(paths["saliency"])
    # --layers chooses the top activations too (--units only the rows drawn: JSON has all).
    for name in ("top_activations_ConvBlock_0-Conv_0", "top_activations_Dense_0-act"):
        _assert_png(paths[name])
    with open(paths["top_activations_json"]) as f:
        top = json.load(f)["layers"]
    assert list(top) == ["ConvBlock_0/Conv_0", "Dense_0/act"]
    assert np.shape(top["ConvBlock_0/Conv_0"]["indices"]) == (6, 3)
    assert np.shape(top["Dense_0/act"]["values"]) == (120, 3)
    # The first conv's 5x5 fields (padding 2): centered on the unit's own pixel.
    positions, boxes = (np.asarray(top["ConvBlock_0/Conv_0"][k]) for k in ("positions", "boxes"))
    np.testing.assert_array_equal(boxes[..., 0], np.clip(positions - 2, 0, 27))


def test_loaded_run_keeps_the_parameters_training_started_from(smoke_run):
    import optax

    from cnnjax.train.state import create_train_state
    from cnnjax.train.trained_run import load_trained_run

    trained = load_trained_run(smoke_run, "latest")
    initial = create_train_state(
        trained.model, optax.identity(), input_shape=trained.input_shape, seed=trained.config.seed
    ).params
    for start, fresh in zip(
        jax.tree.leaves(trained.initial_params), jax.tree.leaves(initial), strict=True
    ):
        np.testing.assert_array_equal(start, fresh)
    trained_leaves = jax.tree.leaves(trained.state.params)
    moved = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(initial), trained_leaves, strict=True)
    ]
    assert max(moved) > 1e-3  # the restored checkpoint is not the initialization
