"""Exact receptive fields of the intermediate tensors of a traced JAX computation.

`trace_fields` reads a jaxpr and interprets it abstractly: every tensor derived from the input
carries, per input axis, a `field_grid.Field` (per unit, the interval of input positions it
sees, as a periodic table), and each primitive maps its operands' fields to its outputs' with the
arithmetic of `cnnjax.inspect.field_grid`; the fields are reported as `AxisField`s (size, jump,
start). Conventions where a unit's field depends on more than its position:
- adding or concatenating branches along the feature (last) axis takes the union (span) of their
  fields, so a residual or Inception block has the field of its largest branch;
- a unit that reads every position (global pooling, a dense layer on a flattened map, group
  norm) has jump 0 and the span of all it reads;
- a transposed convolution (lhs dilation) or interior padding places the new units at
  fractional positions of the old grid (jump j / stride), as Dumoulin & Visin do.

Handled: conv_general_dilated (strides, padding, kernel and lhs dilation, feature groups),
reduce_window_* and reduce_window (pools), reductions, argmax/argmin, dot_general, elementwise
operations with broadcasting, broadcast_in_dim, reshape (splits such as the reshape pooling of
`layers.pool`, merges such as flatten and `jnp.repeat` upsampling), squeeze, transpose, rev,
slice (strided), pad (also negative or interior), split, concatenate and stack, and the calls
jit, custom_jvp_call (jax.nn.relu), custom_vjp_call, closed_call and checkpoint by recursion.
Anything else (gather, which `jax.image.resize` uses; scatter, cumsum, while, cond, scan) on a
tensor derived from the input makes its field unknown (None): never a guessed number.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from fractions import Fraction

import jax
import numpy as np
from jax.extend import core

from cnnjax.inspect import field_grid as grid
from cnnjax.inspect.field_grid import AxisField, Fields

# AxisField and Fields are part of this module's API (callers import them from here).
__all__ = ["AxisField", "Fields", "receptive_field", "trace_fields"]

# The jaxpr interpreter. A tensor's state: None when it does not depend on the input (weights,
# constants), else one grid.Field per input spatial axis, None where unknown.
State = tuple[grid.Field | None, ...] | None


def _per_axis(state: State, fn: Callable[[grid.Field], grid.Field | None]) -> State:
    return None if state is None else tuple(None if f is None else fn(f) for f in state)


def _unknown(ins: list[State]) -> State:
    return (None,) * len(next(s for s in ins if s is not None))


def _union_all(ins: list[State], shape: Sequence[int]) -> State:
    states = [s for s in ins if s is not None]
    if not states:
        return None
    return tuple(
        functools.reduce(lambda a, b: grid.union(a, b, shape), fs)
        for fs in zip(*states, strict=True)
    )


def _shape(var) -> tuple[int, ...]:
    return tuple(var.aval.shape)


def _elementwise(eqn, ins):
    shape = _shape(eqn.outvars[0])
    if any(
        s is not None and len(_shape(v)) not in (0, len(shape))
        for v, s in zip(eqn.invars, ins, strict=True)
    ):
        return [_unknown(ins)] * len(eqn.outvars)
    return [_union_all(ins, shape)] * len(eqn.outvars)


def _broadcast(eqn, ins):
    old, new = _shape(eqn.invars[0]), eqn.params["shape"]
    where = eqn.params["broadcast_dimensions"]

    def fn(f):
        for dim in [d for d in f.dims if old[d] == 1 and new[where[d]] != 1]:
            f = grid.affine_map(f, dim, 0, 0)  # one unit repeated: the same field everywhere
        return grid.rename(f, {d: where[d] for d in f.dims}) if f else None

    return [_per_axis(ins[0], fn)]


def _reshape_rule(eqn, ins):
    if eqn.params.get("dimensions") is not None:
        return [_unknown(ins)]
    old, new = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    return [_per_axis(ins[0], lambda f: grid.reshape(f, old, new))]


def _squeeze(eqn, ins):
    gone = eqn.params["dimensions"]
    keep = [d for d in range(len(_shape(eqn.invars[0]))) if d not in gone]

    def fn(f):
        for dim in gone:
            f = grid.affine_map(f, dim, 0, 0)
        return grid.rename(f, {d: keep.index(d) for d in f.dims}) if f else None

    return [_per_axis(ins[0], fn)]


def _transpose(eqn, ins):
    perm = eqn.params["permutation"]
    return [_per_axis(ins[0], lambda f: grid.rename(f, {perm[i]: i for i in range(len(perm))}))]


def _rev(eqn, ins):
    shape = _shape(eqn.invars[0])

    def fn(f):
        for dim in eqn.params["dimensions"]:
            f = grid.affine_map(f, dim, -1, shape[dim] - 1)
        return f

    return [_per_axis(ins[0], fn)]


def _slice(eqn, ins):
    starts, strides = eqn.params["start_indices"], eqn.params["strides"]
    strides = strides or (1,) * len(starts)

    def fn(f):
        for dim, (start, stride) in enumerate(zip(starts, strides, strict=True)):
            f = grid.affine_map(f, dim, stride, start)
        return f

    return [_per_axis(ins[0], fn)]


def _pad(eqn, ins):
    if ins[1] is not None:  # a padding value computed from the input
        return [_unknown(ins)]

    def fn(f):
        for dim, (low, _, interior) in enumerate(eqn.params["padding_config"]):
            f = grid.dilate_pad(f, dim, low, interior + 1)
        return f

    return [_per_axis(ins[0], fn)]


def _split_rule(eqn, ins):
    axis, outs, start = eqn.params["axis"], [], 0
    for size in eqn.params["sizes"]:
        outs.append(_per_axis(ins[0], lambda f, s=start: grid.affine_map(f, axis, 1, s)))
        start += size
    return outs


def _reduction(eqn, ins):
    shape, axes = _shape(eqn.invars[0]), eqn.params["axes"]
    keep = [d for d in range(len(shape)) if d not in axes]

    def fn(f):
        for dim in axes:
            f = grid.reduce(f, dim, shape[dim])
        return grid.rename(f, {d: keep.index(d) for d in f.dims}) if f else None

    return [_per_axis(ins[0], fn)]


def _windowed(f, dims, sizes, strides, pads, lhs_dilation, rhs_dilation):
    """Pooling or convolution along `dims`: dilate and pad the input, then slide the window."""
    for dim, size, stride, (low, _), base, dilation in zip(
        dims, sizes, strides, pads, lhs_dilation, rhs_dilation, strict=True
    ):
        f = grid.window(grid.dilate_pad(f, dim, low, base), dim, size, stride, dilation)
    return f


def _reduce_window(eqn, ins):
    p, count = eqn.params, len(eqn.outvars)
    if any(s is not None for s in ins[count:]):  # init values computed from the input
        return [_unknown(ins)] * count
    state = _union_all(ins[:count], _shape(eqn.outvars[0]))
    window = (p["window_dimensions"], p["window_strides"], p["padding"])
    dims = range(len(p["window_dimensions"]))
    rule = lambda f: _windowed(f, dims, *window, p["base_dilation"], p["window_dilation"])  # noqa: E731
    return [_per_axis(state, rule)] * count


def _conv(eqn, ins):
    p = eqn.params
    if ins[1] is not None:  # a kernel computed from the input
        return [_unknown(ins)]
    lhs, rhs, out = p["dimension_numbers"]
    shape, kernel = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    sizes = [kernel[d] for d in rhs[2:]]

    def fn(f):
        if p["batch_group_count"] != 1 and lhs[0] in f.dims:
            return None
        if lhs[1] in f.dims:  # a field that varies across input features
            if p["feature_group_count"] != 1:
                return None
            f = grid.reduce(f, lhs[1], shape[lhs[1]])
        pads, strides = p["padding"], p["window_strides"]
        f = _windowed(f, lhs[2:], sizes, strides, pads, p["lhs_dilation"], p["rhs_dilation"])
        mapping = {lhs[0]: out[0], **dict(zip(lhs[2:], out[2:], strict=True))}
        return grid.rename(f, mapping)

    return [_per_axis(ins[0], fn)]


def _dot_general(eqn, ins):
    (contract_l, contract_r), (batch_l, batch_r) = eqn.params["dimension_numbers"]
    outs, start = [], len(batch_l)
    for state, var, contract, batch in zip(
        ins, eqn.invars, (contract_l, contract_r), (batch_l, batch_r), strict=True
    ):
        shape = _shape(var)
        free = [d for d in range(len(shape)) if d not in contract and d not in batch]
        mapping = {
            **{d: i for i, d in enumerate(batch)},
            **{d: start + i for i, d in enumerate(free)},
        }
        start += len(free)

        def fn(f, contract=contract, shape=shape, mapping=mapping):
            for dim in contract:
                f = grid.reduce(f, dim, shape[dim])
            return grid.rename(f, mapping)

        outs.append(_per_axis(state, fn))
    return [_union_all(outs, _shape(eqn.outvars[0]))]


def _concatenate(eqn, ins):
    return [_concat(ins, [_shape(v) for v in eqn.invars], eqn.params["dimension"])]


def _stack(eqn, ins):
    axis = eqn.params["axis"]
    shapes = [s[:axis] + (1,) + s[axis:] for s in map(_shape, eqn.invars)]
    moved = [
        _per_axis(s, lambda f: grid.rename(f, {d: d + (d >= axis) for d in f.dims})) for s in ins
    ]
    return [_concat(moved, shapes, axis)]


def _concat(ins: list[State], shapes: list[tuple[int, ...]], dim: int) -> State:
    out = shapes[0][:dim] + (sum(s[dim] for s in shapes),) + shapes[0][dim + 1 :]
    varying = any(f is not None and dim in f.dims for s in ins if s is not None for f in s)
    if dim == len(out) - 1 and not varying:
        return _union_all(ins, out)  # branches side by side on features: the union
    if any(s is None for s in ins):  # constants spliced into the grid
        return _unknown(ins)
    return tuple(
        grid.concat_axis(fs, [s[dim] for s in shapes], dim) for fs in zip(*ins, strict=True)
    )


_ELEMENTWISE = frozenset(
    "abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp conj copy copy_p "
    "convert_element_type cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt "
    "imag integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not "
    "or pow real reduce_precision rem round rsqrt select_n sharding_constraint sign sin sinh sqrt "
    "square stop_gradient sub tan tanh xor".split()
)
_RULES = {
    "broadcast_in_dim": _broadcast,
    "reshape": _reshape_rule,
    "squeeze": _squeeze,
    "transpose": _transpose,
    "rev": _rev,
    "slice": _slice,
    "pad": _pad,
    "split": _split_rule,
    "concatenate": _concatenate,
    "stack": _stack,
    "reduce_window": _reduce_window,
    "reduce_window_sum": _reduce_window,
    "reduce_window_max": _reduce_window,
    "reduce_window_min": _reduce_window,
    "conv_general_dilated": _conv,
    "dot_general": _dot_general,
    **dict.fromkeys(
        ["reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or"]
        + ["argmax", "argmin"],
        _reduction,
    ),
}
# Primitives that call a sub-jaxpr on their operands (jax.nn.relu is a custom_jvp_call).
_CALLS = frozenset(
    "jit pjit closed_call core_call custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr "
    "checkpoint remat remat2".split()
)


def _sub_jaxpr(eqn) -> core.Jaxpr | None:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        sub = sub.jaxpr if isinstance(sub, core.ClosedJaxpr) else sub
        if isinstance(sub, core.Jaxpr) and len(sub.invars) == len(eqn.invars):
            return sub
    return None


def _run(jaxpr: core.Jaxpr, ins: list[State], marks: dict) -> list[State]:
    env = dict(zip(jaxpr.invars, ins, strict=True))

    def read(var) -> State:
        return None if isinstance(var, core.Literal) else env.get(var)

    for eqn in jaxpr.eqns:
        states = [read(v) for v in eqn.invars]
        env.update(zip(eqn.outvars, _apply(eqn, states, marks), strict=True))
    return [read(v) for v in jaxpr.outvars]


def _apply(eqn, ins: list[State], marks: dict) -> list[State]:
    name = eqn.primitive.name
    if all(s is None for s in ins):  # weights, random initializers: nothing of the input
        return [None] * len(eqn.outvars)
    if name == "name":  # a marker from jax.ad_checkpoint.checkpoint_name
        marks[eqn.params["name"]] = (ins[0], _shape(eqn.invars[0]))
        return ins
    sub = _sub_jaxpr(eqn) if name in _CALLS else None
    if sub is not None:
        return _run(sub, ins, marks)
    rule = _RULES.get(name, _elementwise if name in _ELEMENTWISE else None)
    if rule is None:  # gather, scatter, cumsum, while, ...: not guessed
        return [_unknown(ins)] * len(eqn.outvars)
    return rule(eqn, ins)


def _exact(value: Fraction) -> int | Fraction:
    return value.numerator if value.denominator == 1 else value


def _axis_field(f: grid.Field | None, shape: tuple[int, ...]) -> AxisField | None:
    # Unknown, or varying along more than one dim (mid-way through a reshape), along the batch
    # or along the features (a flattened map: each element has a local field, but no grid).
    if f is None or len(f.dims) > 1 or (f.dims and f.dims[0] in (0, len(shape) - 1)):
        return None
    sizes = [Fraction(int(h - lo), f.den) + 1 for lo, h in zip(f.lo.flat, f.hi.flat, strict=True)]
    start = Fraction(int(f.lo.flat[0] + f.hi.flat[0]), 2 * f.den)
    if not f.dims:  # every unit sees the same positions
        return AxisField(_exact(sizes[0]), 0, _exact(start))
    period, single = f.periods[0], shape[f.dims[0]] == 1
    jump = Fraction(f.shifts[0], period * f.den)
    size = sizes[0] if single else max(sizes)
    return AxisField(_exact(size), _exact(jump), _exact(start), period == 1 or single)


def _report(state: State, shape: tuple[int, ...]) -> Fields:
    return None if state is None else tuple(_axis_field(f, shape) for f in state)


def trace_fields(
    jaxpr: core.ClosedJaxpr, spatial_axes: Sequence[int]
) -> tuple[dict[str, Fields], list[Fields]]:
    """Receptive fields in a jaxpr whose first input is the image (its `spatial_axes` tracked).

    Returns the fields at every `name` marker (`jax.ad_checkpoint.checkpoint_name(x, name)`),
    by name, and at every output of the jaxpr.
    """
    unit = np.zeros(1, np.int64)
    image = tuple(grid.Field((a,), (1,), (1,), unit, unit) for a in spatial_axes)
    marks: dict = {}
    ins = [image] + [None] * (len(jaxpr.jaxpr.invars) - 1)
    outs = _run(jaxpr.jaxpr, ins, marks)
    fields = {name: _report(state, shape) for name, (state, shape) in marks.items()}
    return fields, [_report(s, _shape(v)) for s, v in zip(outs, jaxpr.jaxpr.outvars, strict=True)]


def receptive_field(fn: Callable[[jax.Array], jax.Array], input_shape: Sequence[int]) -> Fields:
    """The field of `fn`'s output for an input of `input_shape` [B, *spatial, C] (traced only).

    `fn` is traced as it is: the fast forms of a model's layers (block convolutions, pooling by
    reshape) fold pixels into channels, which hides the fields, so let `fn` apply a model with
    plain `layer_options` (`cnnjax.models.layers.with_plain_forms`), as `cnnjax summary` does.
    """
    x = jax.ShapeDtypeStruct(tuple(input_shape), np.float32)
    closed = jax.make_jaxpr(fn)(x)
    return trace_fields(closed, range(1, len(input_shape) - 1))[1][0]
