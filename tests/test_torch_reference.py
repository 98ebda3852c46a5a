"""benchmarks/torch_reference.py rebuilds cnnjax models in PyTorch for throughput comparisons:
the twins must be the same networks, so their parameter counts, output shapes and (with the Flax
weights copied in) logits must equal cnnjax's. Skipped where torch is not installed (CI).
"""

import os
import sys
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnnjax import models  # noqa: E402
from cnnjax.models.inventory import param_count  # noqa: E402

# benchmarks/ is a folder of scripts, not a package: import the module from there.
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
)
import torch_reference  # noqa: E402


@pytest.mark.parametrize(
    "name, options",
    [
        ("lenet5", {"normalization": "none"}),
        ("lenet5", {"normalization": "batch"}),
        ("resnet20", {}),
        ("resnet18", {"num_classes": 1000}),
        ("resnet50", {"num_classes": 1000}),
    ],
)
def test_parameter_count_equals_cnnjax(name, options):
    model = torch_reference.create(name, **options)
    count = sum(p.numel() for p in model.parameters())
    assert count == param_count(name, **options)
    known = {"resnet18": 11_689_512, "resnet50": 25_557_032}  # torchvision's counts
    assert count == known.get(name, count)


@pytest.mark.parametrize(
    "name, normalization, size",
    [
        ("lenet5", "none", None),
        ("lenet5", "batch", None),
        ("resnet20", "batch", None),
        ("resnet18", "batch", 64),
        ("resnet50", "batch", 64),
    ],
)
def test_output_shape(name, normalization, size):
    model = torch_reference.create(name, num_classes=7, normalization=normalization).eval()
    shape = torch_reference.input_shape(name, size)
    with torch.no_grad():
        logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, 7)


def test_unknown_names_fail_with_the_known_ones():
    with pytest.raises(ValueError, match="lenet5, resnet18, resnet20, resnet50"):
        torch_reference.create("vgg16")
    with pytest.raises(ValueError, match="none, batch"):
        torch_reference.create("lenet5", normalization="group")


def _leaves(tree, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, leaf) pairs of a Flax variable dict in the order its layers were created, which is
    the order in which the twin registers its parameters (jax.tree.leaves sorts the keys)."""
    if isinstance(tree, dict):
        return [item for key, value in tree.items() for item in _leaves(value, (*path, key))]
    return [(path, tree)]


def _random_variables(flax_model, images: np.ndarray, rng: np.random.Generator) -> dict:
    """Random Flax variables for `flax_model`, keys in creation order. Kernels are scaled by
    1/sqrt(fan-in) as in LeCun init; every vector (bias, scale, running statistic) is random and
    positive, so that a mix-up of two changes the logits. Flax's own init is only traced here:
    compiling its initializers would take most of this file's time on 2 CPU cores."""
    order = []

    def init(x):
        variables = flax_model.init(jax.random.key(0), x, train=False)
        order.extend((path, leaf.shape) for path, leaf in _leaves(variables))
        return variables

    jax.eval_shape(init, images)
    variables: dict = {}
    for path, shape in order:
        if len(shape) == 1:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        node = variables
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value.astype(np.float32)
    return variables


def _load_flax_variables(model: torch.nn.Module, variables: dict) -> None:
    """Copies Flax variables into the twin: kernels HWIO -> OIHW, dense [in, out] -> [out, in]."""
    params = [value for _, value in _leaves(variables["params"])]
    targets = list(model.parameters())
    for target, value in zip(targets, params, strict=True):
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:
            value = value.T
        assert tuple(target.shape) == value.shape
        target.data.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    stats = [value for _, value in _leaves(variables.get("batch_stats", {}))]  # mean, var
    buffers = [b for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")]
    for target, value in zip(buffers, stats, strict=True):
        assert tuple(target.shape) == value.shape
        target.copy_(torch.from_numpy(value))


@pytest.mark.parametrize(
    "name, normalization, shape, train_too",
    [
        ("lenet5", "none", (28, 28, 1), True),
        ("lenet5", "batch", (28, 28, 1), True),
        ("resnet20", "batch", (32, 32, 3), True),
        ("resnet18", "batch", (32, 32, 3), True),
        # Train mode would compile a second ResNet-50 (about 7 s here) to check batch statistics
        # that resnet18's blocks already check; eval mode checks the bottleneck architecture.
        ("resnet50", "batch", (32, 32, 3), False),
    ],
)
def test_same_logits_as_cnnjax_with_its_weights(name, normalization, shape, train_too):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, *shape)).astype(np.float32)
    flax_model = models.create(name, num_classes=10, normalization=normalization)
    variables = _random_variables(flax_model, images, rng)
    model = torch_reference.create(name, num_classes=10, normalization=normalization)
    _load_flax_variables(model, variables)

    @jax.jit  # one compilation rather than one per operation: most of this test's time
    def flax_logits(variables, x):
        logits = [flax_model.apply(variables, x, train=False)]
        if train_too:
            logits.append(flax_model.apply(variables, x, train=True, mutable=["batch_stats"])[0])
        return logits

    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        torch_logits = [model.eval()(nchw)]  # first: train mode updates the running statistics
        if train_too:
            torch_logits.append(model.train()(nchw))
    for got, expected in zip(torch_logits, flax_logits(variables, images), strict=True):
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-4, rtol=0)
