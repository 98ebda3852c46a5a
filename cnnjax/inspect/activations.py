"""Layer outputs of a model captured through Flax intermediates, their statistics, and saliency.

Nothing here rewrites a model: `capture` runs one eval-mode forward pass with Flax's
`capture_intermediates` filter and reads the "intermediates" collection back as
{"ConvBlock_0": [B, ...], "ConvBlock_1/Conv_0": [B, ...]}.

Post-activation outputs ("activation layers") come from the `Normalization` modules, because
in every family a normalization sits right before an activation (in `ConvBlock` and in the
dense or pre-activation layers that normalize); the activation is applied to the captured
output. A layer is named for what it activates:

- "ConvBlock_0", "BasicBlock_1/ConvBlock_0": a conv block (the block's own `activation`);
- "Dense_0/act", "WideBlock_0/Conv_0/act": a normalization outside a conv block, named for the
  module called just before it and followed by the run's activation (LeNet's dense layers, the
  sparse C3, Wide ResNet's pre-activations); "WideBlock_0/Normalization_0/act" when the
  normalization is the first call of its parent (it acts on the parent's input);
- "BasicBlock_3": a ResNet block, whose last activation acts on the sum with the shortcut. Its
  inner conv blocks with the identity activation (the second convolution, the projection) are
  no activation layers; the block's own output is captured instead, so it is exact too.

The one assumption: a normalization outside a conv block is followed by the run's activation;
true of every registered family (AlexNet's and VGG's dense layers have no normalization, so they
are not activation layers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import numpy as np

from cnnjax.inspect import attribution
from cnnjax.models.layers import PRELU, ConvBlock, Normalization, PReLU, get_activation
from cnnjax.models.resnet import BasicBlock

CaptureFilter = Callable[[nn.Module, str], bool]
# The range where tanh and sigmoid pass almost no gradient (the course's saturated units).
SATURATION = {
    "tanh": lambda x: np.abs(x) > 0.99,
    "sigmoid": lambda x: (x < 0.01) | (x > 0.99),
}
HISTOGRAM_BINS = 50


def module_path(module: nn.Module) -> str:
    """A module's path in the variable tree, e.g. "ConvBlock_1/Conv_0" ("" for the root)."""
    return "/".join(module.path)


def paths_filter(paths) -> CaptureFilter:
    """A capture filter selecting the `__call__` outputs of the modules at `paths`."""
    wanted = frozenset(paths)
    return lambda module, method: method == "__call__" and module_path(module) in wanted


def capture(model: nn.Module, variables, images, *, filter: CaptureFilter) -> dict[str, jax.Array]:
    """Outputs of the modules that `filter(module, method_name)` selects, keyed by path.

    One eval-mode forward pass (`train=False`: running batch statistics, no dropout), jitted.
    A method other than `__call__` is keyed "path.method"; the second call of a module called
    twice is keyed "path#1".
    """

    def forward(variables, images):
        _, state = model.apply(
            variables,
            images,
            train=False,
            capture_intermediates=filter,
            mutable=["intermediates"],
        )
        return state.get("intermediates", {})

    return _flatten(jax.jit(forward)(variables, images))


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, tuple):  # a method's outputs, one per call
            path = "/".join(prefix) + ("" if key == "__call__" else f".{key}")
            for index, output in enumerate(value):
                flat[path if index == 0 else f"{path}#{index}"] = output
        else:
            flat.update(_flatten(value, (*prefix, key)))
    return flat


@dataclasses.dataclass(frozen=True)
class ModuleCall:
    """One module call of a forward pass. Calls are listed as they return (children before
    their parent), which for modules without children (convolutions) is the order of calls."""

    path: str
    module_type: type
    parent_type: type | None
    parent_activation: str | None  # the parent's `activation` field, when it has one


