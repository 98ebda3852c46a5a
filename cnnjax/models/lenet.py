"""LeNet-5 (LeCun et al. 1998) as taught in the course, with modern switches.

    input 32x32x1 -> conv 5x5, 6 -> pool 2x2 -> conv 5x5, 16 -> pool 2x2
      -> dense 120 -> dense 84 -> dense num_classes

61,706 parameters for 10 classes. 28x28 inputs (MNIST, Fashion-MNIST) are zero-padded to 32x32,
as LeCun et al. did, so that the 16x5x5 feature map before the first dense layer is unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models.layers import ConvBlock, Normalization, get_activation, pool


class LeNet5(nn.Module):
    """LeNet-5 classifier; `__call__(x [B, H, W, C], *, train) -> logits [B, num_classes]`."""

    num_classes: int = 10
    activation: str = "relu"
    pooling: str = "max"
    normalization: str = "none"
    dropout_rate: float = 0.0
    input_size: int = 32  # inputs smaller than this are zero-padded to it

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        pad_h = max(0, self.input_size - x.shape[1])
        pad_w = max(0, self.input_size - x.shape[2])
        if pad_h or pad_w:
            pads = (
                (0, 0),
                (pad_h // 2, pad_h - pad_h // 2),
                (pad_w // 2, pad_w - pad_w // 2),
                (0, 0),
            )
            x = jnp.pad(x, pads)
        act = get_activation(self.activation)
        for features in (6, 16):
            x = ConvBlock(
                features, 5, activation=self.activation, normalization=self.normalization
            )(x, train=train)  # [B, 28, 28, 6], then [B, 10, 10, 16]
            x = pool(x, self.pooling, window=2, stride=2)
        x = x.reshape(x.shape[0], -1)  # [B, 400]
        for features in (120, 84):
            x = nn.Dense(features)(x)
            x = act(Normalization(self.normalization)(x, train=train))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
