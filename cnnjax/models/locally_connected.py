"""A locally connected layer: a convolution's connectivity without its weight sharing.

Each output position has its own kernel over the same receptive field a convolution would read
(Taigman et al.'s DeepFace, LeCun's "weight sharing vs not"), so the layer has out_h x out_w
times a convolution's weights. The parameters are laid out as Keras' LocallyConnected2D:
kernel [out_h, out_w, kh * kw * C_in, features] with the receptive field flattened in
(row, column, channel) order, bias [out_h, out_w, features]; a convolution kernel
[kh, kw, C_in, F] reshaped to [kh * kw * C_in, F] and repeated at every position is the
convolution itself.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_NHWC = ("NHWC", "HWIO", "NHWC")


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class LocallyConnected2D(nn.Module):
    """`__call__(x [B, H, W, C_in]) -> [B, out_h, out_w, features]`, out_h and out_w those of
    a convolution with the same kernel size, strides and padding ("VALID", "SAME" or an int:
    pixels on every side)."""

    features: int
    kernel_size: int | tuple[int, int]
    strides: int = 1
    padding: str | int = "VALID"
    use_bias: bool = True
    # Fan-in kh * kw * C_in per position, as a convolution's (the position axes are batch axes).
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal(
        in_axis=-2, out_axis=-1, batch_axis=(0, 1)
    )
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = _pair(self.kernel_size)
        padding = self.padding if isinstance(self.padding, str) else [(self.padding,) * 2] * 2
        # The receptive field of every output position, flattened in (channel, row, column)
        # order: lax's layout of patches.
        patches = jax.lax.conv_general_dilated_patches(
            x, (kh, kw), _pair(self.strides), padding, dimension_numbers=_NHWC
        )  # [B, out_h, out_w, C_in * kh * kw]
        batch, out_h, out_w, _ = patches.shape
        channels = x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (out_h, out_w, kh * kw * channels, self.features)
        )
        # Both in (channel, row * column) form, contracted at once: no loop over positions.
        patches = patches.reshape(batch, out_h, out_w, channels, kh * kw)
        taps = kernel.reshape(out_h, out_w, kh * kw, channels, self.features).astype(x.dtype)
        y = jnp.einsum("bhwcp,hwpcf->bhwf", patches, taps)  # [B, out_h, out_w, features]
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (out_h, out_w, self.features))
            y = y + bias.astype(y.dtype)
        return y
