"""The examples that drive each unit of a layer most: "what do fc7's units respond to?".

For a layer (an activation layer of `cnnjax.inspect.activations`, post-activation, or any module
path, its raw output), a unit is a channel: of a conv output [B, *spatial, C] its value on an
example is the channel's maximum over positions, and the position where it peaks is kept; of a
dense output [B, F] the unit's value itself. `top_activations` scans batches of examples once,
holding per unit only a running top k (memory k x units, whatever the number of examples), and
for conv units gives the box of input pixels the unit sees at its peak: its exact receptive
field, from `cnnjax.inspect.receptive_field` on a trace of the model's plain forms.

Ties keep the earlier example first, so the result equals a stable sort of all values at once,
however the examples are batched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

import flax.linen as nn
import jax
import numpy as np

from cnnjax.errors import UserError
from cnnjax.inspect import activations as act
from cnnjax.inspect.receptive_field import Fields, trace_fields
from cnnjax.models.layers import PRELU, get_activation, with_plain_forms


@dataclasses.dataclass(frozen=True)
class TopUnits:
    """The top `k` examples of every unit of one layer, best first.

    `indices` [U, k]: example indices in scan order; `values` [U, k]: the unit's value (a conv
    unit's maximum over positions); `positions` [U, k, S]: where in the layer's S-D output grid
    a conv unit peaked (None for dense layers); `boxes` [U, k, S, 2]: the first and last input
    pixel, per spatial axis, of the receptive field at that position, clipped to the input
    (None for dense layers, and where the field is unknown); `num_examples`: how many were
    scanned.
    """

    layer: str
    indices: np.ndarray
    values: np.ndarray
    positions: np.ndarray | None
    boxes: np.ndarray | None
    num_examples: int

    def to_json(self) -> dict:
        """JSON-ready lists, one entry per unit."""
        record = dict(
            num_examples=self.num_examples,
            indices=self.indices.tolist(),
            values=self.values.tolist(),
        )
        if self.positions is not None:
            record["positions"] = self.positions.tolist()
        if self.boxes is not None:
            record["boxes"] = self.boxes.tolist()
        return record


def _layer(layer: act.ActivationLayer | str) -> tuple[str, str, str]:
    """(name, module path, activation applied to the module's output) of a layer."""
    if isinstance(layer, act.ActivationLayer):
        # PReLU's slopes live in the model: no function to apply outside it, so its input
        # (the same order wherever the learned slope is positive).
        activation = "identity" if layer.activation == PRELU else layer.activation
        return layer.name, layer.path, activation
    return layer, layer, "identity"


@functools.partial(jax.jit, static_argnames=("model", "paths", "activations"))
def _unit_peaks(model: nn.Module, variables, images, paths, activations):
    """Per layer: (values [B, U], flat position [B, U]) of each unit's maximum over positions."""
    outputs = act.capture(model, variables, images, filter=act.paths_filter(paths))
    peaks = []
    for path, activation in zip(paths, activations, strict=True):
        y = get_activation(activation)(outputs[path])  # [B, *spatial, U] or [B, U]
        flat = y.reshape(len(y), -1, y.shape[-1])  # [B, positions, U]
        peaks.append((flat.max(axis=1), flat.argmax(axis=1)))
    return peaks


def _merge(best: tuple, new: tuple, k: int) -> tuple:
    """The top `k` rows of each column of two (values, indices, positions) triples [n, U]; the
    stable sort keeps `best` (earlier examples) first among equal values."""
    values, indices, positions = (np.concatenate(pair) for pair in zip(best, new, strict=True))
    order = np.argsort(-values, axis=0, kind="stable")[:k]  # [k, U]
    return tuple(np.take_along_axis(a, order, axis=0) for a in (values, indices, positions))


def _batches(batches: Iterable, max_examples: int | None):
    """(images [b, ...] float32, index of the first) of up to `max_examples` examples."""
    seen = 0
    for images in batches:
        images = np.asarray(images, np.float32)
        if max_examples is not None:
            images = images[: max_examples - seen]
        if len(images):
            yield images, seen
            seen += len(images)
        if max_examples is not None and seen >= max_examples:
            return


def default_layers(
    layers: Sequence[act.ActivationLayer], calls: Sequence[act.ModuleCall], shapes: dict
) -> list[act.ActivationLayer | str]:
    """The layers whose units `cnnjax visualize` draws by default: the deepest conv activation
    layer and the hidden dense layers, of the activation `layers` with their output `shapes`
    (by name, [1, ...]); where no dense layer is an activation layer (AlexNet's and VGG's have no
    normalization) the module paths of every nn.Dense called but the last (the classifier),
    whose raw outputs rank the examples as their ReLUs do."""
    spatial = [la for la in layers if len(shapes[la.name]) >= 3]
    dense = [la for la in layers if len(shapes[la.name]) == 2]
    if not dense:
        dense = [c.path for c in calls if issubclass(c.module_type, nn.Dense)][:-1]
    return spatial[-1:] + dense


def top_activations(
    model: nn.Module,
    variables,
    batches: Iterable,
    layers: Sequence[act.ActivationLayer | str],
    *,
    k: int = 9,
    max_examples: int | None = None,
) -> dict[str, TopUnits]:
    """The top `k` of up to `max_examples` examples (all of `batches` by default) for every unit
    of each of `layers` (ActivationLayers or module paths), by layer name.

    `batches`: the model's normalized inputs [b, *spatial, C], any number of batches; a batch
    smaller than the first is padded to its size, so the step compiles once (a larger one
    compiles its own).
    """
    if k < 1:
        raise UserError(f"top activations: k must be at least 1, not {k}")
    named = [_layer(layer) for layer in layers]
    paths = tuple(path for _, path, _ in named)
    activations = tuple(activation for _, _, activation in named)
    running, first, seen = None, None, 0
    for images, start in _batches(batches, max_examples):
        first = images if first is None else first
        real, seen = len(images), start + len(images)
        padding = np.zeros((max(0, len(first) - real), *images.shape[1:]), np.float32)
        padded = np.concatenate([images, padding]) if len(padding) else images
        peaks = jax.device_get(_unit_peaks(model, variables, padded, paths, activations))
        index = np.arange(start, seen)[:, None]  # [b, 1]
        new = [(v[:real], np.broadcast_to(index, v[:real].shape), p[:real]) for v, p in peaks]
        running = running or [tuple(a[:0] for a in triple) for triple in new]
        running = [_merge(r, n, k) for r, n in zip(running, new, strict=True)]
    if running is None:
        raise UserError("top activations: no examples to scan")
    input_spatial = first.shape[1:-1]
    shapes, fields = _geometry(model, variables, first.shape[1:], paths)
    return {
        name: _top_units(name, *triple, shapes[path], fields[path], input_spatial, seen)
        for (name, path, _), triple in zip(named, running, strict=True)
    }


def _geometry(model: nn.Module, variables, example_shape, paths) -> tuple[dict, dict]:
    """({path: output shape [1, ...]}, {path: receptive Fields}) from one abstract trace of
    the model's plain forms (the fast ones fold pixels into channels, which hides the fields)."""
    plain = with_plain_forms(model)
    wanted = sorted(set(paths))

    def outputs(x):
        captured = act.capture(plain, variables, x, filter=act.paths_filter(wanted))
        return [captured[path] for path in wanted]

    example = jax.ShapeDtypeStruct((1, *example_shape), np.float32)
    closed, shapes = jax.make_jaxpr(outputs, return_shape=True)(example)
    _, fields = trace_fields(closed, range(1, len(example_shape)))
    return (
        {path: shape.shape for path, shape in zip(wanted, shapes, strict=True)},
        dict(zip(wanted, fields, strict=True)),
    )


def receptive_boxes(
    fields: Fields, positions: np.ndarray, input_spatial: Sequence[int]
) -> np.ndarray | None:
    """Input boxes [..., S, 2] (first and last pixel per spatial axis, clipped to the input)
    of the units at `positions` [..., S] of a layer whose receptive field is `fields`; None
    where a field is unknown or not uniform (after upsampling)."""
    if fields is None or any(f is None or not f.uniform for f in fields):
        return None
    boxes = np.empty((*positions.shape, 2), np.int64)
    for axis, (field, size) in enumerate(zip(fields, input_spatial, strict=True)):
        center = [field.start + int(p) * field.jump for p in positions[..., axis].ravel()]
        half = Fraction(field.size - 1) / 2  # exact, also for fractional fields
        low = np.asarray([math.floor(c - half) for c in center]).reshape(positions.shape[:-1])
        high = np.asarray([math.ceil(c + half) for c in center]).reshape(positions.shape[:-1])
        boxes[..., axis, 0] = np.clip(low, 0, size - 1)
        boxes[..., axis, 1] = np.clip(high, 0, size - 1)
    return boxes


def _top_units(name, values, indices, flat, shape, fields, input_spatial, seen) -> TopUnits:
    """The running arrays [k, U] as a TopUnits ([U, k] and positions unraveled)."""
    spatial = shape[1:-1]
    positions = boxes = None
    if spatial:
        positions = np.stack(np.unravel_index(flat.T, spatial), axis=-1)  # [U, k, S]
        boxes = receptive_boxes(fields, positions, input_spatial)
    return TopUnits(name, indices.T.astype(np.int64), values.T, positions, boxes, seen)
