"""Convolutions with few channels, computed in a form XLA:CPU runs faster.

A stride-1 2-D convolution between few channels (LeNet-5: 1 -> 6 and 6 -> 16, 5x5; a CIFAR
stem: 3 -> 16, 3x3) leaves XLA:CPU's kernels little to vectorize over. Folding every 2x2 block
of pixels into channels ("space to depth") turns it into a convolution with 4x the input and
output channels over a quarter of the positions: a k x k kernel becomes a (k + 2) // 2-wide
kernel over blocks whose taps are the original weights (and zeros), and the output blocks
unfold back into pixels. More multiply-adds (1.44x for 5x5, 1.78x for 3x3), fewer seconds where
the channels are few; past a few channels the extra work costs more than it saves, hence the
rule `_blocks_pay`: C_in x C_out <= 64 x k^2 / 9 (the timings it was drawn from, per layer:
benchmarks/results/fast_paths.json). The forward pass and the input gradient (itself a stride-1
convolution with the channels swapped) take the block form; the weight gradient is the plain
convolution's, which was the faster of the two for it. Used by `ConvBlock` when its
`layer_options.block_convolutions` is on (cnnjax/models/layers.py); everything else goes to
`lax.conv_general_dilated` unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BLOCK = 2
# Flax's layout (flax.linen.linear._conv_dimension_numbers) for [B, H, W, C] inputs and
# [kh, kw, C_in, C_out] kernels, the only one rewritten.
_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def convolution(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """`lax.conv_general_dilated`; in block form (forward and input gradient) where that pays."""
    plain = functools.partial(
        lax.conv_general_dilated,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if lhs.ndim != 4:
        return plain(lhs, rhs, window_strides, padding)
    dimension_numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    suits = (
        dimension_numbers == _NHWC
        and tuple(window_strides) == (1, 1)
        and all(tuple(d or (1, 1)) == (1, 1) for d in (lhs_dilation, rhs_dilation))
        and feature_group_count == batch_group_count == 1
        and preferred_element_type is None
        and _blocks_pay(*rhs.shape)
        and jnp.issubdtype(lhs.dtype, jnp.floating)
        and lhs.dtype == rhs.dtype
    )
    if not suits:
        return plain(lhs, rhs, window_strides, padding)
    if isinstance(padding, str):  # undilated, stride 1: the kernel alone sets the padding
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    pads = tuple((int(low), int(high)) for low, high in padding)
    if any(low < 0 or high < 0 for low, high in pads):
        return plain(lhs, rhs, window_strides, padding)
    return _lowered_convolution(lhs, rhs, pads, precision)


def _blocks_pay(kh: int, kw: int, channels: int, features: int) -> bool:
    """Whether the block form was faster for this kernel (measurements in the docstring)."""
    return min(kh, kw) >= 2 and 9 * channels * features <= 64 * kh * kw


def _either(x: jax.Array, w: jax.Array, pads, precision) -> jax.Array:
    if _blocks_pay(*w.shape):
        return _space_to_depth_convolution(x, w, pads, precision)
    return _plain(x, w, pads, precision)


def _plain(x: jax.Array, w: jax.Array, pads, precision) -> jax.Array:
    return lax.conv_general_dilated(
        x, w, (1, 1), pads, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _lowered_convolution(x: jax.Array, w: jax.Array, pads, precision) -> jax.Array:
    return _either(x, w, pads, precision)


def _space_to_depth_convolution(x: jax.Array, w: jax.Array, pads, precision) -> jax.Array:
    _, height, width, _ = x.shape
    kh, kw, _, features = w.shape
    out_h = height + sum(pads[0]) - kh + 1
    out_w = width + sum(pads[1]) - kw + 1
    # Block kernels of (k + 2) // 2 taps cover output blocks whose pixels start 0 or 1 into a
    # block; pad the input so that whole blocks cover every output block's receptive field.
    th, tw = (kh + 2) // BLOCK, (kw + 2) // BLOCK
    extra_h = BLOCK * th - kh - 1 + out_h % BLOCK
    extra_w = BLOCK * tw - kw - 1 + out_w % BLOCK
    x = jnp.pad(
        x, ((0, 0), (pads[0][0], pads[0][1] + extra_h), (pads[1][0], pads[1][1] + extra_w), (0, 0))
    )
    y = _plain(_to_blocks(x), _block_kernel(w, th, tw), ((0, 0), (0, 0)), precision)
    y = _from_blocks(y, features)
    return y[:, :out_h, :out_w]


def _to_blocks(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, 2*2*C], channels ordered (row in block, column, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // BLOCK, BLOCK, w // BLOCK, BLOCK, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // BLOCK, w // BLOCK, BLOCK * BLOCK * c)


def _from_blocks(y: jax.Array, features: int) -> jax.Array:
    """The inverse of `_to_blocks` for `features` channels per pixel."""
    b, h, w, _ = y.shape
    y = y.reshape(b, h, w, BLOCK, BLOCK, features).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, h * BLOCK, w * BLOCK, features)


def _block_kernel(w: jax.Array, th: int, tw: int) -> jax.Array:
    """[kh, kw, C, F] -> [th, tw, 4C, 4F]: block tap (a, b) maps input pixel (di, dj) of a
    block to output pixel (ei, ej) through the original tap (2a + di - ei, 2b + dj - ej)."""
    kh, kw, channels, features = w.shape
    # One zero row/column in front (tap -1) and enough behind (up to tap 2t - 1).
    padded = jnp.pad(w, ((1, BLOCK * th - kh), (1, BLOCK * tw - kw), (0, 0), (0, 0)))
    offset = np.arange(BLOCK)[:, None] - np.arange(BLOCK)[None, :] + 1  # [d, e]: d - e + 1
    rows = BLOCK * np.arange(th)[:, None, None] + offset  # [a, di, ei]
    cols = BLOCK * np.arange(tw)[:, None, None] + offset  # [b, dj, ej]
    kernel = padded[rows[:, None, :, None, :, None], cols[None, :, None, :, None, :]]
    # [a, b, di, dj, ei, ej, C, F] -> [a, b, (di, dj, C), (ei, ej, F)], as _to_blocks orders.
    kernel = kernel.transpose(0, 1, 2, 3, 6, 4, 5, 7)
    return kernel.reshape(th, tw, BLOCK * BLOCK * channels, BLOCK * BLOCK * features)


def _forward(x, w, pads, precision):
    return _lowered_convolution(x, w, pads, precision), (x, w)


def _backward(pads, precision, residuals, cotangent):
    x, w = residuals
    _, weight_pullback = jax.vjp(lambda w: _plain(x, w, pads, precision), w)
    (kh, kw), ((top, bottom), (left, right)) = w.shape[:2], pads
    if max(top, bottom) >= kh or max(left, right) >= kw:  # the transpose would crop: plain
        _, input_pullback = jax.vjp(lambda x: _plain(x, w, pads, precision), x)
        return input_pullback(cotangent)[0], weight_pullback(cotangent)[0]
    # The input gradient of a cross-correlation: the cotangent padded to full overlap,
    # correlated with the kernel flipped in space and with its channel axes swapped.
    transposed = jnp.flip(w, (0, 1)).swapaxes(2, 3)
    full = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    return _either(cotangent, transposed, full, precision), weight_pullback(cotangent)[0]


_lowered_convolution.defvjp(_forward, _backward)
