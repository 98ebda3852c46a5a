"""torch state dicts <-> Flax variables, by a layout (cnnjax/weights/layouts.py).

Convolutions go from torch's [O, I, kh, kw] to Flax's [kh, kw, I, O], linear layers from
[out, in] to [in, out] (a linear layer that torch feeds a flattened C, H, W map has its input
rows reordered to cnnjax's H, W, C), batch norm's weight/bias/running_mean/running_var to
scale/bias/mean/var. A convolution bias that torch keeps before a batch norm (torchvision's
vgg*_bn) where cnnjax drops it is folded into the running mean: batch norm subtracts the mean
anyway, so mean - bias gives the same outputs at evaluation, and in training the bias cancels
against the batch mean. Every tensor must be used and every variable filled, with matching
shapes; anything else is one line naming the tensor.
"""

from __future__ import annotations

import numpy as np

from cnnjax.errors import UserError
from cnnjax.weights.layouts import DenseLayer, Layer

# Batch norm's step counter: torch keeps it, nothing is computed from it in evaluation.
IGNORED_SUFFIX = ".num_batches_tracked"
_NORM = ("Normalization_0", "BatchNorm_0")
_BATCH_NORM = (("weight", "scale"), ("bias", "bias"))
_STATISTICS = (("running_mean", "mean"), ("running_var", "var"))


def _get(tree: dict, path: tuple[str, ...]):
    for name in path:
        if not isinstance(tree, dict) or name not in tree:
            return None
        tree = tree[name]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


class _Tensors:
    """The state dict being read: each tensor taken once, shapes checked against Flax's."""

    def __init__(self, state_dict: dict[str, np.ndarray]):
        self.tensors = {k: np.asarray(v) for k, v in state_dict.items()}
        self.used: set[str] = set()

    def take(self, key: str) -> np.ndarray:
        if key not in self.tensors:
            raise UserError(
                f"the weights have no tensor {key!r}: they are not of this architecture "
                "(check --from)"
            )
        self.used.add(key)
        return self.tensors[key]

    def unused(self) -> list[str]:
        return [k for k in self.tensors if k not in self.used and not k.endswith(IGNORED_SUFFIX)]


def _checked(key: str, value: np.ndarray, expected) -> np.ndarray:
    if tuple(value.shape) != tuple(expected.shape):
        raise UserError(
            f"tensor {key!r} has shape {tuple(value.shape)} where the model needs "
            f"{tuple(expected.shape)} after conversion: wrong architecture or option"
        )
    return np.ascontiguousarray(value, dtype=expected.dtype)


def _dense_kernel(weight: np.ndarray, flattened) -> np.ndarray:
    """torch Linear weight [out, in] -> Flax kernel [in, out], rows in H, W, C order."""
    weight = weight.reshape(weight.shape[0], -1)  # timm's conv-as-linear [out, C, kh, kw]
    if flattened is not None:
        channels, height, width = flattened
        weight = weight.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
        weight = weight.reshape(weight.shape[0], -1)
    return weight.T


