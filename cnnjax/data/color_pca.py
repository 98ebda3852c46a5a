"""AlexNet's "fancy PCA" colour augmentation (Krizhevsky et al. 2012, section 4.1).

Each training image gets one colour offset, added to every pixel:

    offset = sum_i p_i * alpha_i * lambda_i,    alpha_i ~ N(0, std)

where (lambda_i, p_i) are the eigenvalues and eigenvectors of the C x C covariance of the
training set's pixel colours (for 1 channel: a brightness jitter). AlexNet used std = 0.1.

Scale: the covariance is of pixels in [0, 1] (x / 255), as fb.resnet.torch applies the
augmentation, so the offset is in [0, 1] units and 255 times that in uint8 levels. Batches stay
uint8 (the steps normalize on the device), so the offset is rounded to whole levels (1/255)
before it is added and the result clipped to [0, 255]. AlexNet's offsets are a few levels, so
the rounding keeps their size: with std 0.1, Fashion-MNIST's one eigenvalue (0.1246, the
variance of x / 255) gives offsets of standard deviation 0.0125, 3.2 levels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Pixels converted to float64 at a time by `color_pca`: 8 MiB per channel, whatever the split.
_CHUNK_PIXELS = 1 << 20


class ColorPCA(NamedTuple):
    """The eigen-decomposition of a pixel colour covariance (of x / 255), largest first."""

    eigenvalues: np.ndarray  # float64 [C], descending, >= 0
    eigenvectors: np.ndarray  # float64 [C, C]: column i is the eigenvector of eigenvalue i


# The ImageNet decomposition that fb.resnet.torch publishes (datasets/imagenet.lua, `pca`,
# "computed from random subset of ImageNet training images") and applies to pixels in [0, 1]
# (its Lighting transform, AlexNet-style), the one the later implementations copy. Used as
# published for the streaming (ImageNet-style) inputs, which are normalized with ImageNet's
# statistics too; no pass over 1.28M JPEGs recomputes it.
IMAGENET_PCA = ColorPCA(
    eigenvalues=np.array([0.2175, 0.0188, 0.0045]),
    eigenvectors=np.array(
        [
            [-0.5675, 0.7192, 0.4009],
            [-0.5808, -0.0045, -0.8140],
            [-0.5836, -0.6948, 0.4203],
        ]
    ),
)


def color_pca(images: np.ndarray) -> ColorPCA:
    """The eigen-decomposition of the covariance of the pixel colours of `images` / 255.

    `images`: uint8 [N, ..., C] (e.g. a whole training split held in memory). Returns a
    ColorPCA: eigenvalues [C] sorted descending (tiny negative rounding clipped to 0) and
    eigenvectors [C, C] as columns, each signed so that its largest-magnitude entry is positive
    (numpy's sign is arbitrary; this one is the same on every machine).

    The sums are taken over chunks of about a million pixels, so no float64 copy of the split
    is made, and they are exact: integer products of uint8 values summed in float64 stay exact
    below 2^53 (about 10^11 pixels).
    """
    channels = images.shape[-1]
    pixels = images.reshape(-1, channels)  # [P, C], a view
    total = np.zeros(channels)
    products = np.zeros((channels, channels))
    for start in range(0, len(pixels), _CHUNK_PIXELS):
        chunk = pixels[start : start + _CHUNK_PIXELS].astype(np.float64)  # [p, C]
        total += chunk.sum(0)
        products += chunk.T @ chunk
    count = len(pixels)
    mean = total / count
    covariance = (products / count - np.outer(mean, mean)) / 255.0**2  # of x / 255
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    largest = np.abs(eigenvectors).argmax(0)
    signs = np.sign(eigenvectors[largest, np.arange(channels)])
    return ColorPCA(np.maximum(eigenvalues, 0.0), eigenvectors * signs)


def color_offsets(alphas: np.ndarray, pca: ColorPCA) -> np.ndarray:
    """The colour offsets sum_i p_i alpha_i lambda_i: `alphas` [..., C] -> float64 [..., C], in
    units of x / 255."""
    return (np.asarray(alphas, np.float64) * pca.eigenvalues) @ pca.eigenvectors.T


def shift_colors(images: np.ndarray, alphas: np.ndarray, pca: ColorPCA) -> np.ndarray:
    """`images` with each image's colour offset added: uint8 [B, H, W, C] with `alphas` [B, C]
    (or one image [H, W, C] with `alphas` [C]) -> uint8 of the same shape.

    The offset is rounded to whole levels (255 * offset) and the sum clipped to [0, 255].
    """
    # Offsets past +-255 levels saturate every pixel alike: clipped there, they fit int16.
    levels = np.clip(np.rint(255.0 * color_offsets(alphas, pca)), -255, 255).astype(np.int16)
    shifted = images.astype(np.int16) + levels[..., None, None, :]
    return np.clip(shifted, 0, 255).astype(np.uint8)
