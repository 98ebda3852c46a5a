"""uint8 images -> the model's float32 inputs, computed on the device inside the jitted steps.

The input pipelines hand over uint8 batches (a quarter of float32's bytes to copy to the
device) and the steps normalize them with the run's `Normalization`, a field of the steps'
`StepOptions`: a different normalization is a different step, never a hidden setting.

`(x / 255 - mean) / std` is computed as `x * scale - offset` with `scale = 1 / (255 std)` and
`offset = mean / std` (worked out in float64, then rounded to float32), one multiply-add per
value. The host pipelines of earlier versions rounded after each operation, so inputs may differ
from theirs in the last bit of float32 (XLA fuses the multiply and the subtract, and it divides
by a reciprocal: no float32 formula on the device reproduces numpy's bit for bit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Normalization:
    """`x * scale - offset` per entry of the last (channel) axis of uint8 images, in float32.

    Hashable (tuples of floats, each exactly a float32), so that it can be a static part of a
    jitted step; build it with `standardize(mean, std)` or `unit_range(channels)`.
    """

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @classmethod
    def standardize(cls, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        """(x / 255 - mean) / std per channel, with `mean` and `std` statistics of x / 255."""
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        return cls(_float32s(1.0 / (255.0 * std)), _float32s(mean / std))

    @classmethod
    def unit_range(cls, channels: int) -> Normalization:
        """x / 255: values in [0, 1]."""
        return cls(_float32s(np.full(channels, 1.0 / 255.0)), (0.0,) * channels)

    def __call__(self, images: jax.Array | np.ndarray) -> jax.Array:
        """uint8 (or any integer) images [..., C] -> float32 [..., C]."""
        scale = jnp.asarray(self.scale, jnp.float32)
        offset = jnp.asarray(self.offset, jnp.float32)
        return jnp.asarray(images).astype(jnp.float32) * scale - offset


def _float32s(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, np.float32))


def model_inputs(images: jax.Array, normalization: Normalization | None) -> jax.Array:
    """The images a model takes: integer (uint8) images normalized, float images (a user's own
    input, already normalized) as they are. Raises ValueError for integer images without a
    normalization."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images
    if normalization is None:
        raise ValueError(
            f"{images.dtype} images need a Normalization (StepOptions.normalization) to become "
            "the model's float inputs"
        )
    return normalization(images)
