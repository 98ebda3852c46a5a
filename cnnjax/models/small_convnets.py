"""The course's small CIFAR-10 ConvNet (the ConvNetJS demo network).

    conv 5x5, 16 -> pool 2x2 -> conv 5x5, 20 -> pool 2x2 -> conv 5x5, 20 -> pool 2x2 -> fc 10

Convolutions keep the spatial size (padding 2), so 32x32 inputs end as 4x4x20 features;
22,466 parameters for 10 classes. The softmax lives in the loss.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnnjax.models.layers import ConvBlock, pool


class CifarConvNet(nn.Module):
    """The small ConvNet; `__call__(x [B, 32, 32, C], *, train) -> logits [B, num_classes]`."""

    num_classes: int = 10
    activation: str = "relu"
    normalization: str = "none"
    dropout_rate: float = 0.0
    pooling: str = "max"
    widths: tuple[int, ...] = (16, 20, 20)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for features in self.widths:
            x = ConvBlock(features, 5, 1, 2, self.activation, self.normalization)(x, train=train)
            x = pool(x, self.pooling, window=2, stride=2)
        x = x.reshape(x.shape[0], -1)  # [B, 4 * 4 * 20]
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