def trace_calls(model: nn.Module, variables, images) -> list[ModuleCall]:
    """Every `__call__` of one eval-mode forward pass on `images`, traced abstractly (shapes
    only, nothing computed)."""
    calls = []

    def record(module: nn.Module, method: str) -> bool:
        if method == "__call__":
            parent = module.parent if isinstance(module.parent, nn.Module) else None
            calls.append(
                ModuleCall(
                    module_path(module),
                    type(module),
                    type(parent) if parent is not None else None,
                    getattr(parent, "activation", None),
                )
            )
        return False  # nothing is stored: only the calls are wanted

    jax.eval_shape(
        lambda v, x: model.apply(
            v, x, train=False, capture_intermediates=record, mutable=["intermediates"]
        ),
        variables,
        images,
    )
    return calls


def _parent_path(path: str) -> str:
    return path.rpartition("/")[0]


@dataclasses.dataclass(frozen=True)
class ActivationLayer:
    """A post-activation output: `activation` applied to the output of the module at `path`."""

    name: str
    path: str
    activation: str


def activation_layers(calls: list[ModuleCall], activation: str) -> list[ActivationLayer]:
    """The activation layers of a traced forward pass, in call order (see the module docstring
    for the naming); `activation` is the run's `config.model.activation`."""
    layers = []
    for index, call in enumerate(calls):
        if issubclass(call.module_type, BasicBlock):
            layers.append(ActivationLayer(call.path, call.path, "identity"))
        elif not issubclass(call.module_type, Normalization):
            continue
        elif call.parent_type is not None and issubclass(call.parent_type, ConvBlock):
            if call.parent_activation == "identity" and activation != "identity":
                continue  # a residual branch before the sum, or a linear projection
            layer = ActivationLayer(_parent_path(call.path), call.path, call.parent_activation)
            layers.append(_learned(layer, calls, index))
        else:
            parent = _parent_path(call.path)
            before = [c.path for c in calls[:index] if c.path and _parent_path(c.path) == parent]
            name = f"{before[-1] if before else call.path}/act"
            layers.append(_learned(ActivationLayer(name, call.path, activation), calls, index))
    return layers


def _learned(layer: ActivationLayer, calls: list[ModuleCall], index: int) -> ActivationLayer:
    """`layer`, whose normalization is `calls[index]`; with a learned activation (PReLU, whose
    slopes are parameters that applying it by name could not use) the output of the activation
    module that follows the normalization in the same parent instead, taken as it is."""
    if layer.activation != PRELU:
        return layer
    parent = _parent_path(calls[index].path)
    path = next(
        c.path
        for c in calls[index + 1 :]
        if issubclass(c.module_type, PReLU) and _parent_path(c.path) == parent
    )
    return ActivationLayer(layer.name, path, "identity")


def capture_activations(
    model: nn.Module, variables, images, layers: list[ActivationLayer]
) -> dict[str, np.ndarray]:
    """The post-activation outputs of `layers` on `images`, as numpy arrays [B, ..., units]."""
    outputs = capture(model, variables, images, filter=paths_filter(la.path for la in layers))
    return post_activations(outputs, layers)


def post_activations(
    outputs: Mapping[str, jax.Array], layers: list[ActivationLayer]
) -> dict[str, np.ndarray]:
    """The layers' post-activation values from captured module `outputs` (by path)."""
    return {la.name: np.asarray(get_activation(la.activation)(outputs[la.path])) for la in layers}


def activation_shapes(
    model: nn.Module, variables, images, layers: list[ActivationLayer]
) -> dict[str, tuple[int, ...]]:
    """Shapes of the outputs of `layers` on `images`, from an abstract trace (nothing computed)."""
    outputs = jax.eval_shape(
        lambda v, x: capture(model, v, x, filter=paths_filter(la.path for la in layers)),
        variables,
        images,
    )
    return {la.name: outputs[la.path].shape for la in layers}


