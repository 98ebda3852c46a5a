"""Receptive-field arithmetic: exact per-axis interval tables and the operations on them.

Along each spatial axis of the input, a layer's field has a size r (input positions one unit
sees), a jump j (input positions between the centers of adjacent units' fields) and a start s
(input coordinate of the first unit's field center; pixel centers are 0, 1, ...), as defined by
Araujo et al. 2019 and Dumoulin & Visin 2016: `AxisField` reports them. Padding counts as part of
a field (positions outside the input continue the grid), so r is the same for every unit and s
can be negative.

A `Field` is the exact form behind an `AxisField`: for each unit index along the tensor dims it
depends on, the interval [lo, hi] of input positions the unit sees, kept as a periodic integer
table (unit i + p sees the field of unit i shifted by P). A plain convolutional layer has period
1 (the affine case of the papers); nearest upsampling gives period 2 (units 2i and 2i + 1 share a
field), which keeps U-Net decoders exact. The operations here (`affine_map`, `window`, `reduce`,
`dilate_pad`, `rename`, `union`, `reshape`, `concat_axis`) are what one tensor operation does to
a field; `cnnjax.inspect.receptive_field` applies them while reading a jaxpr. Each returns None
(unknown) rather than a guess when the result has no exact table of at most `MAX_TABLE` entries.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np

MAX_TABLE = 1 << 18  # entries of a periodic table kept exactly; a larger one makes the axis unknown


@dataclasses.dataclass(frozen=True)
class AxisField:
    """A layer's receptive field along one input axis: int values, Fraction where fractional.

    `uniform` is False after upsampling, where neighbouring units see fields of different
    sizes: `size` is then the largest and `jump` the mean spacing of their centers.
    """

    size: int | Fraction
    jump: int | Fraction
    start: int | Fraction
    uniform: bool = True


Fields = tuple[AxisField | None, ...] | None  # per input spatial axis; None: not derived from it


@dataclasses.dataclass(frozen=True, eq=False)
class Field:
    """Unit idx sees input positions [lo, hi] / den, with lo = lo_table[idx mod periods] +
    sum((idx // periods) * shifts) and hi alike: integers, so that the algebra is exact and fast
    (den > 1 only after transposed convolutions or interior padding)."""

    dims: tuple  # the tensor dims the field depends on, in the order of the table axes
    periods: tuple[int, ...]
    shifts: tuple[int, ...]
    lo: np.ndarray  # int64 tables of shape `periods`
    hi: np.ndarray
    den: int = 1

    def __post_init__(self):  # numpy turns 0-d results into scalars: keep arrays, plain ints
        for name in ("lo", "hi"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        object.__setattr__(self, "shifts", tuple(int(s) for s in self.shifts))


def _known(op: Callable) -> Callable:
    """An unknown field (None) stays unknown through `op`."""

    @functools.wraps(op)
    def wrapped(f, *args):
        return None if f is None else op(f, *args)

    return wrapped


def _take(table: np.ndarray, axis: int, period: int, shift: int, indices) -> np.ndarray:
    """`table` (one axis periodic) at the units `indices` (any integers) of that axis."""
    indices = np.asarray(indices, dtype=np.int64)
    offset = indices // period * shift
    offset = offset.reshape([-1 if a == axis else 1 for a in range(table.ndim)])
    return np.take(table, indices % period, axis=axis) + offset


def _reindex(f: Field, dim, indices) -> tuple[np.ndarray, np.ndarray]:
    k = f.dims.index(dim)
    return tuple(_take(t, k, f.periods[k], f.shifts[k], indices) for t in (f.lo, f.hi))


def _set(seq: tuple, k: int, value) -> tuple:
    return seq[:k] + (value,) + seq[k + 1 :]


def _with(f: Field, dim, period: int, shift: int, tables: tuple) -> Field | None:
    """`f` with a new period, shift and tables for `dim`, reduced to its smallest period."""
    if tables[0].size > MAX_TABLE:
        return None
    k = f.dims.index(dim)
    f = Field(f.dims, _set(f.periods, k, period), _set(f.shifts, k, shift), *tables, f.den)
    return _minimize(f, dim)


def _minimize(f: Field, dim) -> Field:
    """The smallest period that describes `f` along `dim`; the dim drops out when the field
    does not depend on it."""
    if dim not in f.dims:
        return f
    k = f.dims.index(dim)
    period, shift, lo, hi = f.periods[k], f.shifts[k], f.lo, f.hi
    part = functools.partial(np.take, axis=k)
    for q in range(1, period):
        if period % q or shift * q % period:
            continue
        step = shift * q // period
        if all(
            np.array_equal(part(t, range(q, period)), part(t, range(period - q)) + step)
            for t in (lo, hi)
        ):
            period, shift, lo, hi = q, step, part(lo, range(q)), part(hi, range(q))
            break
    if period == 1 and shift == 0:
        keep = lambda seq: seq[:k] + seq[k + 1 :]  # noqa: E731
        return Field(
            keep(f.dims),
            keep(f.periods),
            keep(f.shifts),
            lo[(slice(None),) * k + (0,)],
            hi[(slice(None),) * k + (0,)],
            f.den,
        )
    return Field(f.dims, _set(f.periods, k, period), _set(f.shifts, k, shift), lo, hi, f.den)


@_known
def affine_map(f: Field, dim, a: int, b: int) -> Field | None:
    """The field of the tensor whose unit i is unit a * i + b of this one along `dim` (slice,
    padding, reversal; a = 0 keeps one unit)."""
    if dim not in f.dims:
        return f
    k = f.dims.index(dim)
    g = math.gcd(f.periods[k], abs(a))  # a = 0: g is the period and one unit is kept
    period = f.periods[k] // g
    tables = _reindex(f, dim, [a * i + b for i in range(period)])
    return _with(f, dim, period, f.shifts[k] * a // g if a else 0, tables)


@_known
def window(f: Field, dim, size: int, stride: int, dilation: int) -> Field | None:
    """Unit o sees the union of units o * stride + t * dilation, t < size (a conv or a pool)."""
    if dim not in f.dims:
        return f
    k = f.dims.index(dim)
    g = math.gcd(f.periods[k], stride)
    period = f.periods[k] // g
    units = np.arange(period)[:, None] * stride + np.arange(size)[None, :] * dilation
    lo, hi = _reindex(f, dim, units.ravel())
    shape = lo.shape[:k] + (period, size) + lo.shape[k + 1 :]
    tables = lo.reshape(shape).min(axis=k + 1), hi.reshape(shape).max(axis=k + 1)
    return _with(f, dim, period, f.shifts[k] * (stride // g), tables)


@_known
def reduce(f: Field, dim, n: int) -> Field | None:
    """The union over the n units along `dim`, which disappears (a sum, mean or contraction)."""
    if dim not in f.dims:
        return f
    k = f.dims.index(dim)
    lo, hi = _reindex(f, dim, range(n))
    return _with(f, dim, 1, 0, (lo.min(axis=k, keepdims=True), hi.max(axis=k, keepdims=True)))


@_known
def dilate_pad(f: Field, dim, pad_lo: int, factor: int) -> Field | None:
    """factor - 1 units inserted between neighbours, then pad_lo units in front (lax.pad, lhs
    dilation): new unit x sits at the fractional unit (x - pad_lo) / factor of the old grid."""
    if factor == 1:
        return affine_map(f, dim, 1, -pad_lo)
    if dim not in f.dims:
        return f
    k = f.dims.index(dim)
    if f.periods[k] != 1:  # between the units of a non-affine grid there is no defined position
        return None
    shift = f.shifts[k]  # over den * factor the other shifts scale up; this one stays
    shifts = _set(tuple(s * factor for s in f.shifts), k, shift)
    tables = (t * factor - pad_lo * shift for t in (f.lo, f.hi))
    return Field(f.dims, f.periods, shifts, *tables, f.den * factor)


@_known
def rename(f: Field, mapping: dict) -> Field:
    """`f` over the tensor dims renamed by `mapping` (transpose, squeeze, broadcast)."""
    return dataclasses.replace(f, dims=tuple(mapping[d] for d in f.dims))


def _align(f: Field, dims: list, den: int) -> Field:
    """`f` over denominator `den` with table axes for all of `dims` in that order."""
    scale, missing = den // f.den, [d for d in dims if d not in f.dims]
    extra = (1,) * len(missing)
    order = [(f.dims + tuple(missing)).index(d) for d in dims]
    pick = lambda seq: tuple(seq[i] for i in order)  # noqa: E731
    shifts = tuple(s * scale for s in f.shifts) + (0,) * len(missing)
    tables = ((t * scale).reshape(t.shape + extra).transpose(order) for t in (f.lo, f.hi))
    return Field(tuple(dims), pick(f.periods + extra), pick(shifts), *tables, den)


def union(a: Field | None, b: Field | None, shape: Sequence[int]) -> Field | None:
    """Per unit, the span of what it sees through `a` and through `b`."""
    if a is None or b is None:
        return None
    dims, den = list(dict.fromkeys(a.dims + b.dims)), math.lcm(a.den, b.den)
    a, b = _align(a, dims, den), _align(b, dims, den)
    if any(
        sa * pb != sb * pa
        for pa, sa, pb, sb in zip(a.periods, a.shifts, b.periods, b.shifts, strict=True)
    ):
        return _covering(a, b, shape)
    for k, dim in enumerate(dims):  # both tables over the common period
        period = math.lcm(a.periods[k], b.periods[k])
        a, b = (
            Field(
                f.dims,
                _set(f.periods, k, period),
                _set(f.shifts, k, f.shifts[k] * period // f.periods[k]),
                *_reindex(f, dim, range(period)),
                den,
            )
            for f in (a, b)
        )
    f = Field(a.dims, a.periods, a.shifts, np.minimum(a.lo, b.lo), np.maximum(a.hi, b.hi), den)
    for dim in dims:
        f = _minimize(f, dim)
    return f


def _grid(f: Field, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The tables over every real unit (indices within `shape`)."""
    tables = (f.lo, f.hi)
    for k, dim in enumerate(f.dims):
        tables = [_take(t, k, f.periods[k], f.shifts[k], range(shape[dim])) for t in tables]
    return tuple(tables)


def _covering(a: Field, b: Field, shape: Sequence[int]) -> Field | None:
    """Of two aligned fields growing at different rates, the one that contains the other at
    every unit (a normalization's global statistics around a local field), else unknown."""
    if math.prod(shape[d] for d in a.dims) > MAX_TABLE:
        return None
    (alo, ahi), (blo, bhi) = _grid(a, shape), _grid(b, shape)
    if np.all(alo <= blo) and np.all(ahi >= bhi):
        wider = a
    elif np.all(blo <= alo) and np.all(bhi >= ahi):
        wider = b
    else:
        return None
    for dim in a.dims:  # drop the dims that alignment added
        wider = _minimize(wider, dim)
    return wider


def _reshape_groups(old: Sequence[int], new: Sequence[int]) -> list[tuple[list, list]]:
    """Consecutive runs of old and new dims (size-1 dims left out) with equal element counts."""
    a = [d for d, n in enumerate(old) if n != 1]
    b = [d for d, n in enumerate(new) if n != 1]
    groups, i, j = [], 0, 0
    while i < len(a):
        gin, gout, pin, pout = [a[i]], [b[j]], old[a[i]], new[b[j]]
        i, j = i + 1, j + 1
        while pin != pout:
            if pin < pout:
                gin, pin, i = gin + [a[i]], pin * old[a[i]], i + 1
            else:
                gout, pout, j = gout + [b[j]], pout * new[b[j]], j + 1
        groups.append((gin, gout))
    return groups


@_known
def _merge(f: Field, group: list, sizes: Sequence[int]) -> Field | None:
    """Row-major merge of the dims `group` into one dim "merged", whose period is one period of
    the outer dim times all inner units (the field of a repeat or a flatten is not affine)."""
    others = [d for d in f.dims if d not in group]
    f = _align(f, others + group, f.den)
    k = len(others)
    period, shift = f.periods[k], f.shifts[k]
    counts = [period] + [sizes[d] for d in group[1:]]
    if f.lo.size // math.prod(f.periods[k:]) * math.prod(counts) > MAX_TABLE:
        return None
    tables = (f.lo, f.hi)
    for i, n in enumerate(counts):
        tables = [_take(t, k + i, f.periods[k + i], f.shifts[k + i], range(n)) for t in tables]
    tables = [t.reshape(t.shape[:k] + (-1,)) for t in tables]
    merged = Field(
        tuple(others) + ("merged",),
        f.periods[:k] + (math.prod(counts),),
        f.shifts[:k] + (shift,),
        *tables,
        f.den,
    )
    return _minimize(merged, "merged")


@_known
def _split(f: Field, names: list, sizes: list[int]) -> Field | None:
    """Row-major split of the dim "merged" into dims `names` of `sizes`."""
    if "merged" not in f.dims:
        return f
    k = f.dims.index("merged")
    period, shift = f.periods[k], f.shifts[k]
    strides = [math.prod(sizes[i + 1 :]) for i in range(len(sizes))]
    periods = tuple(period // math.gcd(period, s) for s in strides)
    shifts = tuple(shift * (s // math.gcd(period, s)) for s in strides)
    if f.lo.size // period * math.prod(periods) > MAX_TABLE:
        return None
    residues = sum(r * s for r, s in zip(np.indices(periods), strides, strict=True))
    around = lambda seq, mid: seq[:k] + tuple(mid) + seq[k + 1 :]  # noqa: E731
    tables = (t.reshape(around(t.shape, periods)) for t in _reindex(f, "merged", residues.ravel()))
    f = Field(
        around(f.dims, names), around(f.periods, periods), around(f.shifts, shifts), *tables, f.den
    )
    for name in names:
        f = _minimize(f, name)
    return f


@_known
def reshape(f: Field, old: Sequence[int], new: Sequence[int]) -> Field | None:
    """The field after a row-major reshape from shape `old` to `new`: each run of dims with
    equal element counts is merged, then split into the new dims."""
    for dim in [d for d in f.dims if old[d] == 1]:
        f = affine_map(f, dim, 0, 0)
    mapping = {}
    for gin, gout in _reshape_groups(old, new):
        if f is None or not set(gin) & set(f.dims):
            continue
        if len(gin) == len(gout) == 1:
            mapping[gin[0]] = ("new", gout[0])
            continue
        f = _split(_merge(f, gin, old), [("new", d) for d in gout], [new[d] for d in gout])
    if f is None:
        return None
    f = rename(f, {d: mapping.get(d, d) for d in f.dims})
    return rename(f, {d: d[1] for d in f.dims})  # every dim is ("new", d) by now


def concat_axis(fields: tuple, sizes: list[int], dim: int) -> Field | None:
    """Units laid end to end along `dim`: exact when the joined fields repeat a period at least
    twice (a shorter run would leave the grid beyond the units a guess)."""
    if any(f is None for f in fields):
        return None
    if all(dim not in f.dims and _same(f, fields[0]) for f in fields):
        return fields[0]
    if any(set(f.dims) - {dim} for f in fields):
        return None
    den = math.lcm(*(f.den for f in fields))
    parts = []
    for f, n in zip(fields, sizes, strict=True):
        f = _align(f, [dim], den)
        parts.append(_reindex(f, dim, range(n)))
    lo, hi = (np.concatenate(t) for t in zip(*parts, strict=True))
    for period in range(1, len(lo) // 2 + 1):
        step = int(lo[period] - lo[0])
        if all(np.array_equal(t[period:], t[:-period] + step) for t in (lo, hi)):
            return _minimize(Field((dim,), (period,), (step,), lo[:period], hi[:period], den), dim)
    if len(lo) == 1:
        return _minimize(Field((dim,), (1,), (0,), lo, hi, den), dim)
    return None


def _same(a: Field, b: Field) -> bool:
    same = (a.dims, a.periods, a.shifts, a.den) == (b.dims, b.periods, b.shifts, b.den)
    return same and np.array_equal(a.lo, b.lo) and np.array_equal(a.hi, b.hi)
