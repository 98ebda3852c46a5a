"""GoogLeNet / Inception v1 (Szegedy et al. 2015), as the common reference implementation
(torchvision) builds it: every convolution without bias and followed by batch norm, and the
"5x5" branch with a 3x3 kernel (a quirk kept for weight compatibility; `paper_5x5=True` gives the
paper's 5x5). 6,624,904 parameters without the auxiliary classifiers, 1.5 GMACs at 224x224.

With `aux_logits=True`, the two auxiliary classifiers after inception 4a and 4d run in training
and their logits are sown as `intermediates/aux_logits`; the train step adds their loss with
weight 0.3, as in the paper. The module's output stays the main logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models.layers import ConvBlock, adaptive_avg_pool, get_activation

# (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection) per module: Table 1 of the paper.
INCEPTION_3 = ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64))
INCEPTION_4 = (
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
)
INCEPTION_5 = ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128))


def max_pool_ceil(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """Max-pooling whose output size rounds up (PyTorch's ceil_mode): partial windows count."""
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size + 2 * padding - window) // stride) + 1
        pads.append((padding, max(0, (out - 1) * stride + window - size - padding)))
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


class Inception(nn.Module):
    """Four parallel branches concatenated on channels."""

    filters: tuple[int, ...]
    activation: str
    normalization: str
    wide_kernel: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        f1, f3r, f3, f5r, f5, fpool = self.filters

        def conv(features, kernel, y):
            padding = kernel // 2
            return ConvBlock(features, kernel, 1, padding, self.activation, self.normalization)(
                y, train=train
            )

        branches = [
            conv(f1, 1, x),
            conv(f3, 3, conv(f3r, 1, x)),
            conv(f5, self.wide_kernel, conv(f5r, 1, x)),
            conv(fpool, 1, max_pool_ceil(x, 3, 1, padding=1)),
        ]
        return jnp.concatenate(branches, axis=-1)


class AuxClassifier(nn.Module):
    """Average pool to 4x4, 1x1 conv 128, fc 1024, dropout 0.7, fc classes."""

    num_classes: int
    activation: str
    normalization: str

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = adaptive_avg_pool(x, 4)
        x = ConvBlock(128, 1, 1, 0, self.activation, self.normalization)(x, train=train)
        x = get_activation(self.activation)(nn.Dense(1024)(x.reshape(x.shape[0], -1)))
        x = nn.Dropout(0.7, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class GoogLeNet(nn.Module):
    """`(x [B, H, W, 3], *, train) -> logits [B, num_classes]`."""

    num_classes: int = 1000
    activation: str = "relu"
    normalization: str = "batch"
    dropout_rate: float = 0.2  # torchvision's; the paper used 0.4
    aux_logits: bool = False
    paper_5x5: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        act, norm = self.activation, self.normalization
        x = ConvBlock(64, 7, 2, 3, act, norm)(x, train=train)
        x = max_pool_ceil(x, 3, 2)
        x = ConvBlock(64, 1, 1, 0, act, norm)(x, train=train)
        x = ConvBlock(192, 3, 1, 1, act, norm)(x, train=train)
        x = max_pool_ceil(x, 3, 2)  # [B, 28, 28, 192] at 224x224
        wide = 5 if self.paper_5x5 else 3
        for filters in INCEPTION_3:
            x = Inception(filters, act, norm, wide)(x, train=train)
        x = max_pool_ceil(x, 3, 2)  # [B, 14, 14, 480]
        for index, filters in enumerate(INCEPTION_4):
            x = Inception(filters, act, norm, wide)(x, train=train)
            if self.aux_logits and index in (0, 3):
                aux = AuxClassifier(self.num_classes, act, norm)(x, train=train)
                if train:
                    self.sow("intermediates", "aux_logits", aux)
        x = max_pool_ceil(x, 2, 2)  # [B, 7, 7, 832]
        for filters in INCEPTION_5:
            x = Inception(filters, act, norm, wide)(x, train=train)
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
