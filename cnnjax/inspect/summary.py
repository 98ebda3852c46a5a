"""`cnnjax summary`: a per-layer table of output shape, parameters, MACs and receptive field.

    cnnjax summary --config=configs/lenet5_fashion_mnist.py --depth=2

One trace of `model.init(key, x, train=False)` under `jax.make_jaxpr` (shapes only, nothing is
computed or allocated) gives everything: a Flax method interceptor records each module call (its
path, input and output shapes, and the MACs of its convolutions and dense layers from
`cnnjax.models.inventory.layer_macs`, the formula of `count_macs`) and marks its output with
`checkpoint_name`; the jaxpr is then read by `cnnjax.inspect.receptive_field` for the exact
receptive field at every marker.
Tracing `init` rather than `apply` runs the same modules as `count_macs` and `param_count` (the
auxiliary heads of GoogLeNet and Inception v3 included), so the totals agree with the registry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from cnnjax.inspect.receptive_field import Fields, trace_fields
from cnnjax.models.inventory import layer_macs
from cnnjax.models.layers import with_plain_forms

MARKER = "cnnjax.summary/"  # prefix of the checkpoint names that mark module outputs


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One module call, in call order (a parent before its children); counts per example."""

    path: str  # "ConvBlock_0/Conv_0"; "" for the model itself
    type: str  # the module's class name
    depth: int  # 0 for the model, 1 for its direct submodules, ...
    input_shape: tuple[int, ...] | None  # of the first argument, without the batch dim
    output_shape: tuple[int, ...] | None  # without the batch dim
    params: int  # parameters of the module's subtree
    batch_stats: int  # non-trainable running statistics of the subtree
    macs: int  # multiply-accumulates of the subtree's convolutions and dense layers
    receptive_field: Fields  # per input spatial axis; None where not derived from the input
    dense_params: int | None  # what a dense layer from input to output shape would need
    is_conv: bool  # an nn.Conv or nn.ConvTranspose (listed in the dense-vs-conv comparison)


@dataclasses.dataclass(frozen=True)
class SummaryTotals:
    """Totals of a model: `params` equals the registry's `param_count`, `macs` `count_macs`."""

    params: int
    batch_stats: int
    macs: int


def _subtree_size(collection, path: tuple[str, ...]) -> int:
    for name in path:
        if not isinstance(collection, Mapping) or name not in collection:
            return 0
        collection = collection[name]
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(collection)))


def _trace(model: nn.Module, input_shape: tuple[int, ...]):
    """Module calls (dicts, in call order), variable shapes and fields at the markers."""
    # The model's own operations, whose fields and shapes the table describes, not the forms
    # XLA:CPU runs faster (LayerOptions, cnnjax/models/layers.py).
    model = with_plain_forms(model)
    calls, active = [], []

    def record(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        first = args[0] if args and isinstance(args[0], jax.Array) else None
        call = {"module": context.module, "macs": 0, "marker": f"{MARKER}{len(calls)}"}
        call["input_shape"] = None if first is None else tuple(first.shape[1:])
        calls.append(call)
        active.append(call)
        try:
            output = next_fun(*args, **kwargs)
        finally:
            active.pop()
        macs = layer_macs(context.module, args, output)
        for caller in [*active, call]:  # the call and every module around it
            caller["macs"] += macs
        arrays = [leaf for leaf in jax.tree.leaves(output) if isinstance(leaf, jax.Array)]
        call["output_shape"] = tuple(arrays[0].shape[1:]) if arrays else None
        return jax.tree.map(
            lambda leaf: (
                checkpoint_name(leaf, call["marker"]) if isinstance(leaf, jax.Array) else leaf
            ),
            output,
        )

    def forward(x):
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), x, train=False)  # init runs the forward pass

    example = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    closed, variables = jax.make_jaxpr(forward, return_shape=True)(example)
    fields, _ = trace_fields(closed, range(1, len(input_shape)))
    return calls, variables, fields


def model_summary(
    model: nn.Module, input_shape: tuple[int, ...], *, depth: int | None = None
) -> list[LayerRow]:
    """The rows of `model` on one example of `input_shape` ([H, W, C], [L, C], [T, H, W, C]).

    With `depth`, modules nested deeper than `depth` are folded into their parents: their
    parameters and MACs are already part of the parent's subtree counts.
    """
    calls, variables, fields = _trace(model, tuple(input_shape))
    rows = []
    for call in calls:
        module, path = call["module"], tuple(call["module"].path)
        shapes = (call["input_shape"], call["output_shape"])
        dense = None if None in shapes else (math.prod(shapes[0]) + 1) * math.prod(shapes[1])
        field = fields.get(call["marker"])
        rows.append(
            LayerRow(
                path="/".join(path),
                type=type(module).__name__,
                depth=len(path),
                input_shape=shapes[0],
                output_shape=shapes[1],
                params=_subtree_size(variables.get("params", {}), path),
                batch_stats=_subtree_size(variables.get("batch_stats", {}), path),
                macs=call["macs"],
                receptive_field=None if field is None or set(field) == {None} else field,
                dense_params=dense,
                is_conv=isinstance(module, (nn.Conv, nn.ConvTranspose)),
            )
        )
    return fold(rows, depth)


