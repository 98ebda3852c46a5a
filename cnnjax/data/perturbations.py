"""Pure transforms of uint8 images, for invariance tests and pixel-permuted training
(data.pixel_permutation_seed).

Every function takes uint8 images [..., H, W, C] (any leading axes: a batch, or a batch of clips
[B, T, H, W, C], each frame transformed alike) and returns uint8 images of the same shape:
interpolated values are rounded to the nearest integer and clipped to [0, 255]. Content that
leaves the frame is lost and uncovered pixels are 0, the background of MNIST-like data. The
identities (shift 0, rotation 0, scale 1) return an unchanged copy, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Bilinear: the interpolation of a rotated or zoomed photograph that adds no ringing (a cubic
# spline overshoots at the sharp edges of MNIST-like strokes).
INTERPOLATION_ORDER = 1


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"images must be [..., H, W, C], got shape {images.shape}")
    return images


def shift_images(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`images` [..., H, W, C] moved `dy` pixels down and `dx` right (negative: up, left).

    Returns uint8 of the same shape; pixels shifted out are lost, uncovered ones are 0.
    """
    images = _check_images(images)
    height, width = images.shape[-3:-1]
    shifted = np.zeros_like(images)
    if abs(dy) >= height or abs(dx) >= width:
        return shifted  # everything left the frame
    # Output rows [max(dy, 0), H + min(dy, 0)) come from input rows shifted back by dy.
    out_rows = slice(max(dy, 0), height + min(dy, 0))
    in_rows = slice(max(-dy, 0), height + min(-dy, 0))
    out_cols = slice(max(dx, 0), width + min(dx, 0))
    in_cols = slice(max(-dx, 0), width + min(-dx, 0))
    shifted[..., out_rows, out_cols, :] = images[..., in_rows, in_cols, :]
    return shifted


def _interpolated(images: np.ndarray, transform) -> np.ndarray:
    """`transform(float32 [N, H, W, C]) -> float32` applied to `images` as one stack, rounded and
    clipped back to uint8 [..., H, W, C]."""
    shape = images.shape
    stack = images.reshape(-1, *shape[-3:]).astype(np.float32)  # [N, H, W, C]
    result = transform(stack)
    return np.clip(np.rint(result), 0, 255).astype(np.uint8).reshape(shape)


def rotate_images(images: np.ndarray, degrees: float) -> np.ndarray:
    """`images` [..., H, W, C] rotated by `degrees` counter-clockwise (as displayed, like
    np.rot90) about their centre, bilinear, corners filled with 0. Returns uint8 of the same
    shape; a multiple of 90 degrees of a square image equals np.rot90."""
    images = _check_images(images)
    if degrees == 0:
        return images.copy()
    import scipy.ndimage  # here: training imports this module for permute_pixels alone (0.25 s)

    def rotate(stack):
        return scipy.ndimage.rotate(
            stack,
            degrees,
            axes=(1, 2),
            reshape=False,  # the model's input size
            order=INTERPOLATION_ORDER,
            mode="constant",
            cval=0.0,
        )

    return _interpolated(images, rotate)


def scale_images(images: np.ndarray, factor: float) -> np.ndarray:
    """`images` [..., H, W, C] zoomed by `factor` about their centre, keeping their size: a
    factor above 1 zooms in (the border is cropped away), below 1 zooms out (the border is
    padded with 0). Bilinear; returns uint8 of the same shape."""
    images = _check_images(images)
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    if factor == 1:
        return images.copy()
    import scipy.ndimage

    height, width = images.shape[-3:-1]
    # Output pixel p samples the input at c + (p - c) / factor, c the centre ((size - 1) / 2):
    # affine_transform's matrix maps output to input coordinates, over [N, H, W, C].
    matrix = np.array([1.0, 1.0 / factor, 1.0 / factor, 1.0])
    centre = np.array([0.0, (height - 1) / 2, (width - 1) / 2, 0.0])
    offset = centre - matrix * centre

    def zoom(stack):
        return scipy.ndimage.affine_transform(
            stack, matrix, offset=offset, order=INTERPOLATION_ORDER, mode="constant", cval=0.0
        )

    return _interpolated(images, zoom)


def pixel_permutation(height: int, width: int, seed: int) -> np.ndarray:
    """One fixed permutation of the `height * width` positions (row-major) from
    np.random.default_rng(seed): int64 [H * W]; entry i is the input position shown at i."""
    return np.random.default_rng(seed).permutation(height * width)


def permute_pixels(images: np.ndarray, seed: int, *, inverse: bool = False) -> np.ndarray:
    """`images` [..., H, W, C] with their H * W positions shuffled by `pixel_permutation(H, W,
    seed)`: the same permutation for every image, frame and channel (a fully connected net is
    indifferent to it, a convolutional net loses its locality prior). `inverse` undoes it.
    Returns uint8 of the same shape."""
    images = _check_images(images)
    height, width, channels = images.shape[-3:]
    order = pixel_permutation(height, width, seed)
    if inverse:
        order = np.argsort(order)
    flat = images.reshape(*images.shape[:-3], height * width, channels)
    return flat[..., order, :].reshape(images.shape)


def under_permutation(
    transform: Callable[[np.ndarray], np.ndarray], seed: int
) -> Callable[[np.ndarray], np.ndarray]:
    """`transform` (uint8 [..., H, W, C] -> same) made to act on images whose pixels
    `permute_pixels(seed)` shuffled as it acts on the unshuffled ones: unshuffle, transform,
    shuffle again. A shift then moves the object in the images of a run trained on shuffled
    pixels (data.pixel_permutation_seed), not the shuffled pattern; seed -1: `transform`."""
    if seed < 0:
        return transform

    def transformed(images: np.ndarray) -> np.ndarray:
        original = permute_pixels(images, seed, inverse=True)
        return permute_pixels(transform(original), seed)

    return transformed
