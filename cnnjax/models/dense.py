"""Dense baselines: the course's fully connected nets that convolutions are measured against.

    input [H, W, C] -> flatten -> (dense -> normalization -> activation -> dropout) per hidden
      layer -> dense num_classes

- `mlp`: one hidden layer of 800 units, the course's 784-800-10 net for MNIST (636,010
  parameters at 28x28x1 and 10 classes).
- `logistic`: no hidden layer, softmax regression (flatten -> dense; 7,850 parameters at
  28x28x1 and 10 classes; the softmax lives in the loss). It is the same family with
  `hidden_sizes=()`: activation, normalization and dropout act after hidden layers, so it has
  none of them, yet takes them as every family does (a run's config always passes them).

Any [B, H, W, C] (or [B, L, C]) input works: it is flattened.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnnjax.models.layers import LayerOptions, Normalization, get_activation


class MLP(nn.Module):
    """A multilayer perceptron; `__call__(x [B, ...], *, train) -> logits [B, num_classes]`."""

    num_classes: int = 10
    hidden_sizes: tuple[int, ...] = (800,)
    activation: str = "relu"
    normalization: str = "none"
    dropout_rate: float = 0.0
    layer_options: LayerOptions = LayerOptions()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = x.reshape(x.shape[0], -1)  # [B, H * W * C]
        # A normalization with its own shift makes the dense bias redundant (as in ConvBlock);
        # instance norm has none on [B, F] features (it is the identity there).
        use_bias = self.normalization in ("none", "instance")
        for features in self.hidden_sizes:
            x = nn.Dense(features, use_bias=use_bias)(x)  # [B, features]
            x = Normalization(self.normalization, layer_options=self.layer_options)(x, train=train)
            x = get_activation(self.activation)(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)  # [B, num_classes]
