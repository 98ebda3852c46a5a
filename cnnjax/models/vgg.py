"""VGG (Simonyan & Zisserman 2015), configurations A, B, D, E = VGG-11, 13, 16, 19.

3x3 convolutions with padding 1, 2x2 max-pooling, then fc 4096 -> 4096 -> classes with dropout
0.5, as in torchvision (an adaptive 7x7 average pool lets smaller inputs through). VGG-16 has
138,357,544 parameters and 15.47 GMACs at 224x224. The `_bn` variants put batch norm after each
convolution and drop the convolution's bias (redundant before a shift), so they count 4,224 fewer
parameters than torchvision's vgg16_bn, which keeps it.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnnjax.errors import UserError
from cnnjax.models.layers import ConvBlock, LayerOptions, adaptive_avg_pool, get_activation, pool

# Channels per convolution, "M" for a 2x2 max-pool (Table 1 of the paper).
CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ),
}


class VGG(nn.Module):
    """VGG classifier; `__call__(x [B, H, W, 3], *, train) -> logits [B, num_classes]`."""

    depth: int = 16
    num_classes: int = 1000
    activation: str = "relu"
    normalization: str = "none"
    dropout_rate: float = 0.5
    hidden_units: int = 4096
    width_divisor: int = 1  # divides every width: 8 gives a small VGG for tests and CPU runs
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.depth not in CONFIGS:
            raise UserError(f"VGG depth {self.depth} is not one of {sorted(CONFIGS)}")
        options = self.layer_options
        for item in CONFIGS[self.depth]:
            if item == "M":
                if min(x.shape[1:3]) >= 2:
                    x = pool(x, "max", window=2, stride=2, layer_options=options)
            else:
                x = ConvBlock(
                    item // self.width_divisor,
                    3,
                    1,
                    1,
                    self.activation,
                    self.normalization,
                    layer_options=options,
                )(x, train=train)
        x = adaptive_avg_pool(x, 7, layer_options=options)
        x = x.reshape(x.shape[0], -1)  # [B, 7 * 7 * 512]
        act = get_activation(self.activation)
        for _ in range(2):
            x = act(nn.Dense(self.hidden_units // self.width_divisor)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