def activation_statistics(
    activations: Mapping[str, np.ndarray], *, activation: str = "relu", bins: int = HISTOGRAM_BINS
) -> dict[str, dict]:
    """Per layer of {name: [B, ..., units]}: shape, mean, std, zero_fraction, dead_fraction
    (units <= 0 for every image and position: dead ReLUs), saturated_fraction (tanh and sigmoid
    only, else None), mean_abs_correlation between units, and a histogram of the nonzero
    outputs (the zeros, a spike for ReLU, are `zero_fraction`). JSON-ready."""
    return {
        name: _layer_statistics(np.asarray(values, np.float64), activation, bins)
        for name, values in activations.items()
    }


def _layer_statistics(x: np.ndarray, activation: str, bins: int) -> dict:
    units = x.reshape(-1, x.shape[-1])  # [images x positions, units]
    nonzero = x[x != 0]
    if nonzero.size:
        counts, edges = np.histogram(nonzero, bins=bins)
    else:
        counts, edges = np.zeros(bins, np.int64), np.linspace(-1.0, 1.0, bins + 1)
    saturated = SATURATION.get(activation)
    return {
        "shape": list(x.shape[1:]),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "zero_fraction": float(np.mean(x == 0)),
        "dead_fraction": float(np.mean(np.all(units <= 0, axis=0))),
        "saturated_fraction": None if saturated is None else float(np.mean(saturated(x))),
        "mean_abs_correlation": mean_abs_correlation(units),
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
    }


def mean_abs_correlation(units: np.ndarray) -> float | None:
    """Mean |Pearson correlation| over pairs of distinct columns of `units` [samples, units].

    Units with zero variance (dead or constant) have no correlation and are left out; None when
    fewer than two remain.
    """
    varying = units[:, units.std(axis=0) > 0]
    if varying.shape[1] < 2:
        return None
    correlation = np.corrcoef(varying, rowvar=False)
    off_diagonal = ~np.eye(len(correlation), dtype=bool)
    return float(np.abs(correlation[off_diagonal]).mean())


def saliency(model: nn.Module, variables, images, classes) -> jax.Array:
    """Max over channels of |d score / d input| (Simonyan et al. 2014), [B, H, W] for images.

    The score of example b is its pre-softmax logit of `classes[b]` in eval mode; for per-pixel
    logits [B, H, W, K] (segmentation) it is the logit of the center pixel. Inputs [B, L, C]
    give [B, L]; [B, T, H, W, C] give [B, T, H, W]. The one implementation is
    `cnnjax.inspect.attribution.saliency` (with gradient x input, SmoothGrad and occlusion).
    """
    return attribution.saliency(model, variables, images, classes)


def first_conv_path(calls: list[ModuleCall]) -> str | None:
    """Path of the first `nn.Conv` called in a traced forward pass (None without one)."""
    return next((c.path for c in calls if issubclass(c.module_type, nn.Conv)), None)


def first_layer_filters(params: Mapping, path: str | None = None) -> np.ndarray:
    """The kernel of the convolution at `path`, filters first: [N, kh, kw, C_in] for a 2-D
    convolution ([N, k, C_in] in 1-D, [N, t, kh, kw, C_in] in 3-D).

    Without `path`, the first kernel of rank >= 3 in the parameter tree's order, which is the
    call order for freshly initialized parameters (LeNet-5: ConvBlock_0/Conv_0, [5, 5, 1, 6]);
    restored checkpoints come back with sorted keys, so pass `first_conv_path(trace_calls(...))`
    where a name sorts before the first layer's (ResNet's "BasicBlock_0" < "ConvBlock_0").
    """
    path = path if path is not None else _first_kernel_path(params)
    if path is None:
        raise ValueError("the parameters hold no convolution kernel")
    node = params
    for key in path.split("/"):
        node = node[key]
    return np.moveaxis(np.asarray(node["kernel"]), -1, 0)


def _first_kernel_path(params: Mapping, prefix: tuple[str, ...] = ()) -> str | None:
    for key, value in params.items():
        if not isinstance(value, Mapping):
            continue
        if np.ndim(value.get("kernel")) >= 3:
            return "/".join((*prefix, key))
        found = _first_kernel_path(value, (*prefix, key))
        if found is not None:
            return found
    return None
