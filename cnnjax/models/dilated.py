"""Dilated convolutions: the context module of Yu & Koltun 2016 ("Multi-scale context
aggregation by dilated convolutions"), as a dense per-pixel predictor.

The basic context module stacks 3x3 convolutions with dilations 1, 1, 2, 4, 8, 16, 1, so the
receptive field grows exponentially without losing resolution: 3, 5, 9, 17, 33, 65, 67 pixels,
then a 1x1 convolution. Here a 3x3 front-end maps the image to `features` channels, the module
aggregates context, and a 1x1 head gives per-pixel logits [B, H, W, num_classes].
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from cnnjax.models.layers import ConvBlock, LayerOptions

CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)


def receptive_fields(dilations: tuple[int, ...], kernel_size: int = 3) -> list[int]:
    """Receptive field (pixels) after each stacked stride-1 convolution with these dilations."""
    fields, field = [], 1
    for dilation in dilations:
        field += (kernel_size - 1) * dilation
        fields.append(field)
    return fields


class DilatedContextNet(nn.Module):
    """Front-end conv + context module + 1x1 head: `(x [B,H,W,C], *, train) -> [B,H,W,K]`."""

    num_classes: int = 11
    activation: str = "relu"
    normalization: str = "none"
    dropout_rate: float = 0.0
    features: int = 32
    dilations: tuple[int, ...] = CONTEXT_DILATIONS
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(
            ConvBlock,
            self.features,
            activation=self.activation,
            layer_options=self.layer_options,
        )
        x = conv(3, 1, "SAME", normalization=self.normalization)(x, train=train)
        for dilation in self.dilations:
            x = conv(3, 1, "SAME", normalization=self.normalization, dilation=dilation)(
                x, train=train
            )
        x = conv(1)(x, train=train)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Conv(self.num_classes, (1, 1))(x)  # per-pixel logits