def torch_to_flax(state_dict: dict[str, np.ndarray], layers: list[Layer], abstract: dict) -> dict:
    """Variables {'params': ..., 'batch_stats': ...} shaped like `abstract` (the model's
    `jax.eval_shape` of init), filled from `state_dict` (numpy arrays) through `layers`."""
    tensors, out = _Tensors(state_dict), {}
    params, stats = abstract.get("params", {}), abstract.get("batch_stats", {})

    def put(collection: str, path, key: str, value):
        expected = _get(params if collection == "params" else stats, path)
        if expected is None:
            raise UserError(f"the model has no variable {'/'.join(path)} for tensor {key!r}")
        _set(out.setdefault(collection, {}), path, _checked(key, value, expected))

    for layer in layers:
        if isinstance(layer, DenseLayer):
            weight = tensors.take(f"{layer.linear}.weight")
            put(
                "params",
                (*layer.dense, "kernel"),
                layer.linear,
                _dense_kernel(weight, layer.flattened),
            )
            put(
                "params", (*layer.dense, "bias"), layer.linear, tensors.take(f"{layer.linear}.bias")
            )
            continue
        conv = (*layer.block, "Conv_0")
        weight = tensors.take(f"{layer.conv}.weight")
        put("params", (*conv, "kernel"), layer.conv, weight.transpose(2, 3, 1, 0))
        bias_key = f"{layer.conv}.bias"
        torch_bias = tensors.take(bias_key) if bias_key in tensors.tensors else None
        if _get(params, (*conv, "bias")) is not None:
            if torch_bias is None:
                raise UserError(f"the weights have no tensor {bias_key!r}: check --from")
            put("params", (*conv, "bias"), bias_key, torch_bias)
            torch_bias = None
        if layer.norm is None:
            if torch_bias is not None:
                raise UserError(f"tensor {bias_key!r} has no place in this model: check --from")
            continue
        norm = (*layer.block, *_NORM)
        for torch_name, flax_name in _BATCH_NORM:
            key = f"{layer.norm}.{torch_name}"
            put("params", (*norm, flax_name), key, tensors.take(key))
        for torch_name, flax_name in _STATISTICS:
            key = f"{layer.norm}.{torch_name}"
            value = tensors.take(key)
            if flax_name == "mean" and torch_bias is not None:
                value = value - torch_bias  # the folded convolution bias (module docstring)
            put("batch_stats", (*norm, flax_name), key, value)
    unused = tensors.unused()
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise UserError(f"tensors {shown} have no place in this model: check --from")
    _check_filled(out, abstract)
    return out


def _check_filled(out: dict, abstract: dict) -> None:
    def walk(expected, got, path):
        if not isinstance(expected, dict):
            return
        for name, value in expected.items():
            if not isinstance(got, dict) or name not in got:
                raise UserError(
                    f"the weights leave {'/'.join((*path, name))} of the model empty: another "
                    "architecture or option (e.g. auxiliary heads)"
                )
            walk(value, got[name], (*path, name))

    for collection in ("params", "batch_stats"):
        walk(abstract.get(collection, {}), out.get(collection, {}), (collection,))


def flax_to_torch(
    variables: dict, layers: list[Layer], *, conv_bias_before_norm: bool = False
) -> dict[str, np.ndarray]:
    """The torch state dict of `variables` (numpy), the inverse of `torch_to_flax`.
    `conv_bias_before_norm`: write the zero convolution bias that torchvision's vgg*_bn expects
    (the folded bias stays in the running mean). Batch norms get num_batches_tracked = 0."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    out: dict[str, np.ndarray] = {}
    for layer in layers:
        if isinstance(layer, DenseLayer):
            kernel = np.asarray(_get(params, (*layer.dense, "kernel")))
            weight = kernel.T
            if layer.flattened is not None:
                channels, height, width = layer.flattened
                weight = weight.reshape(-1, height, width, channels).transpose(0, 3, 1, 2)
                weight = weight.reshape(weight.shape[0], -1)
            out[f"{layer.linear}.weight"] = np.ascontiguousarray(weight)
            out[f"{layer.linear}.bias"] = np.asarray(_get(params, (*layer.dense, "bias")))
            continue
        conv = (*layer.block, "Conv_0")
        kernel = np.asarray(_get(params, (*conv, "kernel")))
        out[f"{layer.conv}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        bias = _get(params, (*conv, "bias"))
        if bias is not None:
            out[f"{layer.conv}.bias"] = np.asarray(bias)
        elif conv_bias_before_norm:
            out[f"{layer.conv}.bias"] = np.zeros(kernel.shape[-1], kernel.dtype)
        if layer.norm is None:
            continue
        norm = (*layer.block, *_NORM)
        for torch_name, flax_name in _BATCH_NORM:
            out[f"{layer.norm}.{torch_name}"] = np.asarray(_get(params, (*norm, flax_name)))
        for torch_name, flax_name in _STATISTICS:
            out[f"{layer.norm}.{torch_name}"] = np.asarray(_get(stats, (*norm, flax_name)))
        out[f"{layer.norm}{IGNORED_SUFFIX}"] = np.zeros((), np.int64)
    return out