def fold(rows: list[LayerRow], depth: int | None) -> list[LayerRow]:
    """The rows no deeper than `depth` (all of them for None)."""
    return list(rows) if depth is None else [row for row in rows if row.depth <= depth]


def summary_totals(rows: list[LayerRow]) -> SummaryTotals:
    """Totals over the outermost rows (the model's own row when present)."""
    paths = {row.path for row in rows}

    def outermost(row: LayerRow) -> bool:
        parts = row.path.split("/") if row.path else []
        return not any("/".join(parts[:n]) in paths for n in range(len(parts)))

    top = [row for row in rows if outermost(row)]
    params = {row.path: (row.params, row.batch_stats) for row in top}  # a shared module once
    return SummaryTotals(
        params=sum(p for p, _ in params.values()),
        batch_stats=sum(b for _, b in params.values()),
        macs=sum(row.macs for row in top),
    )


def _number(value) -> str:
    """An int as is, a fraction as a short decimal (start values such as 13.5)."""
    return str(value) if float(value).is_integer() else f"{float(value):.4g}"


def _per_axis(field: Fields, attribute: str) -> str:
    """One number when all spatial axes agree, else one per axis joined by "x"; "?" unknown."""
    if field is None:
        return "-"
    values = []
    for axis in field:
        if axis is None:
            values.append("?")
            continue
        text = _number(getattr(axis, attribute))
        values.append(f"<={text}" if attribute == "size" and not axis.uniform else text)
    return values[0] if len(set(values)) == 1 else "x".join(values)


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape)) or "scalar"


def _table_line(row: LayerRow) -> list[str]:
    name = (
        f"{row.type} (model)" if not row.path else "  " * (row.depth - 1) + row.path.split("/")[-1]
    )
    field = row.receptive_field
    return [
        name,
        row.type,
        _shape(row.output_shape),
        f"{row.params:,}",
        f"{row.macs:,}",
        *(_per_axis(field, key) for key in ("size", "jump", "start")),
    ]


def _dense_vs_conv(rows: list[LayerRow]) -> list[str]:
    lines = [
        "Dense vs conv: each convolution's parameters vs a dense layer between the same shapes"
    ]
    convs = [row for row in rows if row.is_conv and row.dense_params]
    for row in convs:
        ratio = row.dense_params / max(row.params, 1)
        lines.append(
            f"  {row.path}: {_shape(row.input_shape)} -> {_shape(row.output_shape)}: "
            f"conv {row.params:,}, dense {row.dense_params:,} ({ratio:,.0f}x)"
        )
    if not convs:
        lines.append("  (no convolution among these rows)")
    return lines


def format_summary(rows: list[LayerRow], totals: SummaryTotals, *, depth: int | None = None) -> str:
    """A plain-text table of `rows` (folded to `depth`), the totals, and dense vs conv.

    RF, jump and start are the receptive field's size, jump and first center in input pixels
    ("<=" marks sizes that vary between units, after upsampling; "?" an unknown field; jump 0 a
    unit that sees the whole input). The dense-vs-conv section lists every convolution in
    `rows`, whatever `depth`.
    """
    header = ["Layer", "Type", "Output", "Params", "MACs", "RF", "jump", "start"]
    table = [header] + [_table_line(row) for row in fold(rows, depth)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in table
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("-" * len(lines[0]))
    lines.append(
        f"Total params: {totals.params:,}   batch statistics (non-trainable): "
        f"{totals.batch_stats:,}   MACs per example: {totals.macs:,}"
    )
    return "\n".join(lines + [""] + _dense_vs_conv(rows))


def summary_from_config(config, *, depth: int | None = None) -> str:
    """The summary of the model of `config` on its data's input shape and classes.

    The data is read only for its shape and class count; when it cannot be loaded (a UserError:
    not prepared, offline), the registry's default input shape and 10 classes are used, and the
    first line says so.
    """
    from cnnjax.data.inputs import make_input  # the data and training stacks load only here
    from cnnjax.errors import UserError
    from cnnjax.models.registry import default_input_shape
    from cnnjax.train.loop import build_model

    name = config.model.name
    try:
        run_input = make_input(config)
        shape, num_classes = tuple(run_input.input_shape), run_input.num_classes
        first = f"{name} on {config.data.name} inputs {_shape(shape)}, {num_classes} classes"
    except UserError as error:
        shape, num_classes = default_input_shape(name), 10
        first = (
            f"{name}: data not loaded ({error}); using the default input {_shape(shape)} "
            "and 10 classes"
        )
    rows = model_summary(build_model(config, num_classes), shape)
    return "\n".join([first, format_summary(rows, summary_totals(rows), depth=depth)])
