"""The course's small CIFAR-10 ConvNet (the ConvNetJS demo network).

    conv 5x5, 16 -> pool 2x2 -> conv 5x5, 20 -> pool 2x2 -> conv 5x5, 20 -> pool 2x2 -> fc 10

Convolutions keep the spatial size (padding 2), so 32x32 inputs end as 4x4x20 features;
22,466 parameters for 10 classes. The softmax lives in the loss.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnnjax.errors import UserError
from cnnjax.models.layers import (
    POOLINGS,
    ConvBlock,
    LayerOptions,
    Normalization,
    get_activation,
    pool,
)
from cnnjax.models.registry import register


class CifarConvNet(nn.Module):
    """The small ConvNet; `__call__(x [B, 32, 32, C], *, train) -> logits [B, num_classes]`."""

    num_classes: int = 10
    activation: str = "relu"
    normalization: str = "none"
    dropout_rate: float = 0.0
    pooling: str = "max"
    widths: tuple[int, ...] = (16, 20, 20)
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        options = self.layer_options
        for features in self.widths:
            x = ConvBlock(
                features, 5, 1, 2, self.activation, self.normalization, layer_options=options
            )(x, train=train)
            x = pool(x, self.pooling, window=2, stride=2, layer_options=options)
        x = x.reshape(x.shape[0], -1)  # [B, 4 * 4 * 20]
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def space_to_depth(x: jax.Array, block: int) -> jax.Array:
    """[B, H, W, C] -> [B, H / block, W / block, block * block * C]: each block x block tile of
    pixels becomes one position's channels (a reshape, no arithmetic)."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // block, block, width // block, block, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height // block, width // block, block * block * channels)


class FastConvNet(nn.Module):
    """A small VGG-like net for time-to-accuracy on 28x28 inputs on CPUs (Fashion-MNIST).

        28x28x1 -> space-to-depth 2 -> 14x14x4 -> stages of 3x3 convolutions (batch norm,
        ReLU), a 2x2 max pool between stages -> head -> dense num_classes

    Space-to-depth makes the first 3x3 convolution a 6x6 stride-2 one, so no layer runs at
    28x28: on XLA:CPU the cost per activation element (normalization, activation, pooling)
    rivals that of the multiply-accumulates, and full-resolution layers with few channels are
    the slowest kind. `head` is "flatten" (keep positions: Fashion-MNIST's items are centred),
    "max" or "average" (global pooling); `hidden_units` > 0 adds a dense layer before the
    classifier; dropout applies before the classifier.
    """

    num_classes: int = 10
    activation: str = "relu"
    normalization: str = "batch"
    dropout_rate: float = 0.0
    space_to_depth: int = 2  # 1 keeps the input resolution
    stages: tuple[tuple[int, ...], ...] = ((32,), (64, 64))  # conv widths per resolution
    head: str = "flatten"
    hidden_units: int = 0
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        options = self.layer_options
        if self.space_to_depth > 1:
            x = space_to_depth(x, self.space_to_depth)
        for index, widths in enumerate(self.stages):
            if index:
                x = pool(x, "max", window=2, stride=2, layer_options=options)
            for features in widths:
                x = ConvBlock(
                    features, 3, 1, 1, self.activation, self.normalization, layer_options=options
                )(x, train=train)
        if self.head == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif self.head in POOLINGS:
            x = x.max(axis=(1, 2)) if self.head == "max" else x.mean(axis=(1, 2))
        else:
            raise UserError(f"unknown head {self.head!r}: choose one of flatten, max, average")
        if self.hidden_units:
            x = nn.Dense(self.hidden_units, use_bias=self.normalization == "none")(x)
            x = Normalization(self.normalization, layer_options=options)(x, train=train)
            x = get_activation(self.activation)(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


@register("fast_convnet", family=FastConvNet, input_shape=(28, 28, 1))
def fast_convnet(**options) -> FastConvNet:
    return FastConvNet(**options)
