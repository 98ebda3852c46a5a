"""U-Net (Ronneberger, Fischer & Brox 2015) for per-pixel classification.

Contracting path: per level two 3x3 conv-norm-act and a 2x2 max-pool, doubling the features.
Expanding path: up-convolution (2x nearest upsampling then a 2x2 convolution halving the
features), concatenation with the contracting path's features of the same level (the skip
connections across the U), two 3x3 conv-norm-act. A 1x1 convolution gives per-pixel logits.
The paper's convolutions are unpadded and crop the skips; here they are padded ("SAME"), the
common modern choice, so the output has the input's size (H, W divisible by 2**depth).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models.layers import ConvBlock, LayerOptions, pool


class UNet(nn.Module):
    """`(x [B, H, W, C], *, train) -> per-pixel logits [B, H, W, num_classes]`."""

    num_classes: int = 2
    activation: str = "relu"
    normalization: str = "batch"
    dropout_rate: float = 0.0  # at the bottom of the U, as in the paper
    base_features: int = 64
    depth: int = 4  # number of 2x2 poolings
    layer_options: LayerOptions = LayerOptions()

    def _conv(self, features: int, kernel: int) -> ConvBlock:
        return ConvBlock(
            features,
            kernel,
            1,
            "SAME",
            self.activation,
            self.normalization,
            layer_options=self.layer_options,
        )

    def _double_conv(self, x: jax.Array, features: int, train: bool) -> jax.Array:
        for _ in range(2):
            x = self._conv(features, 3)(x, train=train)
        return x

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        skips = []
        for level in range(self.depth):
            x = self._double_conv(x, self.base_features * 2**level, train)
            skips.append(x)
            x = pool(x, "max", window=2, stride=2, layer_options=self.layer_options)
        x = self._double_conv(x, self.base_features * 2**self.depth, train)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        for level in reversed(range(self.depth)):
            features = self.base_features * 2**level
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # 2x nearest upsampling
            x = self._conv(features, 2)(x, train=train)  # the up-convolution: halves features
            x = jnp.concatenate([skips[level], x], axis=-1)
            x = self._double_conv(x, features, train)
        return nn.Conv(self.num_classes, (1, 1))(x)
