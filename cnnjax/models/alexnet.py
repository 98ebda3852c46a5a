"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) in its two common forms.

- `paper=True`: the paper's network on one device: 96-256-384-384-256 filters, conv1 11x11
  stride 4 on 227x227 inputs (the paper's "224" does not divide out; 227 does), local response
  normalization after the ReLUs of conv1 and conv2, overlapping 3x3 stride-2 max-pooling,
  dropout 0.5 on the outputs of fc6 and fc7.
- `paper=False` (default): the 64-192-384-256-256 form without LRN of the "one weird trick" paper
  and torchvision, 61,100,840 parameters at 224x224x3 and 1000 classes, 0.714 GMACs.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnnjax.models.layers import (
    ConvBlock,
    LayerOptions,
    LocalResponseNorm,
    adaptive_avg_pool,
    get_activation,
    pool,
)

# (features, kernel, stride, padding, LRN after it when LRN is on, max-pool after it)
PAPER_LAYERS = (
    (96, 11, 4, 0, True, True),
    (256, 5, 1, 2, True, True),
    (384, 3, 1, 1, False, False),
    (384, 3, 1, 1, False, False),
    (256, 3, 1, 1, False, True),
)
COMMON_LAYERS = (
    (64, 11, 4, 2, True, True),
    (192, 5, 1, 2, True, True),
    (384, 3, 1, 1, False, False),
    (256, 3, 1, 1, False, False),
    (256, 3, 1, 1, False, True),
)


class AlexNet(nn.Module):
    """AlexNet classifier; `__call__(x [B, H, W, 3], *, train) -> logits [B, num_classes]`."""

    num_classes: int = 1000
    activation: str = "relu"
    normalization: str = "none"
    dropout_rate: float = 0.5
    paper: bool = False  # the paper's 96-256-384-384-256 net with LRN (see the module docstring)
    lrn: bool | None = None  # override: LRN after conv1/conv2 (default: as `paper`)
    hidden_units: int = 4096
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        use_lrn = self.paper if self.lrn is None else self.lrn
        options = self.layer_options
        for features, kernel, stride, padding, lrn_here, pool_here in (
            PAPER_LAYERS if self.paper else COMMON_LAYERS
        ):
            x = ConvBlock(
                features,
                kernel,
                stride,
                padding,
                self.activation,
                self.normalization,
                layer_options=options,
            )(x, train=train)
            if lrn_here and use_lrn:
                x = LocalResponseNorm()(x)
            if pool_here and min(x.shape[1:3]) >= 3:
                # Overlapping pooling (section 3.4).
                x = pool(x, "max", window=3, stride=2, layer_options=options)
        # [B, 6, 6, C] at the default input size: the identity.
        x = adaptive_avg_pool(x, 6, layer_options=options)
        x = x.reshape(x.shape[0], -1)
        act = get_activation(self.activation)
        for _ in range(2):
            if not self.paper:  # torchvision places dropout before fc6 and fc7
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = act(nn.Dense(self.hidden_units)(x))
            if self.paper:  # the paper drops the outputs of fc6 and fc7
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
