"""Inception v3 (Szegedy et al. 2016, "Rethinking the Inception architecture"): factorized
convolutions, as the reference implementation (torchvision) builds it, without the auxiliary
classifier: 23,834,568 parameters, 5.7 GMACs at 299x299.

- `InceptionA`: a 5x5 branch and a 5x5 factorized into two 3x3 (section 3.1);
- `InceptionB` / `InceptionD`: grid reductions with parallel stride-2 branches (section 5);
- `InceptionC`: 7x7 factorized into 1x7 and 7x1 (asymmetric factorization, section 3.2);
- `InceptionE`: the expanded coarsest-grid module with parallel 1x3 and 3x1 outputs.
Every convolution is conv (no bias) -> normalization -> activation.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models.layers import ConvBlock, pool


class _Module(nn.Module):
    activation: str
    normalization: str

    def conv(self, y, features, kernel, strides=1, train=False):
        padding = "SAME" if strides == 1 else "VALID"
        return ConvBlock(features, kernel, strides, padding, self.activation, self.normalization)(
            y, train=train
        )

    @staticmethod
    def avg_pool(y):
        return nn.avg_pool(y, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


class InceptionA(_Module):
    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = lambda y, f, k, s=1: self.conv(y, f, k, s, train)  # noqa: E731
        return jnp.concatenate(
            [
                c(x, 64, 1),
                c(c(x, 48, 1), 64, 5),
                c(c(c(x, 64, 1), 96, 3), 96, 3),
                c(self.avg_pool(x), self.pool_features, 1),
            ],
            axis=-1,
        )


class InceptionB(_Module):
    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = lambda y, f, k, s=1: self.conv(y, f, k, s, train)  # noqa: E731
        return jnp.concatenate(
            [
                c(x, 384, 3, 2),
                c(c(c(x, 64, 1), 96, 3), 96, 3, 2),
                pool(x, "max", 3, 2),
            ],
            axis=-1,
        )


class InceptionC(_Module):
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = lambda y, f, k, s=1: self.conv(y, f, k, s, train)  # noqa: E731
        c7 = self.channels_7x7
        seven = c(c(c(x, c7, 1), c7, (1, 7)), 192, (7, 1))
        double = c(x, c7, 1)
        for features, kernel in ((c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))):
            double = c(double, features, kernel)
        return jnp.concatenate([c(x, 192, 1), seven, double, c(self.avg_pool(x), 192, 1)], axis=-1)


class InceptionD(_Module):
    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = lambda y, f, k, s=1: self.conv(y, f, k, s, train)  # noqa: E731
        seven = c(c(c(x, 192, 1), 192, (1, 7)), 192, (7, 1))
        return jnp.concatenate(
            [
                c(c(x, 192, 1), 320, 3, 2),
                c(seven, 192, 3, 2),
                pool(x, "max", 3, 2),
            ],
            axis=-1,
        )


class InceptionE(_Module):
    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = lambda y, f, k, s=1: self.conv(y, f, k, s, train)  # noqa: E731
        three = c(x, 384, 1)
        double = c(c(x, 448, 1), 384, 3)
        return jnp.concatenate(
            [
                c(x, 320, 1),
                c(three, 384, (1, 3)),
                c(three, 384, (3, 1)),
                c(double, 384, (1, 3)),
                c(double, 384, (3, 1)),
                c(self.avg_pool(x), 192, 1),
            ],
            axis=-1,
        )


class InceptionV3(nn.Module):
    """`(x [B, 299, 299, 3], *, train) -> logits [B, num_classes]` (at least 75x75 inputs)."""

    num_classes: int = 1000
    activation: str = "relu"
    normalization: str = "batch"
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        act, norm = self.activation, self.normalization
        for features, strides, padding in ((32, 2, "VALID"), (32, 1, "VALID"), (64, 1, "SAME")):
            x = ConvBlock(features, 3, strides, padding, act, norm)(x, train=train)
        x = pool(x, "max", 3, 2)
        x = ConvBlock(80, 1, 1, "VALID", act, norm)(x, train=train)
        x = ConvBlock(192, 3, 1, "VALID", act, norm)(x, train=train)
        x = pool(x, "max", 3, 2)  # [B, 35, 35, 192] at 299x299
        for pool_features in (32, 64, 64):
            x = InceptionA(act, norm, pool_features)(x, train=train)
        x = InceptionB(act, norm)(x, train=train)  # [B, 17, 17, 768]
        for channels in (128, 160, 160, 192):
            x = InceptionC(act, norm, channels)(x, train=train)
        x = InceptionD(act, norm)(x, train=train)  # [B, 8, 8, 1280]
        x = InceptionE(act, norm)(x, train=train)
        x = InceptionE(act, norm)(x, train=train)  # [B, 8, 8, 2048]
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
